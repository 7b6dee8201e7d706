"""localize_urls, mark_localized_datasets, validate_checksum_files against real servers on loopback."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path

import pytest
from support.servers import FileServer

from sandbox_runner.data.localize.cache import Cache
from sandbox_runner.data.localize.steps import localize_urls, mark_localized_datasets, validate_checksum_files
from sandbox_runner.data.transfer.progress import Progress
from sandbox_runner.errors import IntegrityError, JobFormatError, TransferError

MiB = 1 << 20


def _payload(size: int, seed: int = 0) -> bytes:
    # not compressible and not periodic: a spliced or shifted resume would change the digest
    return b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(size // 32 + 1))[:size]


def test_http_download_lands_whole_with_metrics(make_ctx, http: FileServer) -> None:
    data = _payload(3 * MiB)
    url = http.put_file("in/a.bin", data)
    ctx = make_ctx([{"url": url, "local_path": "inputs/"}])
    localize_urls(ctx)
    dest = ctx.job_dir / "inputs" / "a.bin"
    assert dest.read_bytes() == data
    (metric,) = ctx.job_info["metrics"]["inputs_localized"]
    assert metric["url"] == url and metric["path"] == str(dest) and metric["disk_usage"] == len(data)
    assert metric["transfer_rate"] > 0 and metric["duration"] > 0 and metric["time_end"] >= metric["time_start"]


@pytest.mark.parametrize("cut", [3 * MiB + 17, 6 * MiB + 1])  # before and after hashing leaves the thread
def test_broken_download_resumes_with_range(make_ctx, http: FileServer, cut: int) -> None:
    data = _payload(8 * MiB, seed=1)
    url = http.put_file("big.bin", data, sidecars=("sha256",))
    http.faults.drop_after["/big.bin"] = cut
    ctx = make_ctx([{"url": url, "cache": False}, {"url": url + ".sha256"}])
    localize_urls(ctx)
    assert (ctx.job_dir / "big.bin").read_bytes() == data  # and its streamed sha256 matched the sidecar
    assert str(ctx.job_dir / "big.bin") in ctx.notes["localize"]["verified"]
    assert http.count("GET", "big.bin") == 2  # the cut one, then one ranged resume
    assert http.sent["/big.bin"] == len(data)  # the resume asked only for the bytes it did not have
    assert not list(ctx.job_dir.glob(".big.bin.part-*"))


def test_server_without_range_restarts_from_zero(make_ctx, http: FileServer) -> None:
    data = _payload(7 * MiB, seed=2)
    url = http.put_file("norange.bin", data, sidecars=("sha256",))
    http.faults.no_range = True
    http.faults.drop_after["/norange.bin"] = 5 * MiB  # the digest thread is running when the restart comes
    ctx = make_ctx([{"url": url + ".sha256"}, {"url": url}])
    localize_urls(ctx)
    assert (ctx.job_dir / "norange.bin").read_bytes() == data  # and the streamed digest matched
    assert http.sent["/norange.bin"] == 5 * MiB + len(data)  # the whole file again after the cut


def test_transient_errors_are_retried_and_permanent_ones_are_not(make_ctx, http: FileServer) -> None:
    url = http.put_file("flaky.txt", b"eventually")
    http.faults.fail["/flaky.txt"] = [503, 2]
    ctx = make_ctx([{"url": url}])
    localize_urls(ctx)
    assert (ctx.job_dir / "flaky.txt").read_bytes() == b"eventually"
    assert http.count("GET", "flaky.txt") == 3
    http.faults.fail["/forbidden.txt"] = [403, 99]
    denied = make_ctx([{"url": http.url + "/forbidden.txt"}])
    with pytest.raises(TransferError, match=r"forbidden\.txt: HTTP 403"):
        localize_urls(denied)
    assert http.count("GET", "forbidden.txt") == 1
    http.faults.fail["/down.txt"] = [503, 99]
    down = make_ctx([{"url": http.url + "/down.txt"}])  # retries 3, backoff 0.05 s (datafixtures)
    with pytest.raises(TransferError, match=r"down\.txt failed after 4 attempts"):
        localize_urls(down)
    assert http.count("GET", "down.txt") == 4


def test_corrupt_file_fails_and_names_it(make_ctx, http: FileServer) -> None:
    url = http.put_file("data/granule.h5", _payload(MiB, seed=3), sidecars=("md5",), wrong=True)
    ctx = make_ctx([{"url": url, "local_path": "in/"}, {"url": url + ".md5", "local_path": "in/"}])
    with pytest.raises(IntegrityError, match=r"in/granule\.h5.*md5 expected"):
        localize_urls(ctx)
    assert not (ctx.job_dir / "in" / "granule.h5").exists()
    # a file that failed its checksum never becomes a cache entry
    names = [json.loads((Path(k) / ".meta.json").read_text())["name"]
             for k, _ in Cache(ctx.work_root / "cache").entries()]
    assert names == ["granule.h5.md5"]


@pytest.mark.parametrize("algo", ["md5", "sha256", "sha1", "blake2b", "sha3_256"])
def test_checksum_sidecar_bare_or_md5sum_style(make_ctx, http: FileServer, algo: str) -> None:
    data = _payload(MiB // 2, seed=4)
    url = http.put_file(f"c/{algo}.dat", data, sidecars=(algo,))
    bare = http.put_file(f"c/bare-{algo}.dat", data)
    (http.root / "c" / f"bare-{algo}.dat.{algo}").write_text(hashlib.new(algo, data).hexdigest().upper() + "\n")
    ctx = make_ctx([{"url": url}, {"url": url + f".{algo}"}, {"url": bare}, {"url": bare + f".{algo}"}])
    localize_urls(ctx)
    assert len(ctx.notes["localize"]["verified"]) == 2
    validate_checksum_files(ctx)  # nothing left to read: both were verified on the way in


def test_validate_checksum_files_reads_what_did_not_stream(make_ctx, tmp_path: Path) -> None:
    src = tmp_path / "srcdir"
    src.mkdir()
    (src / "x.bin").write_bytes(b"payload")
    (src / "x.bin.sha256").write_text(hashlib.sha256(b"other").hexdigest() + "  x.bin\n")
    ctx = make_ctx([{"url": f"file://{src}", "local_path": "d"}])
    localize_urls(ctx)
    with pytest.raises(IntegrityError, match=r"d/x\.bin"):
        validate_checksum_files(ctx)


@pytest.mark.parametrize("local_path", ["../../etc/x", "/etc/x", "a/../../x", ".."])
def test_local_path_outside_the_job_dir_is_refused(make_ctx, http: FileServer, local_path: str) -> None:
    url = http.put_file("f.txt", b"x")
    ctx = make_ctx([{"url": url, "local_path": local_path}])
    with pytest.raises(JobFormatError, match=r"local_path .*(escapes|absolute)"):
        localize_urls(ctx)
    assert http.count("GET", "f.txt") == 0  # refused before any download


def test_symlinked_dir_inside_the_job_dir_cannot_escape(make_ctx, http: FileServer, tmp_path: Path) -> None:
    url = http.put_file("f.txt", b"x")
    ctx = make_ctx([{"url": url, "local_path": "out/f.txt"}])
    (ctx.job_dir / "out").symlink_to(tmp_path)
    with pytest.raises(TransferError, match="outside the job dir"):
        localize_urls(ctx)
    assert not (tmp_path / "f.txt").exists()


def test_two_jobs_localizing_one_url_download_it_once(make_ctx, http: FileServer, tmp_path: Path) -> None:
    data = _payload(6 * MiB, seed=5)
    url = http.put_file("shared.bin", data)
    http.faults.delay = 0.2  # both jobs are surely in flight together
    ctxs = [make_ctx([{"url": url}]) for _ in range(2)]
    errors: list[BaseException] = []

    def run(ctx) -> None:  # type: ignore[no-untyped-def]
        try:
            localize_urls(ctx)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in ctxs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert http.count("GET", "shared.bin") == 1
    for ctx in ctxs:
        out = ctx.job_dir / "shared.bin"
        assert out.read_bytes() == data
        assert not os.access(out, os.W_OK) or os.geteuid() == 0 or out.stat().st_mode & 0o222 == 0


def test_cache_revalidates_a_changed_object(make_ctx, http: FileServer) -> None:
    url = http.put_file("v.txt", b"version one")
    first = make_ctx([{"url": url}])
    localize_urls(first)
    http.put_file("v.txt", b"version two, longer")
    second = make_ctx([{"url": url}])
    localize_urls(second)
    assert (second.job_dir / "v.txt").read_bytes() == b"version two, longer"
    assert (first.job_dir / "v.txt").read_bytes() == b"version one"  # the first job's copy is untouched


def test_parallel_downloads_and_first_error_wins(make_ctx, http: FileServer) -> None:
    urls = [http.put_file(f"many/{i}.txt", f"file {i}".encode()) for i in range(20)]
    ctx = make_ctx([{"url": u, "local_path": "m/"} for u in urls] + [{"url": http.url + "/missing.txt"}])
    with pytest.raises(TransferError, match=r"missing\.txt: HTTP 404"):
        localize_urls(ctx)


def test_credentials_never_reach_metrics_or_errors(make_ctx, http: FileServer) -> None:
    url = http.put_file("secret.txt", b"s")
    authed = url.replace("http://", "http://alice:hunter2@") + "?X-Amz-Signature=deadbeef&x=1"
    ctx = make_ctx([{"url": authed, "local_path": "s.txt"}, {"url": authed.replace("secret", "gone")}])
    with pytest.raises(TransferError) as err:
        localize_urls(ctx)
    assert "hunter2" not in str(err.value) and "deadbeef" not in str(err.value)
    ok = make_ctx([{"url": authed, "local_path": "s.txt"}])
    localize_urls(ok)
    text = json.dumps(ok.job_info["metrics"]) + "".join(
        p.read_text() for p in (ok.work_root / "cache").rglob(".meta.json"))
    assert "hunter2" not in text and "deadbeef" not in text and "alice" in text


def test_file_urls_files_and_directories(make_ctx, tmp_path: Path) -> None:
    src = tmp_path / "product"
    (src / "sub").mkdir(parents=True)
    (src / "product.dataset.json").write_text('{"version": "v1"}')
    (src / "sub" / "b.txt").write_text("b")
    single = tmp_path / "one.txt"
    single.write_text("one")
    ctx = make_ctx([{"url": f"file://{src}"}, {"url": f"file://{single}", "cache": False}, {"url": str(single),
                                                                                            "local_path": "two"}])
    localize_urls(ctx)
    assert (ctx.job_dir / "product" / "sub" / "b.txt").read_text() == "b"
    assert (ctx.job_dir / "one.txt").read_text() == "one" and (ctx.job_dir / "two").read_text() == "one"
    mark_localized_datasets(ctx)
    assert (ctx.job_dir / "product" / ".localized").exists()
    # local sources are copied straight in: no second copy in the cache, no marker written into a shared entry
    assert not (ctx.work_root / "cache").exists() or list(Cache(ctx.work_root / "cache").entries()) == []


def test_s3_object_and_prefix(make_ctx, bucket, s3_endpoint: str) -> None:
    name = bucket.bucket_name
    data = _payload(2 * MiB, seed=6)
    bucket.put_object(Bucket=name, Key="in/obj.bin", Body=data)
    bucket.put_object(Bucket=name, Key="in/obj.bin.md5", Body=hashlib.md5(data).hexdigest().encode())
    bucket.put_object(Bucket=name, Key="in/dir/p1.txt", Body=b"p1")
    bucket.put_object(Bucket=name, Key="in/dir/deeper/p2.txt", Body=b"p2")
    host = s3_endpoint.removeprefix("http://")
    ctx = make_ctx([{"url": f"s3://{host}/{name}/in/obj.bin"}, {"url": f"s3://{host}/{name}/in/obj.bin.md5"},
                    {"url": f"s3://{name}/in/dir", "cache": False}],
                   env={"SANDBOX_RUNNER_S3_ENDPOINT_URL": s3_endpoint})
    localize_urls(ctx)
    assert (ctx.job_dir / "obj.bin").read_bytes() == data
    assert (ctx.job_dir / "dir" / "deeper" / "p2.txt").read_bytes() == b"p2"
    assert str(ctx.job_dir / "obj.bin") in ctx.notes["localize"]["verified"]


def test_progress_line_only_on_a_terminal(make_ctx, http: FileServer) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out, quiet = Tty(), io.StringIO()
    p = Progress.for_mode("auto", "localize", 1, stream=out)
    p.add(5 * MiB)
    p.file_done()
    p.close()
    assert "localize: 1/1 files, 5 MiB" in out.getvalue()
    q = Progress.for_mode("auto", "localize", 1, stream=quiet)
    q.add(1)
    q.file_done()
    q.close()
    assert quiet.getvalue() == ""
