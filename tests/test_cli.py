"""The command line as a user meets it: ``sandbox-runner validate`` over real HySDS files and broken ones."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.corpus import HYSDS_SAMPLES, corpus_file, corpus_file_as_deployed
from support.jobs import make_job, write_job
from support.machine import VENV_BIN, require

#: hysds_commons' schema example: valid, with a placeholder pre step validate warns about
COMMONS_SPEC = "hysds__hysds_commons__job-spec.json.valid"


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    require((VENV_BIN / "sandbox-runner").exists(), ".venv with sandbox-runner missing (run `make setup`)")
    return subprocess.run([str(VENV_BIN / "sandbox-runner"), "validate", *map(str, paths)], capture_output=True,
                          text=True, check=False, timeout=60)


def test_every_real_hysds_file_is_valid_and_its_kind_named(tmp_path: Path) -> None:
    files = [corpus_file_as_deployed(saved, tmp_path) for saved in HYSDS_SAMPLES]
    proc = validate(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(files)
    kinds = {"job-spec.json.": "job-spec", "hysds-io.json.": "hysds-io", "job.json.": "job",
             "job_worker.json.": "worker-config"}
    for path, line in zip(files, lines, strict=True):
        kind = next(k for prefix, k in kinds.items() if path.name.startswith(prefix))
        if path.name in ("job-spec.json.valid", "job-spec.json.gpus"):  # hysds_commons': a placeholder pre step
            assert line.startswith(f"{path}: {kind}: valid (warning: pre[0]: unknown step "
                                   "'some.python.preprocessor.function'"), line
        else:
            assert line == f"{path}: {kind}: valid"


def test_an_invalid_file_names_the_field_in_one_line_and_exits_2(tmp_path: Path) -> None:
    spec = json.loads(corpus_file(COMMONS_SPEC).read_text())
    spec["params"][0]["destination"] = "nowhere"
    bad = tmp_path / "job-spec.json.broken"
    bad.write_text(json.dumps(spec))
    garbage = tmp_path / "job.json.garbage"
    garbage.write_text('{"job_id": ')
    proc = validate(write_job(tmp_path, make_job("/bin/echo hello"), "job.json.echo"), bad, garbage)
    assert proc.returncode == 2
    out = proc.stdout.splitlines()
    assert out[0].endswith("job: valid")
    assert out[1].startswith(f"{bad}: job-spec: invalid: ") and "params[0].destination" in out[1]
    assert out[2].startswith(f"{garbage}: ") and "not valid JSON" in out[2]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_an_unknown_pre_or_post_step_is_reported_by_validate(tmp_path: Path) -> None:
    # valid HySDS (any importable name), so a warning on the "valid" line, but the user learns before queueing
    spec = json.loads(corpus_file(COMMONS_SPEC).read_text())
    spec["pre"] = ["hysds.localize.localize_urls", "hysds.utils.no_such_step"]
    typo_spec = tmp_path / "job-spec.json.typo"
    typo_spec.write_text(json.dumps(spec))
    job = make_job("/bin/echo hello")
    job["params"]["job_specification"] = {**spec, "pre": [], "post": ["publish_dataset"]}
    typo_job = tmp_path / "job.json.typo"
    typo_job.write_text(json.dumps(job))
    spec["pre"], spec["post"] = ["hysds.localize.localize_urls"], ["hysds.triage.triage"]  # HySDS names are fine
    good = tmp_path / "job-spec.json.hysds-names"
    good.write_text(json.dumps(spec))
    proc = validate(typo_spec, typo_job, good)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith(f"{typo_spec}: job-spec: valid (warning: pre[1]: unknown step "
                             "'hysds.utils.no_such_step' (known: "), out[0]
    assert out[0].endswith("; run-job on this worker fails such a job)"), out[0]
    assert out[1].startswith(f"{typo_job}: job: valid (warning: params.job_specification.post[0]: "
                             "unknown step 'publish_dataset'"), out[1]
    assert out[2] == f"{good}: job-spec: valid"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_every_command_of_the_parser_has_one_entry_in_the_dispatch_table() -> None:
    import argparse
    import importlib

    from sandbox_runner.cli.main import _SUBCOMMAND, COMMANDS, _parser

    def choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return dict(action.choices)

    parsed: set[tuple[str, str | None]] = set()
    for command, parser in choices(_parser()).items():
        if command in _SUBCOMMAND:
            parsed |= {(command, sub) for sub in choices(parser)}
        else:
            parsed.add((command, None))
    assert parsed - set(COMMANDS) == set()  # every command and sub-command reaches a body
    assert set(COMMANDS) - parsed == {("events", None)}  # the one extra: `events` alone says show's usage
    for target in COMMANDS.values():  # each names a function that exists (imported here, not by main)
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_events_without_a_subcommand_says_the_usage_and_exits_2() -> None:
    require((VENV_BIN / "sandbox-runner").exists(), ".venv with sandbox-runner missing (run `make setup`)")
    proc = subprocess.run([str(VENV_BIN / "sandbox-runner"), "events"], capture_output=True, text=True,
                          check=False, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: sandbox-runner events show"), proc.stderr


def test_run_job_prints_a_damaged_job_id_written_out(tmp_path: Path) -> None:
    """A job id holding a NUL is refused, and the summary line shows it escaped, not as a raw byte."""
    job = tmp_path / "nul.json"
    job.write_text('{"job_id": "a\\u0000b", "type": "x", "task_id": "t", "params": {}, "job_info": {}}')
    proc = subprocess.run([str(VENV_BIN / "sandbox-runner"), "run-job", str(job), "--backend", "fake",
                           "--work-root", str(tmp_path / "w")], capture_output=True, timeout=60, check=False)
    assert proc.returncode == 1
    first = proc.stdout.splitlines()[0]
    assert first == rb"job-failed: job a\x00b" and b"\x00" not in proc.stdout, proc.stdout
