"""``kubeserve-runtime fetch URI DEST [URI DEST ...] [--unpack URI DIR]``: put a model file, and the files beside it
(graphs composed with it, a labels file), in place for the server (the init container's job); ``--unpack`` puts
Python code there, a ``.py`` file or a ``.tar.gz``/``.tgz``/``.zip`` archive unpacked into DIR.

Sources: ``https://`` and ``http://`` (retried with backoff on connection errors, timeouts, 408, 429 and 5xx;
the size checked against Content-Length and ``--max-bytes``), ``file:///path``, ``pvc://CLAIM/PATH`` (read
from where the claim is mounted, ``--pvc-root``), ``s3://BUCKET/KEY`` and ``gs://BUCKET/OBJECT`` through
boto3 and google-cloud-storage when the image has them (credentials from their usual environment).

The bytes go to a temporary file beside DEST that replaces DEST only once complete, so a half download is
never loaded; code goes to a temporary directory beside DIR, which replaces DIR once unpacked. An archive member
that would land outside DIR (an absolute path, a '..' segment, a link out) fails the fetch. The files are fetched
in order; the first failure stops the command. Every event is one JSON line on stderr; on failure the reason is also
written to the termination message file, where Kubernetes shows it in the pod's status.

Exit codes: 0 fetched; 1 a fetch failed; 2 a URI or the options are invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, Any
from urllib.parse import SplitResult, unquote, urlsplit

from kubeserve.runtime import __version__
from kubeserve.runtime.arguments import non_negative_float, non_negative_int, positive_int
from kubeserve.runtime.logs import json_handler
from kubeserve.runtime.termination import add_termination_message_argument, write_termination_message

EXIT_OK = 0
EXIT_FETCH_FAILED = 1
EXIT_INVALID = 2

CHUNK_BYTES = 1024 * 1024
# HTTP statuses worth another try: the server or something in front of it may recover.
RETRIABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# A PersistentVolumeClaim's name is a DNS-1123 subdomain.
CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# What --unpack takes: a Python file, or an archive of Python code.
CODE_SUFFIXES = (".py", ".tar.gz", ".tgz", ".zip")
# An archive of code is refused before anything is unpacked past these, summed from its index (a zip or tar bomb would
# fill the pod's emptyDir, or its node's disk): far above any handler's code and its data files.
MAX_UNPACKED_BYTES = 2**30
MAX_UNPACKED_MEMBERS = 10_000

log = logging.getLogger("kubeserve.runtime.fetch")


class FetchError(Exception):
    """The model could not be fetched; the message says why, in one line."""

    exit_code = EXIT_FETCH_FAILED


class InvalidRequest(FetchError):
    """The URI or the options cannot work, whatever the network does."""

    exit_code = EXIT_INVALID


class TransientError(FetchError):
    """A failure that another attempt may not meet (connection reset, 503, timeout...)."""


@dataclass(frozen=True)
class FetchOptions:
    max_bytes: int | None = None
    retries: int = 5
    retry_backoff_seconds: float = 1.0
    connect_timeout_seconds: float = 30.0
    read_timeout_seconds: float = 60.0
    pvc_root: Path = Path("/mnt/pvc")


@dataclass(frozen=True)
class Fetched:
    size: int
    sha256: str


def describe(uri: str) -> str:
    """The URI as it may be logged: no user, password or query string (pre-signed URLs carry secrets there)."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return SplitResult(parts.scheme, host, parts.path, "", "").geturl() if parts.scheme else uri


def retry_delay(attempt: int, backoff_seconds: float, cap_seconds: float = 30.0) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): doubling from the backoff, capped."""
    return min(cap_seconds, backoff_seconds * 2 ** (attempt - 1))


# --- The destination -----------------------------------------------------------------------------------------


def _remove_stale_parts(dest: Path) -> None:
    """Drop temporary files and directories an earlier, killed attempt left beside DEST (the emptyDir outlives the
    container)."""
    for stale in dest.parent.glob(f".{dest.name}.*.part"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        with contextlib.suppress(OSError):
            stale.unlink()


class PartialFile:
    """A temporary file beside DEST that becomes DEST on ``commit()`` and disappears otherwise."""

    def __init__(self, dest: Path, max_bytes: int | None) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.size = 0
        self._digest = hashlib.sha256()
        try:
            handle, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as error:
            raise FetchError(f"cannot write to {dest.parent}: {error.strerror}") from error
        self.path = Path(name)
        self._file: IO[bytes] = os.fdopen(handle, "wb")
        self._committed = False

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _trace: TracebackType | None
    ) -> None:
        self._file.close()
        if not self._committed:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise FetchError(f"the model is larger than --max-bytes ({self.max_bytes} bytes)")
        self._digest.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as error:
            raise FetchError(f"cannot write {self.dest}: {error.strerror}") from error

    def commit(self) -> Fetched:
        """Make the bytes durable, then put them at DEST in one rename."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            os.fchmod(self._file.fileno(), 0o644)
            self._file.close()
            self.path.replace(self.dest)
        except OSError as error:
            raise FetchError(f"cannot write {self.dest}: {error.strerror}") from error
        self._committed = True
        return Fetched(self.size, self._digest.hexdigest())


def _check_expected_size(part: PartialFile, expected: int | None, what: str) -> None:
    if expected is not None and part.size != expected:
        raise TransientError(f"{what} ended after {part.size} of {expected} bytes")


def _check_not_too_large(size: int | None, options: FetchOptions) -> None:
    if size is not None and options.max_bytes is not None and size > options.max_bytes:
        raise FetchError(f"the model is {size} bytes, larger than --max-bytes ({options.max_bytes})")


# --- Sources -------------------------------------------------------------------------------------------------


def _copy_local(source: Path, dest: Path, options: FetchOptions) -> Fetched:
    try:
        with source.open("rb") as reader:
            info = os.fstat(reader.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FetchError(f"{source} is not a regular file")
            _check_not_too_large(info.st_size, options)
            with PartialFile(dest, options.max_bytes) as part:
                while chunk := reader.read(CHUNK_BYTES):
                    part.write(chunk)
                if part.size != info.st_size:
                    raise FetchError(f"{source} changed while it was copied")
                return part.commit()
    except FileNotFoundError as error:
        raise FetchError(f"{source} does not exist") from error
    except IsADirectoryError as error:
        raise FetchError(f"{source} is a directory, not a model file") from error
    except PermissionError as error:
        raise FetchError(f"{source} is not readable (permission denied)") from error
    except OSError as error:
        raise FetchError(f"cannot read {source}: {error.strerror}") from error


def file_source(parts: SplitResult) -> Path:
    """``file:///path``: a path inside this container (the image's own samples, a mounted volume)."""
    if parts.netloc not in ("", "localhost"):
        raise InvalidRequest(f"file URIs take an absolute path, file:///path, not a host ({parts.netloc!r})")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise InvalidRequest("file URIs take an absolute path: file:///path")
    return Path(path)


def pvc_source(parts: SplitResult, pvc_root: Path) -> Path:
    """``pvc://CLAIM/PATH``: PATH inside the claim, which the pod mounts at PVC_ROOT/CLAIM."""
    claim = parts.netloc
    if not CLAIM_NAME.fullmatch(claim):
        raise InvalidRequest(f"pvc URIs are pvc://CLAIM/PATH, and {claim!r} is not a valid claim name")
    inside = PurePosixPath(unquote(parts.path).lstrip("/"))
    if not inside.parts or ".." in inside.parts:
        raise InvalidRequest("pvc URIs are pvc://CLAIM/PATH, with a PATH inside the claim (no '..')")
    return pvc_root / claim / inside


def _bucket_and_key(parts: SplitResult, kind: str) -> tuple[str, str]:
    key = unquote(parts.path).lstrip("/")
    if not parts.netloc or not key:
        raise InvalidRequest(f"{parts.scheme} URIs are {parts.scheme}://BUCKET/{kind}")
    return parts.netloc, key


def _import_client(module: str, package: str, scheme: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise FetchError(
            f"{scheme}:// needs the {package} package, which this image does not have: "
            f"use an image with {package} installed, or serve the model over https://"
        ) from error


def _fetch_s3(bucket: str, key: str, dest: Path, options: FetchOptions) -> Fetched:
    """Credentials, region and endpoint come from boto3's environment (AWS_*), set from credentialsSecret."""
    boto3 = _import_client("boto3", "boto3", "s3")
    botocore_exceptions = _import_client("botocore.exceptions", "boto3", "s3")
    client = boto3.client("s3")
    try:
        size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        _check_not_too_large(size, options)
        with PartialFile(dest, options.max_bytes) as part:
            client.download_fileobj(bucket, key, _Writer(part))
            _check_expected_size(part, size, "the object")
            return part.commit()
    except botocore_exceptions.ClientError as error:
        details = error.response.get("Error", {})
        raise FetchError(
            f"s3://{bucket}/{key}: {details.get('Code', 'error')} {details.get('Message', '')}".rstrip()
        ) from error
    except botocore_exceptions.BotoCoreError as error:
        raise FetchError(f"s3://{bucket}/{key}: {error}") from error


def _fetch_gcs(bucket_name: str, name: str, dest: Path, options: FetchOptions) -> Fetched:
    """Credentials from GOOGLE_APPLICATION_CREDENTIALS (set from credentialsSecret); public objects need none."""
    storage = _import_client("google.cloud.storage", "google-cloud-storage", "gs")
    auth_exceptions = _import_client("google.auth.exceptions", "google-cloud-storage", "gs")
    api_exceptions = _import_client("google.api_core.exceptions", "google-cloud-storage", "gs")
    try:
        client = storage.Client()
    except auth_exceptions.DefaultCredentialsError:
        log.info("no Google credentials: reading anonymously", extra={"event": "fetch_anonymous"})
        client = storage.Client.create_anonymous_client()
    try:
        blob = client.bucket(bucket_name).get_blob(name)
        if blob is None:
            raise FetchError(f"gs://{bucket_name}/{name} does not exist")
        _check_not_too_large(blob.size, options)
        with PartialFile(dest, options.max_bytes) as part:
            blob.download_to_file(_Writer(part))
            _check_expected_size(part, blob.size, "the object")
            return part.commit()
    except api_exceptions.GoogleAPIError as error:
        raise FetchError(f"gs://{bucket_name}/{name}: {error}") from error


class _Writer:
    """The file object the cloud clients write to: every byte goes through the size and digest checks."""

    def __init__(self, part: PartialFile) -> None:
        self._part = part

    def write(self, chunk: bytes) -> int:
        self._part.write(chunk)
        return len(chunk)


async def _fetch_http(url: str, dest: Path, options: FetchOptions) -> Fetched:
    import aiohttp

    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=options.connect_timeout_seconds, sock_read=options.read_timeout_seconds
    )
    # identity: Content-Length then counts the bytes that land in DEST.
    headers = {"Accept-Encoding": "identity", "User-Agent": f"kubeserve-runtime/{__version__}"}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        attempts = options.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return await _http_attempt(session, url, dest, options)
            except TransientError as error:
                if attempt == attempts:
                    raise TransientError(f"{error} (gave up after {attempts} attempts)") from error
                delay = retry_delay(attempt, options.retry_backoff_seconds)
                log.warning(
                    "attempt failed; retrying",
                    extra={"event": "fetch_retrying", "attempt": attempt, "error": str(error), "retry_in": delay},
                )
                await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


async def _http_attempt(session: Any, url: str, dest: Path, options: FetchOptions) -> Fetched:
    import aiohttp

    try:
        async with session.get(url) as response:
            status = f"HTTP {response.status} {response.reason or ''}".rstrip()
            if response.status in RETRIABLE_STATUSES:
                raise TransientError(f"{status} from {describe(url)}")
            if response.status != 200:
                raise FetchError(f"{status} from {describe(url)}")
            encoded = response.headers.get("Content-Encoding", "identity") != "identity"
            expected = None if encoded else response.content_length
            _check_not_too_large(expected, options)
            with PartialFile(dest, options.max_bytes) as part:
                try:
                    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                        part.write(chunk)
                except aiohttp.ClientPayloadError as error:
                    raise TransientError(
                        f"the response from {describe(url)} ended early ({part.size} bytes"
                        + (f" of {expected})" if expected is not None else ")")
                    ) from error
                _check_expected_size(part, expected, f"the response from {describe(url)}")
                return part.commit()
    except aiohttp.InvalidURL as error:
        raise InvalidRequest(f"invalid URL {describe(url)}") from error
    except aiohttp.ClientConnectionError as error:
        raise TransientError(f"cannot reach {describe(url)}: {error or type(error).__name__}") from error
    except TimeoutError as error:
        raise TransientError(f"timed out reading from {describe(url)}") from error
    except aiohttp.ClientError as error:
        raise FetchError(f"{describe(url)}: {error or type(error).__name__}") from error


# --- Entry points --------------------------------------------------------------------------------------------


def _check_dest(dest: Path) -> None:
    if dest.is_dir():
        raise InvalidRequest(f"DEST {dest} is a directory: give the model file's path, e.g. /models/model.onnx")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FetchError(f"cannot create {dest.parent}: {error.strerror}") from error


def _source(uri: str, options: FetchOptions) -> Callable[[Path], Fetched]:
    """What fetches ``uri`` into a given DEST; checks the URI first, so a bad one touches nothing."""
    parts = urlsplit(uri)
    match parts.scheme:
        case "file":
            return partial(_copy_local, file_source(parts), options=options)
        case "pvc":
            return partial(_copy_local, pvc_source(parts, options.pvc_root), options=options)
        case "s3":
            return partial(_fetch_s3, *_bucket_and_key(parts, "KEY"), options=options)
        case "gs":
            return partial(_fetch_gcs, *_bucket_and_key(parts, "OBJECT"), options=options)
        case "http" | "https":
            if not parts.hostname:
                raise InvalidRequest(f"{parts.scheme} URIs need a host: {describe(uri)}")
            return lambda dest: asyncio.run(_fetch_http(uri, dest, options))
    named = f"unsupported scheme {parts.scheme!r}" if parts.scheme else "no scheme"
    raise InvalidRequest(
        f"{named} in {describe(uri)!r}: use https://, http://, file:///PATH, "
        "pvc://CLAIM/PATH, s3://BUCKET/KEY or gs://BUCKET/OBJECT"
    )


def fetch(uri: str, dest: Path, options: FetchOptions) -> Fetched:
    """Put the model at ``uri`` into the file ``dest``, atomically, or raise FetchError."""
    download = _source(uri, options)
    _check_dest(dest)
    _remove_stale_parts(dest)
    return download(dest)


# --- Code: --unpack ------------------------------------------------------------------------------------------


def _code_suffix(uri: str) -> str:
    name = PurePosixPath(unquote(urlsplit(uri).path)).name
    for suffix in CODE_SUFFIXES:
        if name.endswith(suffix) and name != suffix:
            return suffix
    raise InvalidRequest(
        f"code must be a .py file or a .tar.gz, .tgz or .zip archive of Python code, not {name!r} ({describe(uri)})"
    )


def _outside(path: str) -> bool:
    """Whether an archive's path could land outside the directory it is unpacked into."""
    return path.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", path)) or ".." in re.split(r"[/\\]", path)


def _check_member(archive: str, name: str, link: str | None = None) -> None:
    if _outside(name):
        raise FetchError(f"{archive} holds {name!r}, an absolute path or one with a '..' segment: not unpacked")
    if link is not None and _outside(link):
        raise FetchError(f"{archive} holds {name!r}, a link to {link!r}, outside the directory: not unpacked")


def _check_totals(archive: str, members: int, size: int) -> None:
    """Refuse an archive past ``MAX_UNPACKED_MEMBERS`` or ``MAX_UNPACKED_BYTES``, from what its index declares."""
    if members > MAX_UNPACKED_MEMBERS:
        raise FetchError(f"{archive} holds {members} members, more than {MAX_UNPACKED_MEMBERS}: not unpacked")
    if size > MAX_UNPACKED_BYTES:
        raise FetchError(f"{archive} unpacks to {size} bytes, more than {MAX_UNPACKED_BYTES}: not unpacked")


def _unpack(archive: Path, into: Path, suffix: str) -> None:
    try:
        if suffix == ".zip":
            with zipfile.ZipFile(archive) as bundle:
                infos = bundle.infolist()
                _check_totals(archive.name, len(infos), sum(info.file_size for info in infos))
                for info in infos:
                    _check_member(archive.name, info.filename)
                bundle.extractall(into)
            return
        # Python before 3.11.4 has no extraction filters, on which the checks below rely: refuse, never unpack unsafely.
        if not hasattr(tarfile, "data_filter"):
            raise FetchError(f"cannot unpack {archive.name} safely: tar archives need Python 3.11.4 or later")
        with tarfile.open(archive, "r:gz") as bundle:
            members = bundle.getmembers()
            _check_totals(archive.name, len(members), sum(member.size for member in members if member.isfile()))
            for member in members:
                if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                    raise FetchError(f"{archive.name} holds {member.name!r}, neither a file nor a directory")
                _check_member(archive.name, member.name, member.linkname if member.issym() or member.islnk() else None)
            # The data filter refuses what the checks above might miss (links resolving outside, odd modes).
            bundle.extractall(into, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
        raise FetchError(f"cannot unpack {archive.name}: {error}") from error
    except OSError as error:
        raise FetchError(f"cannot unpack {archive.name}: {error.strerror or error}") from error


def fetch_code(uri: str, directory: Path, options: FetchOptions) -> Fetched:
    """Put the Python code at ``uri`` into ``directory``: a .py file as it is, an archive unpacked; DIR is replaced
    only once the whole code is there. The fetched file's size and sha256."""
    suffix = _code_suffix(uri)
    download = _source(uri, options)
    if directory.exists() and not directory.is_dir():
        raise InvalidRequest(
            f"DIR {directory} is a file: --unpack takes a directory for the code, e.g. /models/handler"
        )
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(directory)
        work = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".part"))
    except OSError as error:
        raise FetchError(f"cannot write to {directory.parent}: {error.strerror}") from error
    try:
        code = work / "code"
        code.mkdir()
        name = PurePosixPath(unquote(urlsplit(uri).path)).name
        fetched = download(code / name if suffix == ".py" else work / name)
        if suffix != ".py":
            _unpack(work / name, code, suffix)
        try:
            code.chmod(0o755)
            if directory.exists():
                shutil.rmtree(directory)
            code.rename(directory)
        except OSError as error:
            raise FetchError(f"cannot write {directory}: {error.strerror}") from error
        return fetched
    finally:
        shutil.rmtree(work, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Download or copy a model, and the files beside it, each URI to its DEST, atomically: DEST is replaced only "
        "once the whole file is there. Exit codes: 0 fetched, 1 a fetch failed, 2 a URI or an option is invalid."
    )
    parser.add_argument(
        "files",
        nargs="*",
        metavar="URI DEST",
        help="pairs: https://, http://, file:///PATH, pvc://CLAIM/PATH, s3:// or gs:// URI, and the file to write, "
        "e.g. /models/model.onnx",
    )
    parser.add_argument(
        "--unpack",
        nargs=2,
        metavar=("URI", "DIR"),
        help="Python code into the directory DIR: a .py file, or a .tar.gz, .tgz or .zip archive unpacked (members "
        "with absolute paths or '..' are refused)",
    )
    defaults = FetchOptions()
    parser.add_argument(
        "--max-bytes", type=positive_int, default=None, metavar="N", help="refuse models larger than N bytes"
    )
    parser.add_argument(
        "--retries",
        type=non_negative_int,
        default=defaults.retries,
        metavar="N",
        help=f"http(s): attempts after the first on connection errors, timeouts and 5xx (default {defaults.retries})",
    )
    parser.add_argument(
        "--retry-backoff",
        type=non_negative_float,
        default=defaults.retry_backoff_seconds,
        metavar="SECONDS",
        help="http(s): first wait between attempts, doubling up to 30 s (default %(default)s)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=non_negative_float,
        default=defaults.connect_timeout_seconds,
        metavar="SECONDS",
        help="http(s): longest wait to connect (default %(default)s)",
    )
    parser.add_argument(
        "--read-timeout",
        type=non_negative_float,
        default=defaults.read_timeout_seconds,
        metavar="SECONDS",
        help="http(s): longest silence while reading (default %(default)s)",
    )
    parser.add_argument(
        "--pvc-root",
        type=Path,
        default=defaults.pvc_root,
        metavar="DIR",
        help="where claims are mounted: pvc://CLAIM/PATH reads DIR/CLAIM/PATH (default %(default)s)",
    )
    add_termination_message_argument(parser)


@contextlib.contextmanager
def _json_logging() -> Iterator[None]:
    """The fetch's events as JSON lines on stderr, in the server's format (``kubeserve.runtime.logs``).

    Scoped to this logger and to the run, so that calling ``run`` in-process leaves logging as it found it.
    """
    handler = json_handler()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = True


@dataclass(frozen=True)
class _Job:
    uri: str
    dest: Path
    unpack: bool = False


def _jobs(args: argparse.Namespace) -> list[_Job]:
    if len(args.files) % 2:
        raise InvalidRequest(f"give URI DEST pairs: {args.files[-1]!r} has no DEST")
    jobs = [_Job(uri, Path(dest)) for uri, dest in zip(args.files[::2], args.files[1::2], strict=True)]
    if args.unpack is not None:
        jobs.append(_Job(args.unpack[0], Path(args.unpack[1]), unpack=True))
    if not jobs:
        raise InvalidRequest("nothing to fetch: give URI DEST, or --unpack URI DIR")
    return jobs


def run(args: argparse.Namespace) -> int:
    options = FetchOptions(
        max_bytes=args.max_bytes,
        retries=args.retries,
        retry_backoff_seconds=args.retry_backoff,
        connect_timeout_seconds=args.connect_timeout,
        read_timeout_seconds=args.read_timeout,
        pvc_root=args.pvc_root,
    )
    with _json_logging():
        try:
            jobs = _jobs(args)
        except FetchError as error:
            return _failed(args, f"cannot fetch: {error}", {}, error.exit_code)
        for job in jobs:
            where = {"source": describe(job.uri), "dest": str(job.dest)}
            log.info("fetching", extra={"event": "fetch_started", **where})
            started = time.monotonic()
            try:
                fetched = (fetch_code if job.unpack else fetch)(job.uri, job.dest, options)
            except FetchError as error:
                return _failed(args, f"cannot fetch {job.dest}: {error}", where, error.exit_code)
            log.info(
                "fetched",
                extra={
                    "event": "fetch_completed",
                    **where,
                    "bytes": fetched.size,
                    "sha256": fetched.sha256,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
        return EXIT_OK


def _failed(args: argparse.Namespace, message: str, where: dict[str, str], exit_code: int) -> int:
    log.error(message, extra={"event": "fetch_failed", **where})
    write_termination_message(args.termination_message_path, message)
    return exit_code
