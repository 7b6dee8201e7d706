"""publish_datasets: recognition, file:// / WebDAV / S3 (moto server) locations, no-clobber, atomicity."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from support.data_fixtures import events
from support.servers import FileServer

from sandbox_runner.data.localize.steps import mark_localized_datasets
from sandbox_runner.data.publish import destinations
from sandbox_runner.data.publish.ingest import find_datasets
from sandbox_runner.data.publish.steps import publish_datasets
from sandbox_runner.errors import NoClobberError, PublishError
from sandbox_runner.job.steps.base import JobContext


def _datasets(location: str, **entry: Any) -> dict[str, Any]:
    return {"datasets": [{
        "ipath": "hysds::data/{type}", "level": "l2", "type": "hello_{year}",
        "match_pattern": r"/(?P<id>HELLO_(?P<year>\d{4})\d{4}_(?P<tile>\w+))$",
        "publish": {"location": location, "urls": [location.replace("file://", "https://example.org")]},
        **entry,
    }]}


def _product(ctx: JobContext, prod_id: str = "HELLO_20240101_T11", *, files: int = 3, size: int = 1000,
             met: dict[str, Any] | None = None, version: Any = "v1.0", where: str = "") -> Path:
    d = ctx.job_dir / where / prod_id
    d.mkdir(parents=True)
    ds: dict[str, Any] = {"label": "hello"} if version is None else {"version": version, "label": "hello"}
    (d / f"{prod_id}.dataset.json").write_text(json.dumps(ds))
    if met is not None:
        (d / f"{prod_id}.met.json").write_text(json.dumps(met))
    for i in range(files):
        (d / f"part{i}.dat").write_bytes(os.urandom(size))
    ctx.job_info["status"] = 0
    return d


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_file_publish_whole_with_docs_metrics_and_event(make_ctx, tmp_path: Path) -> None:
    pub = tmp_path / "pub"
    ctx = make_ctx(datasets=_datasets(f"file://{pub}/{{year}}/{{id}}-{{met[orbit]}}"))
    prod = _product(ctx, met={"orbit": 42})
    publish_datasets(ctx)
    out = pub / "2024" / "HELLO_20240101_T11-42"
    published = _tree(out)
    for name, data in _tree(prod).items():
        assert published[name] == data
    assert "_publish.context.json" in published and "HELLO_20240101_T11.context.json" in published
    assert not [p for p in pub.rglob(".*staging*")]
    (doc,) = json.loads((ctx.job_dir / "_datasets.json").read_text())
    assert doc["id"] == "HELLO_20240101_T11" and doc["dataset_type"] == "hello_2024" and doc["version"] == "v1.0"
    assert doc["ipath"] == "hysds::data/hello_2024" and doc["dataset"] == "hello_2024"
    assert doc["metadata"] == {"orbit": 42}
    assert doc["urls"] == [f"https://example.org{pub}/2024/HELLO_20240101_T11-42"]
    (metric,) = ctx.job_info["metrics"]["products_staged"]
    assert metric["disk_usage"] >= 3000 and metric["id"] == doc["id"] and metric["dataset_level"] == "l2"
    (ev,) = events(ctx, "dataset-published")
    assert ev["event"]["id"] == doc["id"] and ev["status"] == "published"


def test_localized_inputs_and_failed_jobs_are_not_published(make_ctx, tmp_path: Path) -> None:
    pub = tmp_path / "pub"
    ctx = make_ctx(datasets=_datasets(f"file://{pub}/{{id}}"))
    _product(ctx, "HELLO_20230101_IN", where="inputs")
    mark_localized_datasets(ctx)
    _product(ctx, "HELLO_20240101_OUT")
    assert [p.name for p in find_datasets(ctx.job_dir)] == ["HELLO_20240101_OUT"]
    ctx.job_info["status"] = 2
    publish_datasets(ctx)
    assert not pub.exists() and not (ctx.job_dir / "_datasets.json").exists()
    ctx.job_info["status"] = 0
    publish_datasets(ctx)
    assert sorted(p.name for p in pub.iterdir()) == ["HELLO_20240101_OUT"]


def test_second_publish_is_refused_with_its_reason(make_ctx, tmp_path: Path) -> None:
    pub = tmp_path / "pub"
    first = make_ctx(datasets=_datasets(f"file://{pub}/{{id}}"))
    _product(first)
    publish_datasets(first)
    before = _tree(pub)
    other = make_ctx(datasets=_datasets(f"file://{pub}/{{id}}"))
    _product(other)
    with pytest.raises(NoClobberError, match=r"HELLO_20240101_T11 already exists .* task-0 \(payload payload-0\)"):
        publish_datasets(other)
    assert _tree(pub) == before
    (ev,) = events(other, "dataset-exists")
    assert ev["status"] == "refused" and "set _force_ingest" in ev["event"]["reason"]
    assert not (other.job_dir / "_datasets.json").exists()


def test_retry_of_the_same_payload_and_forced_ingest_replace(make_ctx, tmp_path: Path) -> None:
    pub = tmp_path / "pub"
    first = make_ctx(datasets=_datasets(f"file://{pub}/{{id}}"))
    _product(first)
    publish_datasets(first)
    retry = make_ctx(datasets=_datasets(f"file://{pub}/{{id}}"))
    retry.job_info["job_payload"] = first.job_info["job_payload"]  # lw-mozart-retry keeps the payload
    prod = _product(retry, files=1)
    publish_datasets(retry)
    assert _tree(pub / prod.name)["part0.dat"] == (prod / "part0.dat").read_bytes()
    assert "part2.dat" not in _tree(pub / prod.name)  # replaced whole, not merged
    assert [e["status"] for e in events(retry, "dataset-exists")] == ["retry"]
    forced = make_ctx(datasets=_datasets(f"file://{pub}/{{id}}"))
    _product(forced, files=2)
    ctx_file = forced.job_dir / "_context.json"  # the PGE asks for it, as HC-331 lets it
    ctx_file.write_text(json.dumps({**json.loads(ctx_file.read_text()), "_force_ingest": True}))
    publish_datasets(forced)
    assert sorted(_tree(pub / prod.name)) == sorted([*_tree(forced.job_dir / prod.name), "_publish.context.json"])
    assert [e["status"] for e in events(forced, "dataset-exists")] == ["forced"]
    assert not [p for p in pub.iterdir() if p.name.startswith(".")]  # no backup copy left behind


def test_file_publish_interrupted_half_way_leaves_nothing(make_ctx, tmp_path: Path, monkeypatch) -> None:
    pub = tmp_path / "pub"
    ctx = make_ctx(datasets=_datasets(f"file://{pub}/{{id}}"))
    _product(ctx, files=5, size=200_000)
    real, calls = destinations.clone_file, []

    def disk_full_on_third(src: Path, dst: Path, on_bytes: Any = None) -> None:
        calls.append(dst)
        if len(calls) == 3:
            with open(dst, "wb") as fh:
                fh.write(b"partial")  # as a real ENOSPC does: some bytes made it
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst, on_bytes)

    monkeypatch.setattr(destinations, "clone_file", disk_full_on_third)
    with pytest.raises(OSError, match="No space left"):
        publish_datasets(ctx)
    assert len(calls) == 3
    assert list(pub.iterdir()) == []  # not the dataset, not a staging dir


def test_multi_dataset_publish_is_all_or_nothing(make_ctx, tmp_path: Path) -> None:
    pub = tmp_path / "pub"
    ctx = make_ctx(datasets=_datasets(f"file://{pub}/{{id}}"))
    _product(ctx, "HELLO_20240101_A")
    _product(ctx, "HELLO_20240101_B")
    bad = _product(ctx, "HELLO_20240101_C")
    os.symlink("/etc/hostname", bad / "leak.txt")
    with pytest.raises(PublishError, match=r"leak\.txt links outside the job dir"):
        publish_datasets(ctx)
    assert not pub.exists() or list(pub.iterdir()) == []


def test_webdav_publish_and_interrupted_put(make_ctx, http: FileServer) -> None:
    ctx = make_ctx(datasets=_datasets(f"{http.url}/products/{{year}}/{{id}}"))
    prod = _product(ctx, files=4)
    publish_datasets(ctx)
    out = http.root / "products" / "2024" / prod.name
    assert _tree(out)["part3.dat"] == (prod / "part3.dat").read_bytes()
    assert not [p for p in (http.root / "products" / "2024").iterdir() if p.name.startswith(".")]
    half = make_ctx(datasets=_datasets(f"{http.url}/other/{{id}}"))
    _product(half, files=6)
    http.faults.put_budget = 3  # the server fills up after three files
    with pytest.raises(Exception, match="HTTP 507"):
        publish_datasets(half)
    assert list((http.root / "other").iterdir()) == []
    again = make_ctx(datasets=_datasets(f"{http.url}/products/{{year}}/{{id}}"))
    _product(again)
    with pytest.raises(NoClobberError):
        publish_datasets(again)


def test_s3_publish_refuse_and_interrupted(make_ctx, bucket, s3_endpoint: str, monkeypatch) -> None:
    name, host = bucket.bucket_name, s3_endpoint.removeprefix("http://")
    ds = _datasets(f"s3://{host}/{name}/products/{{id}}")
    ctx = make_ctx(datasets=ds)
    prod = _product(ctx)
    publish_datasets(ctx)

    def keys(prefix: str) -> list[str]:
        return sorted(o["Key"] for o in bucket.list_objects_v2(Bucket=name, Prefix=prefix).get("Contents", []))

    assert keys("products/") == sorted(f"products/{prod.name}/{n}" for n in [*_tree(prod), "_publish.context.json"])
    again = make_ctx(datasets=ds)
    _product(again)
    with pytest.raises(NoClobberError, match="already exists"):
        publish_datasets(again)
    half = make_ctx(datasets=_datasets(f"s3://{host}/{name}/half/{{id}}"))
    _product(half, files=5)
    from sandbox_runner.data.transfer.s3 import S3Transport

    real, count = S3Transport.put_file, []

    def flaky(self: S3Transport, path: Path, url: Any) -> None:
        count.append(path)
        if len(count) == 4:
            raise destinations.TransferError("connection reset by peer")
        real(self, path, url)

    monkeypatch.setattr(S3Transport, "put_file", flaky)
    with pytest.raises(destinations.TransferError, match="reset"):
        publish_datasets(half)
    assert len(count) == 4 and keys("half/") == []


def test_recognition_templates_alt_pattern_and_extractor(make_ctx, tmp_path: Path) -> None:
    extractor = tmp_path / "extract.sh"
    extractor.write_text('#!/bin/sh\necho "{\\"from\\": \\"$(basename $1)\\", \\"orbit\\": 7}"\n')
    extractor.chmod(extractor.stat().st_mode | stat.S_IXUSR)
    ds = _datasets(f"file://{tmp_path}/pub/{{tile}}/{{met[orbit]}}/{{id}}", extractor=f"script:{extractor}",
                   alt_match_pattern=r"part(?P<part>\d)\.dat$")
    ctx = make_ctx(datasets=ds)
    prod = _product(ctx)
    (prod / "met.json").write_text('{"seeded": true}')
    publish_datasets(ctx)
    met = json.loads((prod / f"{prod.name}.met.json").read_text())
    assert met == {"from": prod.name, "orbit": 7, "data_product_name": prod.name, "seeded": True}
    assert not (prod / "met.json").exists()
    assert (tmp_path / "pub" / "T11" / "7" / prod.name / "part1.dat").exists()


@pytest.mark.parametrize(("change", "needle"), [
    ({"version": None}, 'has no "version"'),
    ({"prod_id": "NOPE_1"}, "no datasets.json entry matches"),
    ({"location": "file:///tmp/{met.__class__}"}, "attribute access"),
    ({"location": "file:///tmp/{missing}"}, "cannot fill datasets.json publish.location"),
    ({"location": "ftp://host/{id}"}, "unsupported scheme 'ftp'"),
])
def test_recognition_errors_publish_nothing(make_ctx, tmp_path: Path, change: dict[str, Any],
                                            needle: str) -> None:
    ctx = make_ctx(datasets=_datasets(change.get("location", f"file://{tmp_path}/pub/{{id}}")))
    _product(ctx, change.get("prod_id", "HELLO_20240101_T11"), version=change.get("version", "v1"))
    with pytest.raises(PublishError, match=needle):
        publish_datasets(ctx)
    assert not (tmp_path / "pub").exists()


def test_products_without_datasets_json_config_fail_clearly(make_ctx) -> None:
    ctx = make_ctx()
    _product(ctx)
    with pytest.raises(PublishError, match=r"no datasets\.json is configured"):
        publish_datasets(ctx)
    empty = make_ctx()
    empty.job_info["status"] = 0
    publish_datasets(empty)  # nothing produced: nothing needed
    assert json.loads((empty.job_dir / "_datasets.json").read_text()) == []
