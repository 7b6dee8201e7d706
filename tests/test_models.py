"""Models of HySDS documents: real examples validate; each error names the file, the field and the problem."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.corpus import HYSDS_SAMPLES, corpus_file, corpus_file_as_deployed

from sandbox_runner.errors import ConfigError, InputError, JobFormatError
from sandbox_runner.models import (
    DatasetsConfig,
    HysdsIO,
    Job,
    JobSpec,
    WorkerConfig,
    detect_kind,
    iter_mappings,
    load_datasets_config,
    load_hysds_io,
    load_job,
    load_job_spec,
    load_worker_config,
    resolve_command,
    validate_file,
    worker_config_from_command,
)

KIND_BY_PREFIX = {
    "job-spec.json.": "job-spec",
    "hysds-io.json.": "hysds-io",
    "job.json.": "job",
    "job_worker.json.": "worker-config",
}

JOB: dict[str, Any] = {
    "job_id": "hello_echo-20240101T000000.000000Z",
    "type": "hello_echo",
    "task_id": "00000000-0000-0000-0000-000000000001",
    "priority": 0,
    "tag": "local-test",
    "params": {
        "_command": "/bin/echo 'hello world' again",
        "_disk_usage": "10MB",
        "id": "abc",
        "ids": ["a", "b", 3],
        "count": 5,
        "job_specification": {"command": "/bin/echo", "params": [{"name": "x", "destination": "positional"}]},
    },
    "localize_urls": [{"url": "https://example.com/a.txt"}],
    "job_info": {
        "payload_hash": "d41d8cd98f00b204e9800998ecf8427e",
        "dedup": False,
        "job_payload": {
            "job_type": "job:hello_echo",
            "payload_task_id": "11111111-1111-1111-1111-111111111111",
        },
        "some_extra": {"kept": True},
    },
    "an_unknown_top_level_key": [1, 2, 3],
}

WORKER_CFG: dict[str, Any] = {
    "root_work_dir": "/data/work",
    "configs": [
        {
            "type": "retry_job",
            "command": {
                "path": "/opt/retry.sh",
                "options": ["-v", 2],
                "arguments": ["$id", "x$id", "$ids", "$count"],
            },
            "disk_usage": "1.5GB",
        },
        {"type": "other", "command": {"path": "/opt/other.sh"}},
    ],
}


def job(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(JOB)
    data.update(changes)
    return data


def error_of(loader: Any, data: Any, source: str = "the-file.json") -> str:
    with pytest.raises(InputError) as info:
        loader(data, source)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{source}: ")
    return message


# --- real HySDS files, read in place from the reference corpus ------------------------------------------------
@pytest.mark.parametrize("saved_as", HYSDS_SAMPLES)
def test_every_example_validates(saved_as: str, tmp_path: Path) -> None:
    path = corpus_file_as_deployed(saved_as, tmp_path)  # HySDS tells the kind by the deployed name
    expected = next(kind for prefix, kind in KIND_BY_PREFIX.items() if path.name.startswith(prefix))
    assert validate_file(str(path)) == (expected, None)
    assert detect_kind(str(path), json.loads(path.read_bytes())) == expected
    # content alone tells the kind too
    assert detect_kind("renamed", json.loads(path.read_bytes())) == expected


def test_example_details() -> None:
    sciflo = load_job_spec(corpus_file("nasa__opera-sds-pcm__job-spec.json.SCIFLO_L3_DSWx_HLS").read_bytes())
    assert (
        sciflo.dependency_images[0].container_image_url == "$CODE_BUCKET_URL/opera_pge-dswx_hls-1.0.3.tar.gz"
    )
    assert sciflo.disk_usage_bytes == 25 * 1024**3
    assert sciflo.recommended_queues == ["opera-job_worker-sciflo-l3_dswx_hls"]
    assert sciflo.disable_pre_builtins and sciflo.post[-1] == "hysds.triage.triage"
    assert sciflo.params_for("positional") == ["module_path", "wf_dir", "wf_name"]
    valid = load_job_spec(corpus_file("hysds__hysds_commons__job-spec.json.valid").read_text())
    assert valid.dependency_images[0].container_image_url is None
    assert iter_mappings(valid.imported_worker_files) == [
        ("$HOME/.netrc", "/home/ops/.netrc", "ro"),
        ("$HOME/.aws", "/home/ops/.aws", "ro"),
        ("$HOME/project/conf/settings.conf", "/home/ops/project/conf/settings.conf", "ro"),
    ]
    retry = load_job_spec(corpus_file("hysds__lightweight-jobs__job-spec.json.lw-mozart-retry").read_bytes())
    assert retry.required_queues == ["system-jobs-queue"]
    io = load_hysds_io(corpus_file("hysds__lightweight-jobs__hysds-io.json.lw-mozart-retry").read_bytes())
    assert io.component == "figaro" and io.enable_dedup is False
    assert io.param("retry_job_id") is not None and io.params[0].jpath == "_source.job.job_info.id"
    assert io.params[2].enumerables == ["-1", "0", "+1"] and io.params[3].optional is True
    echo = load_hysds_io(corpus_file("hysds__lightweight-jobs__hysds-io.json.lightweight-echo").read_bytes())
    assert echo.params[0].value == "Hello world!" and echo.submission_type == "individual"


# --- job JSON -----------------------------------------------------------------------------------------------
def test_job_fields_and_raw() -> None:
    data = job()
    loaded = load_job(data, "job.json")
    assert isinstance(loaded, Job)
    assert (loaded.job_id, loaded.type, loaded.task_id, loaded.priority) == (
        JOB["job_id"],
        "hello_echo",
        JOB["task_id"],
        0,
    )
    assert loaded.params["id"] == "abc" and loaded.tag == "local-test"
    assert loaded.name is None and loaded.username is None and loaded.context is None
    assert loaded.job_info.payload_hash == JOB["job_info"]["payload_hash"]
    assert loaded.job_info.job_payload.payload_task_id == "11111111-1111-1111-1111-111111111111"
    assert (
        loaded.localize_urls[0].url == "https://example.com/a.txt" and loaded.localize_urls[0].cache is True
    )
    assert loaded.container_image_name is None and loaded.container_image_url is None
    assert loaded.container_mappings == {} and loaded.runtime_options == {}
    assert loaded.publish_overwrite_ok is False
    assert isinstance(loaded.job_specification, JobSpec)
    assert loaded.job_specification.command == "/bin/echo"
    assert loaded.source == "job.json"
    # raw is the whole original document (extras included), as a private copy
    assert loaded.raw == data and loaded.raw is not data
    loaded.raw["job_info"]["job_dir"] = "/x"
    assert "job_dir" not in data["job_info"]
    # the hidden fields never leak into or from documents
    assert load_job(json.dumps(job(__raw__=1, __job_specification__=2))).raw["__raw__"] == 1


def test_job_from_bytes_and_str() -> None:
    text = json.dumps(job())
    assert load_job(text).job_id == load_job(text.encode()).job_id == JOB["job_id"]


def test_job_without_job_specification() -> None:
    data = job()
    del data["params"]["job_specification"]
    assert load_job(data).job_specification is None


def test_job_missing_payload_hash() -> None:
    data = job()
    del data["job_info"]["payload_hash"]
    assert error_of(load_job, data, "job.json") == "job.json: job_info.payload_hash: missing required field"


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"job_id": 5}, "job_id", "expected str, got int"),
        ({"job_id": "../evil"}, "job_id", "without '/'"),
        ({"params": []}, "params", "expected object, got array"),
        (
            {"job_info": {"payload_hash": "x", "dedup": False}},
            "job_info.job_payload",
            "missing required field",
        ),
        ({"localize_urls": [{"local_path": "x"}]}, "localize_urls[0].url", "missing required field"),
        ({"container_mappings": {"/a": ["/b", "rx"]}}, 'container_mappings["/a"]', "'ro'|'rw'"),
        ({"publish_overwrite_ok": "yes"}, "publish_overwrite_ok", "expected bool"),
    ],
)
def test_job_errors_name_the_field(change: dict[str, Any], field: str, problem: str) -> None:
    message = error_of(load_job, job(**change), "job.json")
    assert message.startswith(f"job.json: {field}: ")
    assert problem in message


def test_job_bad_embedded_job_spec_and_disk_usage() -> None:
    data = job()
    data["params"]["job_specification"]["params"][0]["destination"] = "nowhere"
    message = error_of(load_job, data, "job.json")
    assert message.startswith(
        "job.json: params.job_specification.params[0].destination: invalid value 'nowhere'"
    )
    data = job()
    data["params"]["_disk_usage"] = "1.5XB"
    assert "job.json: params._disk_usage: invalid _disk_usage '1.5XB'" in error_of(load_job, data, "job.json")


# --- job-spec / hysds-io ------------------------------------------------------------------------------------
SPEC: dict[str, Any] = {
    "command": "/run.sh",
    "params": [
        {"name": "a", "destination": "positional"},
        {"name": "b", "destination": "localize"},
        {"name": "c", "destination": "context"},
    ],
    "disk_usage": "100KB",
    "soft_time_limit": 60,
    "time_limit": 120,
}


def test_job_spec_destination_nowhere() -> None:
    spec = copy.deepcopy(SPEC)
    spec["params"][2]["destination"] = "nowhere"
    message = error_of(load_job_spec, spec, "job-spec.json.x")
    assert message == (
        "job-spec.json.x: params[2].destination: invalid value 'nowhere' "
        "(expected one of: context, localize, positional)"
    )


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"disk_usage": "1.5XB"}, "disk_usage", "invalid disk_usage '1.5XB'"),
        ({"command": ""}, "command", "must not be empty"),
        ({"params": None}, "params", "expected array, got null"),
        ({"time_limit": -5}, "time_limit", "positive"),
        ({"time_limit": -5.0}, "time_limit", "positive"),
        ({"soft_time_limit": 1020.5}, "soft_time_limit", "must be a whole number of seconds, got 1020.5"),
        ({"time_limit": True}, "time_limit", "got bool"),
        ({"soft_time_limit": float("inf")}, "soft_time_limit", "whole number"),
        ({"imported_worker_files": {"$HOME/x": 3}}, 'imported_worker_files["$HOME/x"]', "got 3"),
        (
            {"dependency_images": [{"container_image_url": None}]},
            "dependency_images[0].container_image_name",
            "missing",
        ),
    ],
)
def test_job_spec_errors(change: dict[str, Any], field: str, problem: str) -> None:
    spec = {**copy.deepcopy(SPEC), **change}
    message = error_of(load_job_spec, spec, "job-spec.json.x")
    assert message.startswith(f"job-spec.json.x: {field}: ") and problem in message


def test_job_spec_integral_float_limits_are_seconds() -> None:
    # Real job-specs write "time_limit": 1020.0; HySDS accepts it, so do we (kept as an int).
    spec = load_job_spec({**copy.deepcopy(SPEC), "soft_time_limit": 1020.0, "time_limit": 1200.0})
    assert (spec.soft_time_limit, spec.time_limit) == (1020, 1200)
    assert type(spec.soft_time_limit) is int and type(spec.time_limit) is int


def test_job_spec_missing_command() -> None:
    spec = copy.deepcopy(SPEC)
    del spec["command"]
    assert error_of(load_job_spec, spec, "s") == "s: command: missing required field"


@pytest.mark.parametrize(
    ("param", "field", "problem"),
    [
        (
            {"name": "a", "from": "submitter", "type": "enum"},
            "enumerables",
            "required (a non-empty list) when type is 'enum'",
        ),
        ({"name": "a", "from": "submitter", "type": "enum", "enumerables": []}, "enumerables", "required"),
        ({"name": "a", "from": "value"}, "value", "required when from is 'value'"),
        ({"name": "a", "from": "elsewhere"}, "from", "invalid value 'elsewhere'"),
        ({"name": "a", "from": "dataset_jpath: x"}, "from", "invalid value"),
        ({"name": "a", "from": "submitter", "type": "jobspec_version"}, "version_regex", "required"),
        ({"name": "a", "from": "submitter", "lambda": "x + 1"}, "lambda", "expected 'lambda"),
        ({"name": "a", "from": "submitter", "type": "colour"}, "type", "invalid value 'colour'"),
        ({"from": "submitter"}, "name", "missing required field"),
    ],
)
def test_hysds_io_errors(param: dict[str, Any], field: str, problem: str) -> None:
    doc = {"params": [{"name": "ok", "from": "value", "value": None}, param]}
    message = error_of(load_hysds_io, doc, "hysds-io.json.x")
    assert message.startswith(f"hysds-io.json.x: params[1].{field}: ") and problem in message


def test_hysds_io_value_may_be_any_json() -> None:
    io = load_hysds_io(
        {
            "params": [
                {"name": "n", "from": "value", "value": {"a": [1]}},
                {"name": "p", "from": "passthrough"},
            ]
        }
    )
    assert (
        isinstance(io, HysdsIO)
        and io.params[0].value == {"a": [1]}
        and io.params[1].source_kind == "passthrough"
    )


def test_hysds_io_empty_dataset_jpath_is_the_whole_hit() -> None:
    # HySDS passes the whole hit for "dataset_jpath:" with no path; real OPERA/ARIA hysds-io files use it.
    io = load_hysds_io({"params": [{"name": "hit", "from": "dataset_jpath:"}]})
    assert io.params[0].source_kind == "dataset_jpath" and io.params[0].jpath == ""


# --- worker config ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"root_work_dir": "/x"}, "wc.json: configs: missing required field"),
        ({"configs": []}, "wc.json: configs: must list at least one job type"),
        ({"configs": [{"type": "a"}]}, "wc.json: configs[0].command: missing required field"),
        (
            {"configs": [{"type": "a", "command": {"path": "/x", "env": [{"key": "A"}]}}]},
            "wc.json: configs[0].command.env[0].value: missing required field",
        ),
        (
            {"configs": [{"type": "a", "command": {"path": "/x"}, "disk_usage": "lots"}]},
            "wc.json: configs[0].disk_usage: invalid disk_usage 'lots': "
            "expected a number and a unit such as 100KB, 1.5GB or 2 TB",
        ),
        (
            {"configs": [{"type": "a", "command": {"path": "/x"}}, {"type": "a", "command": {"path": "/y"}}]},
            "wc.json: configs[1].type: duplicate job type 'a' (also configs[0])",
        ),
    ],
)
def test_worker_config_errors(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_worker_config(doc, "wc.json")
    assert str(info.value) == expected


def test_worker_config_for_type() -> None:
    cfg = load_worker_config(json.dumps(WORKER_CFG), "wc.json")
    assert isinstance(cfg, WorkerConfig) and cfg.root_work_dir == "/data/work"
    assert cfg.for_type("retry_job").disk_usage_bytes == 3 * 1024**3 // 2
    with pytest.raises(ConfigError) as info:
        cfg.for_type("nope")
    assert (
        str(info.value) == "wc.json: no entry for job type 'nope' in worker config (known: retry_job, other)"
    )


def test_resolve_command_substitutes_and_splices() -> None:
    cfg = load_worker_config(WORKER_CFG).for_type("retry_job")
    argv = resolve_command(cfg, load_job(job()))
    assert argv == ["/opt/retry.sh", "-v", "2", "abc", "x$id", "a", "b", "3", "5"]


def test_resolve_command_missing_param() -> None:
    data = job()
    del data["params"]["id"]
    with pytest.raises(JobFormatError) as info:
        resolve_command(load_worker_config(WORKER_CFG).for_type("retry_job"), load_job(data, "job.json"))
    assert str(info.value).startswith("job.json: params.id: missing")
    assert "'$id'" in str(info.value)


def test_worker_config_from_command() -> None:
    data = job()
    data["params"]["job_specification"]["dependency_images"] = [{"container_image_name": "dep:1"}]
    loaded = load_job(data, "job.json")
    cfg = worker_config_from_command(loaded, root_work_dir="/w")
    entry = cfg.for_type("hello_echo")
    assert (entry.command.path, entry.command.arguments) == ("/bin/echo", ["hello world", "again"])
    assert entry.command.options == [] and entry.command.env == [] and entry.disk_usage == "10MB"
    assert entry.dependency_images[0].container_image_name == "dep:1" and cfg.root_work_dir == "/w"
    assert resolve_command(entry, loaded) == ["/bin/echo", "hello world", "again"]


@pytest.mark.parametrize(("value", "held"), [(100, "100"), (1.5, "1.5"), ("10MB", "10MB")])
def test_a_numeric_disk_usage_is_bytes_not_an_error_about_the_config(value: object, held: str) -> None:
    """The job model takes a number of bytes for params._disk_usage; the on-the-fly config used to refuse it,
    naming configs[0].disk_usage, a field the job does not have."""
    data = job()
    data["params"]["_disk_usage"] = value
    assert worker_config_from_command(load_job(data, "job.json")).for_type("hello_echo").disk_usage == held


def test_a_job_specification_string_is_a_wrong_type_not_json_text() -> None:
    data = job()
    data["params"]["job_specification"] = "x"
    with pytest.raises(JobFormatError, match=r"^job.json: params.job_specification: expected a JSON object, got"):
        load_job(data, "job.json")


@pytest.mark.parametrize(
    ("command", "problem"), [(None, "missing"), ("echo 'unbalanced", "cannot split"), ("  ", "empty")]
)
def test_worker_config_from_bad_command(command: str | None, problem: str) -> None:
    data = job()
    if command is None:
        del data["params"]["_command"]
    else:
        data["params"]["_command"] = command
    with pytest.raises(JobFormatError) as info:
        worker_config_from_command(load_job(data, "job.json"))
    assert str(info.value).startswith("job.json: params._command: ") and problem in str(info.value)


# --- datasets.json ------------------------------------------------------------------------------------------
DATASETS: dict[str, Any] = {
    "datasets": [
        {
            "ipath": "hysds::data/area_of_interest",
            "version": "v0.1",
            "level": "l0",
            "type": "area_of_interest",
            "match_pattern": "/(?P<id>AOI_.+)$",
            "alt_match_pattern": None,
            "extractor": None,
            "publish": {"s3-profile-name": "default", "location": "s3://b/{id}", "urls": ["https://b/{id}"]},
            "browse": {"location": "s3://b/browse/{id}", "urls": []},
        }
    ]
}


def test_datasets_config() -> None:
    cfg = load_datasets_config(DATASETS, "datasets.json")
    assert isinstance(cfg, DatasetsConfig)
    entry = cfg.recognize("/jobs/x/AOI_1")
    assert entry is not None and entry.dataset == "area_of_interest"
    assert entry.publish is not None and entry.publish.s3_profile_name == "default"
    assert cfg.recognize("/jobs/x/other") is None


def test_datasets_config_errors() -> None:
    bad = copy.deepcopy(DATASETS)
    bad["datasets"][0]["match_pattern"] = "(?P<id"
    message = error_of(load_datasets_config, bad, "datasets.json")
    assert message.startswith("datasets.json: datasets[0].match_pattern: invalid regular expression")
    bad = copy.deepcopy(DATASETS)
    del bad["datasets"][0]["publish"]["location"]
    assert (
        error_of(load_datasets_config, bad, "d") == "d: datasets[0].publish.location: missing required field"
    )
    with pytest.raises(ConfigError):
        load_datasets_config(b"[]", "d")


# --- JSON syntax, top level ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'{\n  "job_id": "x",\n  "type": oops\n}', "not valid JSON: invalid character (line 3 column 11)"),
        (b'{"a": 1,\n"b": [1, 2\n', "not valid JSON: unexpected end of document (line 2 column 11)"),
        (b"", "not valid JSON: the document is empty"),
        (b'{"a": 1} trailing', "not valid JSON: trailing characters (line 1 column 10)"),
    ],
)
def test_malformed_json(text: bytes, expected: str) -> None:
    assert error_of(load_job, text, "job.json") == f"job.json: {expected}"


@pytest.mark.parametrize(
    "loader", [load_job, load_job_spec, load_hysds_io, load_worker_config, load_datasets_config]
)
@pytest.mark.parametrize(
    ("doc", "got"), [(b"[1, 2]", "array"), (b'"text"', "string"), (b"3", "number"), (b"null", "null")]
)
def test_non_object_top_level(loader: Any, doc: bytes, got: str) -> None:
    assert error_of(loader, doc, "f") == f"f: expected a JSON object, got {got}"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_keys = st.sampled_from(
    ["job_id", "type", "params", "job_info", "command", "configs", "datasets", "from", "name"]
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_keys | st.text(max_size=5), _json, max_size=6))
def test_loaders_only_raise_input_errors(doc: dict[str, Any]) -> None:
    for loader in (load_job, load_job_spec, load_hysds_io, load_worker_config, load_datasets_config):
        try:
            loader(doc, "f")
        except InputError as exc:
            assert "\n" not in str(exc)


# --- detection and validate_file ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("job-spec.json.foo", "job-spec"),
        ("hysds-io.json.foo", "hysds-io"),
        ("/a/b/_job.json", "job"),
        ("job.json.echo", "job"),
        ("my_job.json", "job"),
        ("worker-config.json.retry_job", "worker-config"),
        ("job_worker.json.retry_job", "worker-config"),
        ("my-worker.json", "worker-config"),
        ("datasets.json", "datasets"),
    ],
)
def test_detect_by_name(name: str, kind: str) -> None:
    assert detect_kind(name, {}) == kind


@pytest.mark.parametrize(
    ("doc", "kind"),
    [
        ({"job_id": "x"}, "job"),
        ({"job_info": {}}, "job"),
        ({"configs": []}, "worker-config"),
        ({"datasets": []}, "datasets"),
        ({"command": "x", "params": []}, "job-spec"),
        ({"params": [{"name": "a", "from": "submitter"}]}, "hysds-io"),
    ],
)
def test_detect_by_content(doc: dict[str, Any], kind: str) -> None:
    assert detect_kind("/tmp/input.json", doc) == kind


@pytest.mark.parametrize("doc", [{}, {"params": []}, [1], {"something": "else"}])
def test_detect_unknown(doc: Any) -> None:
    with pytest.raises(JobFormatError, match="cannot tell what kind of file this is"):
        detect_kind("/tmp/input.json", doc)


def test_validate_file_never_raises(tmp_path: Path) -> None:
    assert validate_file(str(tmp_path / "missing.json")) == (
        "unknown",
        f"{tmp_path / 'missing.json'}: cannot read: No such file or directory",
    )
    kind, error = validate_file(str(tmp_path))
    assert kind == "unknown" and error is not None and "cannot read" in error
    bad = tmp_path / "job-spec.json.bad"
    bad.write_text('{"command": "x",\n "params": [}')
    kind, error = validate_file(str(bad))
    assert kind == "job-spec" and error is not None and "(line 2 column 13)" in error
    odd = tmp_path / "odd.json"
    odd.write_text('{"hello": 1}')
    kind, error = validate_file(str(odd))
    assert kind == "unknown" and error is not None and "cannot tell what kind of file this is" in error
    wc = tmp_path / "worker.json"
    wc.write_text('{"configs": []}')
    assert validate_file(str(wc)) == ("worker-config", f"{wc}: configs: must list at least one job type")
    good = tmp_path / "something.json"
    good.write_bytes(msgspec.json.encode(job()))
    assert validate_file(str(good)) == ("job", None)
