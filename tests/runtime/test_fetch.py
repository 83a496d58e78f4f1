"""``kubeserve-runtime fetch``: real HTTP servers on 127.0.0.1, real files, the real command line."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
import sys
import tarfile
import types
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from kubeserve.runtime import fetch
from kubeserve.runtime.cli import build_parser

# Larger than one read chunk, so that downloads really stream.
MODEL = bytes(range(256)) * (6 * 1024 + 7)
MODEL_SHA256 = hashlib.sha256(MODEL).hexdigest()
OLD_MODEL = b"the model that was there before"


@dataclass
class ModelServer:
    url: str
    hits: Counter[str] = field(default_factory=Counter)
    failures_before_success: int = 2


def free_port() -> int:
    """A port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def server() -> AsyncIterator[ModelServer]:
    state = ModelServer(url="")

    async def model(request: web.Request) -> web.Response:
        state.hits[request.path] += 1
        return web.Response(body=MODEL, content_type="application/octet-stream")

    async def flaky(request: web.Request) -> web.Response:
        state.hits[request.path] += 1
        if state.hits[request.path] <= state.failures_before_success:
            return web.Response(status=503, text="warming up")
        return web.Response(body=MODEL)

    async def down(request: web.Request) -> web.Response:
        state.hits[request.path] += 1
        return web.Response(status=503, text="down")

    async def forbidden(request: web.Request) -> web.Response:
        state.hits[request.path] += 1
        return web.Response(status=403, text="no")

    async def truncated(request: web.Request) -> web.StreamResponse:
        # Promise the whole model, send half, then drop the connection.
        state.hits[request.path] += 1
        response = web.StreamResponse(headers={"Content-Length": str(len(MODEL))})
        await response.prepare(request)
        await response.write(MODEL[: len(MODEL) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    async def chunked(request: web.Request) -> web.StreamResponse:
        # No Content-Length: only --max-bytes can stop an oversized body.
        state.hits[request.path] += 1
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(MODEL), 64 * 1024):
            await response.write(MODEL[start : start + 64 * 1024])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/models/model.onnx", model)
    app.router.add_get("/flaky.onnx", flaky)
    app.router.add_get("/down.onnx", down)
    app.router.add_get("/forbidden.onnx", forbidden)
    app.router.add_get("/truncated.onnx", truncated)
    app.router.add_get("/chunked.onnx", chunked)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


def events(stderr: str) -> list[dict]:
    """Every stderr line is one JSON event; fails the test on anything else (a traceback, say)."""
    return [json.loads(line) for line in stderr.splitlines()]


def failure(stderr: str) -> str:
    (failed,) = [event for event in events(stderr) if event["event"] == "fetch_failed"]
    assert failed["level"] == "ERROR"
    return failed["message"]


def fetch_args(uri: str, dest: Path, *options: str) -> list[str]:
    # No waiting between attempts: the retry logic, not the clock, is under test here.
    return ["fetch", uri, str(dest), "--retry-backoff", "0", *options]


async def run_fetch(uri: str, dest: Path, *options: str) -> int:
    """The command as the CLI runs it, in a thread: it has its own event loop, the server runs in ours."""
    args = build_parser().parse_args(fetch_args(uri, dest, *options))
    return await asyncio.to_thread(fetch.run, args)


def run_fetch_sync(uri: str, dest: Path, *options: str) -> int:
    return fetch.run(build_parser().parse_args(fetch_args(uri, dest, *options)))


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# --- http(s) -------------------------------------------------------------------------------------------------


async def test_downloads_the_model_over_http(server, tmp_path, capsys):
    dest = tmp_path / "models" / "model.onnx"

    assert await run_fetch(f"{server.url}/models/model.onnx", dest) == 0

    assert dest.read_bytes() == MODEL
    assert files_in(dest.parent) == ["model.onnx"]
    completed = [event for event in events(capsys.readouterr().err) if event["event"] == "fetch_completed"]
    assert completed[0]["bytes"] == len(MODEL)
    assert completed[0]["sha256"] == MODEL_SHA256


async def test_retries_after_503_until_the_server_answers(server, tmp_path, capsys):
    dest = tmp_path / "model.onnx"

    assert await run_fetch(f"{server.url}/flaky.onnx", dest, "--retries", "3") == 0

    assert dest.read_bytes() == MODEL
    assert server.hits["/flaky.onnx"] == 3
    retries = [event for event in events(capsys.readouterr().err) if event["event"] == "fetch_retrying"]
    assert [event["attempt"] for event in retries] == [1, 2]
    assert "HTTP 503" in retries[0]["error"]


async def test_gives_up_after_the_last_retry(server, tmp_path, capsys):
    dest = tmp_path / "model.onnx"

    assert await run_fetch(f"{server.url}/down.onnx", dest, "--retries", "2") == 1

    assert server.hits["/down.onnx"] == 3
    message = failure(capsys.readouterr().err)
    assert "HTTP 503 Service Unavailable" in message
    assert "gave up after 3 attempts" in message
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(("path", "status"), [("/missing.onnx", "HTTP 404 Not Found"), ("/forbidden.onnx", "403")])
async def test_a_client_error_fails_at_once(server, tmp_path, capsys, path, status):
    dest = tmp_path / "model.onnx"

    assert await run_fetch(f"{server.url}{path}", dest, "--retries", "5") == 1

    assert status in failure(capsys.readouterr().err)
    assert server.hits[path] <= 1  # no retry: asking again cannot help
    assert files_in(tmp_path) == []


async def test_a_truncated_body_never_replaces_the_model_in_place(server, tmp_path, capsys):
    dest = tmp_path / "model.onnx"
    dest.write_bytes(OLD_MODEL)

    assert await run_fetch(f"{server.url}/truncated.onnx", dest, "--retries", "1") == 1

    assert dest.read_bytes() == OLD_MODEL
    assert files_in(tmp_path) == ["model.onnx"]  # no partial file left beside it
    assert server.hits["/truncated.onnx"] == 2  # a cut connection is worth another try
    message = failure(capsys.readouterr().err)
    assert "ended early" in message
    assert f"of {len(MODEL)}" in message


async def test_a_content_length_over_max_bytes_is_refused_before_downloading(server, tmp_path, capsys):
    dest = tmp_path / "model.onnx"

    code = await run_fetch(f"{server.url}/models/model.onnx", dest, "--max-bytes", "1000")

    assert code == 1
    assert f"the model is {len(MODEL)} bytes, larger than --max-bytes (1000)" in failure(capsys.readouterr().err)
    assert files_in(tmp_path) == []


async def test_a_streamed_body_over_max_bytes_is_cut_off(server, tmp_path, capsys):
    dest = tmp_path / "model.onnx"

    assert await run_fetch(f"{server.url}/chunked.onnx", dest, "--max-bytes", "100000") == 1

    assert "larger than --max-bytes (100000 bytes)" in failure(capsys.readouterr().err)
    assert files_in(tmp_path) == []


async def test_a_streamed_body_within_max_bytes_is_kept(server, tmp_path):
    dest = tmp_path / "model.onnx"

    assert await run_fetch(f"{server.url}/chunked.onnx", dest, "--max-bytes", str(len(MODEL))) == 0

    assert dest.read_bytes() == MODEL


async def test_an_unreachable_server_is_retried_then_reported(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}/model.onnx"

    assert await run_fetch(uri, tmp_path / "model.onnx", "--retries", "1") == 1

    stderr = capsys.readouterr().err
    assert len([event for event in events(stderr) if event["event"] == "fetch_retrying"]) == 1
    assert f"cannot reach {uri}" in failure(stderr)


async def test_credentials_in_the_url_never_reach_the_logs(server, tmp_path, capsys):
    host = server.url.removeprefix("http://")
    uri = f"http://reader:hunter2@{host}/missing.onnx?X-Amz-Signature=s3cr3t"

    assert await run_fetch(uri, tmp_path / "model.onnx") == 1

    stderr = capsys.readouterr().err
    assert "hunter2" not in stderr
    assert "s3cr3t" not in stderr
    assert f"http://{host}/missing.onnx" in failure(stderr)


async def test_leftovers_of_a_killed_attempt_are_removed(server, tmp_path):
    dest = tmp_path / "model.onnx"
    (tmp_path / ".model.onnx.abc123.part").write_bytes(b"half a model")

    assert await run_fetch(f"{server.url}/models/model.onnx", dest) == 0

    assert files_in(tmp_path) == ["model.onnx"]


async def test_the_command_line_runs_as_a_process(server, tmp_path):
    """The installed console script, as the init container runs it: exit code and JSON logs."""
    script = Path(sys.executable).parent / "kubeserve-runtime"
    dest = tmp_path / "model.onnx"

    async def run(uri: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            script, "fetch", uri, str(dest), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stdout, stderr = await process.communicate()
        assert stdout == b""
        return process.returncode, stderr.decode()

    code, stderr = await run(f"{server.url}/models/model.onnx")
    assert code == 0
    assert dest.read_bytes() == MODEL
    assert [event["event"] for event in events(stderr)] == ["fetch_started", "fetch_completed"]

    code, stderr = await run("ftp://example/model.onnx")
    assert code == 2
    assert "unsupported scheme 'ftp'" in failure(stderr)
    assert dest.read_bytes() == MODEL


# --- file:// and pvc:// --------------------------------------------------------------------------------------


def test_copies_a_file_uri(tmp_path):
    source = tmp_path / "source" / "mlp.onnx"
    source.parent.mkdir()
    source.write_bytes(MODEL)
    dest = tmp_path / "models" / "model.onnx"

    assert run_fetch_sync(source.as_uri(), dest) == 0

    assert dest.read_bytes() == MODEL
    assert files_in(dest.parent) == ["model.onnx"]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda path: None, "does not exist"),
        (lambda path: path.mkdir(), "is a directory, not a model file"),
    ],
)
def test_an_unreadable_source_file_fails_clearly(tmp_path, capsys, make: Callable[[Path], None], reason):
    source = tmp_path / "source.onnx"
    make(source)
    dest = tmp_path / "out" / "model.onnx"

    assert run_fetch_sync(source.as_uri(), dest) == 1

    assert f"{source} {reason}" in failure(capsys.readouterr().err)
    assert files_in(dest.parent) == []


def test_a_file_over_max_bytes_is_refused(tmp_path, capsys):
    source = tmp_path / "big.onnx"
    source.write_bytes(MODEL)

    assert run_fetch_sync(source.as_uri(), tmp_path / "model.onnx", "--max-bytes", "10") == 1

    assert "larger than --max-bytes (10)" in failure(capsys.readouterr().err)
    assert files_in(tmp_path) == ["big.onnx"]


def test_reads_a_pvc_uri_from_where_the_claim_is_mounted(tmp_path):
    pvc_root = tmp_path / "pvc"
    source = pvc_root / "models-claim" / "resnet" / "v2" / "model.onnx"
    source.parent.mkdir(parents=True)
    source.write_bytes(MODEL)
    dest = tmp_path / "model.onnx"

    code = run_fetch_sync("pvc://models-claim/resnet/v2/model.onnx", dest, "--pvc-root", str(pvc_root))

    assert code == 0
    assert dest.read_bytes() == MODEL


def test_a_missing_file_on_the_claim_names_the_path_looked_at(tmp_path, capsys):
    code = run_fetch_sync("pvc://models-claim/nope.onnx", tmp_path / "model.onnx", "--pvc-root", str(tmp_path))

    assert code == 1
    assert f"{tmp_path}/models-claim/nope.onnx does not exist" in failure(capsys.readouterr().err)


# --- invalid requests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("ftp://example.com/model.onnx", "unsupported scheme 'ftp'"),
        ("model.onnx", "no scheme"),
        ("file://fileserver/models/model.onnx", "file URIs take an absolute path"),
        ("pvc://Not_A_Claim/model.onnx", "'Not_A_Claim' is not a valid claim name"),
        ("pvc://models-claim/../other-claim/model.onnx", "no '..'"),
        ("pvc://models-claim/", "with a PATH inside the claim"),
        ("s3://bucket-only", "s3 URIs are s3://BUCKET/KEY"),
        ("gs:///object", "gs URIs are gs://BUCKET/OBJECT"),
        ("https:///model.onnx", "https URIs need a host"),
    ],
)
def test_an_invalid_uri_is_rejected_before_anything_is_written(tmp_path, capsys, uri, reason):
    dest = tmp_path / "models" / "model.onnx"

    assert run_fetch_sync(uri, dest) == 2

    assert reason in failure(capsys.readouterr().err)
    assert not dest.parent.exists()


def test_a_directory_as_destination_is_rejected(tmp_path, capsys):
    source = tmp_path / "source.onnx"
    source.write_bytes(MODEL)

    assert run_fetch_sync(source.as_uri(), tmp_path) == 2

    assert "is a directory: give the model file's path" in failure(capsys.readouterr().err)


@pytest.mark.parametrize("option", [["--retries", "-1"], ["--max-bytes", "0"], ["--read-timeout", "-5"]])
def test_bad_options_are_a_usage_error(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["fetch", "https://example.com/m.onnx", str(tmp_path / "m.onnx"), *option])

    assert exited.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_the_reason_goes_to_the_termination_message(tmp_path):
    termination_log = tmp_path / "termination-log"
    termination_log.touch()  # Kubernetes creates it; the fetch only writes into an existing one

    code = run_fetch_sync(
        (tmp_path / "gone.onnx").as_uri(), tmp_path / "model.onnx", "--termination-message-path", str(termination_log)
    )

    assert code == 1
    assert termination_log.read_text() == f"cannot fetch {tmp_path}/model.onnx: {tmp_path}/gone.onnx does not exist\n"


def test_no_termination_message_file_is_created(tmp_path):
    termination_log = tmp_path / "termination-log"

    run_fetch_sync("ftp://x/y", tmp_path / "model.onnx", "--termination-message-path", str(termination_log))

    assert not termination_log.exists()


# --- s3:// and gs:// -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "package"),
    [("s3://models/mlp/model.onnx", "boto3"), ("gs://models/mlp/model.onnx", "google-cloud-storage")],
)
def test_a_cloud_uri_without_its_client_names_the_missing_package(tmp_path, capsys, monkeypatch, uri, package):
    # This venv has neither client; make sure of it whatever else gets installed.
    for module in ("boto3", "botocore.exceptions", "google.cloud.storage"):
        monkeypatch.setitem(sys.modules, module, None)

    assert run_fetch_sync(uri, tmp_path / "model.onnx") == 1

    assert f"needs the {package} package, which this image does not have" in failure(capsys.readouterr().err)
    assert files_in(tmp_path) == []


class FakeClientError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.response = {"Error": {"Code": code, "Message": message}}


def install_fake_boto3(monkeypatch, objects: dict[tuple[str, str], bytes], advertised: int | None = None) -> None:
    """boto3's S3 surface the fetch uses: head_object, download_fileobj and ClientError."""

    class Client:
        def head_object(self, Bucket: str, Key: str) -> dict:
            if (Bucket, Key) not in objects:
                raise FakeClientError("404", "Not Found")
            return {"ContentLength": advertised if advertised is not None else len(objects[Bucket, Key])}

        def download_fileobj(self, Bucket: str, Key: str, Fileobj) -> None:
            body = objects[Bucket, Key]
            for start in range(0, len(body), 8 * 1024 * 1024):
                Fileobj.write(body[start : start + 8 * 1024 * 1024])

    boto3 = types.SimpleNamespace(client=lambda service: Client())
    exceptions = types.SimpleNamespace(
        ClientError=FakeClientError, BotoCoreError=type("BotoCoreError", (Exception,), {})
    )
    monkeypatch.setitem(sys.modules, "boto3", boto3)
    monkeypatch.setitem(sys.modules, "botocore.exceptions", exceptions)


def test_s3_downloads_through_boto3(tmp_path, monkeypatch):
    install_fake_boto3(monkeypatch, {("models", "mlp/model.onnx"): MODEL})
    dest = tmp_path / "model.onnx"

    assert run_fetch_sync("s3://models/mlp/model.onnx", dest) == 0

    assert dest.read_bytes() == MODEL


def test_s3_errors_and_short_objects_are_reported(tmp_path, monkeypatch, capsys):
    install_fake_boto3(monkeypatch, {("models", "short.onnx"): MODEL[:100]}, advertised=len(MODEL))

    assert run_fetch_sync("s3://models/missing.onnx", tmp_path / "model.onnx") == 1
    assert "s3://models/missing.onnx: 404 Not Found" in failure(capsys.readouterr().err)

    assert run_fetch_sync("s3://models/short.onnx", tmp_path / "model.onnx") == 1
    assert f"the object ended after 100 of {len(MODEL)} bytes" in failure(capsys.readouterr().err)
    assert files_in(tmp_path) == []


# --- pure parts ----------------------------------------------------------------------------------------------


def test_retry_delays_double_up_to_a_cap():
    assert [fetch.retry_delay(attempt, 1.0) for attempt in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert fetch.retry_delay(3, 0.5, cap_seconds=10) == 2


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            "https://user:pw@models.example.com:8443/a/model.onnx?sig=x#f",
            "https://models.example.com:8443/a/model.onnx",
        ),
        ("pvc://claim/model.onnx", "pvc://claim/model.onnx"),
        ("file:///opt/kubeserve/samples/mlp.onnx", "file:///opt/kubeserve/samples/mlp.onnx"),
    ],
)
def test_describe_drops_secrets_but_keeps_the_location(uri, shown):
    assert fetch.describe(uri) == shown


# --- Several files, and code: --unpack ------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    return fetch.run(build_parser().parse_args(["fetch", *argv]))


def test_several_files_are_fetched_in_one_run_each_to_its_dest(tmp_path, capsys):
    model, graph = tmp_path / "source-model.onnx", tmp_path / "source-graph.onnx"
    model.write_bytes(MODEL)
    graph.write_bytes(OLD_MODEL)
    dest = tmp_path / "models"

    code = run_cli(model.as_uri(), str(dest / "model.onnx"), graph.as_uri(), str(dest / "preprocessing.onnx"))

    assert code == 0
    assert (dest / "model.onnx").read_bytes() == MODEL
    assert (dest / "preprocessing.onnx").read_bytes() == OLD_MODEL
    completed = [event["dest"] for event in events(capsys.readouterr().err) if event["event"] == "fetch_completed"]
    assert completed == [str(dest / "model.onnx"), str(dest / "preprocessing.onnx")]


def test_a_uri_without_a_dest_is_a_usage_error(tmp_path, capsys):
    assert run_cli("file:///a.onnx", str(tmp_path / "a.onnx"), "file:///b.onnx") == 2
    assert "give URI DEST pairs: 'file:///b.onnx' has no DEST" in failure(capsys.readouterr().err)
    assert run_cli() == 2
    assert "nothing to fetch" in failure(capsys.readouterr().err)


def write_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


HANDLER = b"class Explain:\n    pass\n"


@pytest.mark.parametrize("kind", ["py", "tar.gz", "tgz", "zip"])
def test_code_is_put_into_its_directory_unpacked_replacing_what_was_there(tmp_path, kind):
    members = {"fraud/__init__.py": b"", "fraud/handlers.py": HANDLER}
    source = tmp_path / f"handler.{kind}"
    if kind == "py":
        source.write_bytes(HANDLER)
    elif kind == "zip":
        write_zip(source, members)
    else:
        write_tar(source, members)
    directory = tmp_path / "models" / "handler"
    directory.mkdir(parents=True)
    (directory / "stale.py").write_text("from an earlier revision")

    assert run_cli("--unpack", source.as_uri(), str(directory)) == 0

    found = sorted(str(path.relative_to(directory)) for path in directory.rglob("*.py"))
    assert found == (["handler.py"] if kind == "py" else ["fraud/__init__.py", "fraud/handlers.py"])
    assert files_in(directory.parent) == ["handler"], "no temporary directory is left"


@pytest.mark.parametrize(
    ("members", "links", "words"),
    [
        ({"../evil.py": HANDLER}, None, "'../evil.py', an absolute path or one with a '..' segment"),
        ({"/tmp/evil.py": HANDLER}, None, "'/tmp/evil.py', an absolute path or one with a '..' segment"),
        ({"fraud/../../evil.py": HANDLER}, None, "'fraud/../../evil.py', an absolute path"),
        (
            {"handler.py": HANDLER},
            {"passwd": "/etc/passwd"},
            "'passwd', a link to '/etc/passwd', outside the directory",
        ),
    ],
    ids=["dot-dot", "absolute", "dot-dot inside", "link out"],
)
def test_an_archive_member_outside_its_directory_fails_the_fetch(tmp_path, capsys, members, links, words):
    source = write_tar(tmp_path / "handler.tar.gz", members, links)
    directory = tmp_path / "models" / "handler"

    assert run_cli("--unpack", source.as_uri(), str(directory)) == 1

    assert words in failure(capsys.readouterr().err)
    assert not directory.exists()
    assert files_in(tmp_path) == ["handler.tar.gz", "models"] and files_in(tmp_path / "models") == []


def test_a_zip_member_outside_its_directory_fails_the_fetch(tmp_path, capsys):
    source = write_zip(tmp_path / "handler.zip", {"ok.py": HANDLER, "..\\evil.py": HANDLER})

    assert run_cli("--unpack", source.as_uri(), str(tmp_path / "handler")) == 1

    assert "'..\\\\evil.py', an absolute path or one with a '..' segment" in failure(capsys.readouterr().err)
    assert not (tmp_path / "handler").exists()


def test_code_that_is_neither_python_nor_an_archive_of_it_is_refused(tmp_path, capsys):
    source = tmp_path / "handler.rar"
    source.write_bytes(b"rar")

    assert run_cli("--unpack", source.as_uri(), str(tmp_path / "handler")) == 2

    assert "code must be a .py file or a .tar.gz, .tgz or .zip archive of Python code, not 'handler.rar'" in failure(
        capsys.readouterr().err
    )


def test_a_broken_archive_is_named(tmp_path, capsys):
    source = tmp_path / "handler.tar.gz"
    source.write_bytes(b"not gzip at all")

    assert run_cli("--unpack", source.as_uri(), str(tmp_path / "handler")) == 1

    assert "cannot unpack handler.tar.gz" in failure(capsys.readouterr().err)


def _never_extracted(monkeypatch) -> None:
    def extractall(*args, **kwargs):
        raise AssertionError("a refused archive is never extracted")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", extractall)
    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)


def test_an_archive_of_too_many_members_is_refused_before_unpacking(tmp_path, capsys, monkeypatch):
    _never_extracted(monkeypatch)
    source = write_zip(tmp_path / "handler.zip", {f"m{n}.py": b"" for n in range(fetch.MAX_UNPACKED_MEMBERS + 1)})
    directory = tmp_path / "models" / "handler"

    assert run_cli("--unpack", source.as_uri(), str(directory)) == 1

    assert "handler.zip holds 10001 members, more than 10000: not unpacked" in failure(capsys.readouterr().err)
    assert not directory.exists()


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_declaring_too_many_bytes_is_refused_before_unpacking(tmp_path, capsys, monkeypatch, kind):
    _never_extracted(monkeypatch)
    monkeypatch.setattr(fetch, "MAX_UNPACKED_BYTES", 1000)  # a 1 GiB bomb, scaled down: the sizes are declared
    members = {"handler.py": HANDLER, "weights.bin": bytes(600), "more.bin": bytes(600)}
    source = (write_zip if kind == "zip" else write_tar)(tmp_path / f"handler.{kind}", members)
    directory = tmp_path / "models" / "handler"

    assert run_cli("--unpack", source.as_uri(), str(directory)) == 1

    expected = f"handler.{kind} unpacks to {1200 + len(HANDLER)} bytes, more than 1000: not unpacked"
    assert expected in failure(capsys.readouterr().err)
    assert not directory.exists()


def test_a_tar_archive_is_refused_without_pythons_extraction_filters(tmp_path, capsys, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter")
    source = write_tar(tmp_path / "handler.tar.gz", {"handler.py": HANDLER})

    assert run_cli("--unpack", source.as_uri(), str(tmp_path / "handler")) == 1

    assert "tar archives need Python 3.11.4 or later" in failure(capsys.readouterr().err)
