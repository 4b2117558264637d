"""Download the pipeline's raw data files, verified by size and sha256.

Every source is a public URL pinned to a commit, with the exact size and sha256 of its bytes.
`fetch` puts one source under a destination directory and checks it, so a run either has the
exact bytes the pipeline was designed for or stops with an error that says what went wrong.

Where the bytes come from, in order of preference:

1. the file already in place (with the right sha256): nothing to do;
2. a mirror, given as an argument or through the BARDLET_DATA_MIRROR environment variable:
   a local directory or an http(s):// base URL holding the same relative paths;
3. the source's public URL.

Downloads stream into `<dest>.part` (hashing on the way), resume it with an HTTP Range request
after a dropped connection, retry transient failures with exponential back-off, and only
rename the file into place once size and sha256 match.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from bardlet.defaults import UserError
from bardlet.files import sha256_file, write_json_atomic

MIRROR_ENV = "BARDLET_DATA_MIRROR"

CHUNK_SIZE = 1 << 16  # 64 KiB: small enough for a smooth progress bar, big enough to be fast
TIMEOUT_SECONDS = 30.0  # per socket operation, not for the whole download
USER_AGENT = "bardlet-data-fetch/0.1"


@dataclass(frozen=True)
class Source:
    """One raw data file: where it lives and exactly which bytes it must be."""

    name: str  # short name, e.g. "tinyshakespeare"
    path: str  # relative path inside data/raw and inside a mirror, e.g. "tinyshakespeare/input.txt"
    url: str  # public URL pinned to a commit, so the bytes never change under us
    sha256: str
    size: int  # bytes

    def __post_init__(self) -> None:
        # The path is joined onto directories and URLs: refuse anything that could escape them.
        p = PurePosixPath(self.path)
        if not self.path or p.is_absolute() or ".." in p.parts or "\\" in self.path:
            raise ValueError(f"Source {self.name!r}: path must be relative, got {self.path!r}")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"Source {self.name!r}: sha256 must be 64 lowercase hex digits")
        if self.size < 0:
            raise ValueError(f"Source {self.name!r}: size must be >= 0, got {self.size}")


TINYSHAKESPEARE = Source(
    name="tinyshakespeare",
    path="tinyshakespeare/input.txt",
    url=(
        "https://raw.githubusercontent.com/karpathy/char-rnn/"
        "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt"
    ),
    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    size=1_115_394,
)

OASST1_EN_VALIDATION = Source(
    name="oasst1-en-validation",
    path="oasst1/en-validation.jsonl",
    url=(
        "https://raw.githubusercontent.com/TurkuNLP/oasst-fi/"
        "f164a7d3ace246eec0ac04a4aa5dec26f2342d7c/original-data/en-validation.jsonl"
    ),
    sha256="b92db3f1db324f5aa3c5d75ed65a451b54063de1de7370506233c9917043bd66",
    size=3_373_178,
)

# The full OASST1 release (84,437 train + 4,401 validation messages, 35 languages) as Hugging
# Face publishes it: Parquet, all 18 fields, pinned to a revision. Not in the offline mirror:
# a machine with internet downloads them when params.yaml asks for the full release. The
# sha256 sums are the files' Git LFS object ids at that revision. `read_messages` reads them.
OASST1_REVISION = "fdf72ae0827c1cda404aff25b6603abec9e3399b"
_OASST1_HF = f"https://huggingface.co/datasets/OpenAssistant/oasst1/resolve/{OASST1_REVISION}"

OASST1_FULL_TRAIN = Source(
    name="oasst1-full-train",
    path="oasst1/data/train-00000-of-00001-b42a775f407cee45.parquet",
    url=f"{_OASST1_HF}/data/train-00000-of-00001-b42a775f407cee45.parquet",
    sha256="bbfadf5ed1278ba2208c837fdcad865adf65f5df55d80abadab2745db13fcb5e",
    size=39_516_251,
)

OASST1_FULL_VALIDATION = Source(
    name="oasst1-full-validation",
    path="oasst1/data/validation-00000-of-00001-134b8fd0c89408b6.parquet",
    url=f"{_OASST1_HF}/data/validation-00000-of-00001-134b8fd0c89408b6.parquet",
    sha256="24002597bb13a7edd42d92f773762f25e285f72c31a70449393d0ded1dc7b416",
    size=2_080_179,
)

# What the pipeline reads: the mirrored English validation slice (default), or the full release.
OASST1_SLICE: tuple[Source, ...] = (OASST1_EN_VALIDATION,)
OASST1_FULL: tuple[Source, ...] = (OASST1_FULL_TRAIN, OASST1_FULL_VALIDATION)

# The sources the pipeline knows, by name (what params.yaml refers to).
SOURCES: dict[str, Source] = {
    s.name: s
    for s in (TINYSHAKESPEARE, OASST1_EN_VALIDATION, OASST1_FULL_TRAIN, OASST1_FULL_VALIDATION)
}


def oasst1_sources(full: bool) -> tuple[Source, ...]:
    """The OASST1 files to download and read: the full Parquet release, or the mirrored slice."""
    return OASST1_FULL if full else OASST1_SLICE


class _Hasher(Protocol):
    """What we use of a hashlib object (hashlib's own class is private)."""

    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


class DownloadError(UserError, RuntimeError):
    """A source could not be fetched, or its bytes are not the expected ones."""


class _TransientError(Exception):
    """A failure worth retrying: the same request may well succeed a moment later."""


# Refused or reset connections, timeouts, DNS hiccups, broken chunked encoding, TLS cut short.
# (Disk errors such as a full disk are OSErrors too, but not these: they are not retried.)
_NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
)


def fetch(
    source: Source,
    dest_dir: Path,
    mirror: str | None = None,
    retries: int = 4,
    progress: bool = True,
    *,
    backoff: float = 0.5,
) -> Path:
    """Make sure `dest_dir / source.path` holds the source's exact bytes; return that path.

    `mirror` is a local directory or an http(s):// base URL; when None, the BARDLET_DATA_MIRROR
    environment variable is used if set, otherwise the source's public URL. HTTP downloads are
    retried `retries` times on transient errors, waiting `backoff`, 2*`backoff`, 4*`backoff`...
    seconds in between. Raises DownloadError on failure, never leaving a bad file in place.
    """
    dest = Path(dest_dir) / source.path
    if dest.is_file() and dest.stat().st_size == source.size and sha256_file(dest) == source.sha256:
        return dest  # already there and verified: a re-run costs one hash, no download

    if mirror is None:
        mirror = os.environ.get(MIRROR_ENV) or None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    if mirror is not None and not _is_url(mirror):
        digest = _copy_from_directory(source, _mirror_directory(mirror), part, progress)
    else:
        url = source.url if mirror is None else _join_url(mirror, source.path)
        digest = _download_with_retries(source, url, part, retries, backoff, progress)

    _verify(source, part, digest)  # deletes `part` and raises if the bytes are wrong
    os.replace(part, dest)  # atomic: readers see the old file or the complete new one
    return dest


# --- where the bytes come from ---------------------------------------------------------------


def _is_url(mirror: str) -> bool:
    return mirror.startswith(("http://", "https://"))


def _mirror_directory(mirror: str) -> Path:
    # Accept file:// URLs too, since people paste them.
    if mirror.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(mirror).path))
    return Path(mirror).expanduser()


def _join_url(base: str, rel_path: str) -> str:
    return base.rstrip("/") + "/" + urllib.parse.quote(rel_path)


def _copy_from_directory(source: Source, mirror_dir: Path, part: Path, progress: bool) -> str:
    """Copy the file from a local mirror into `part`; return its sha256."""
    src = mirror_dir / source.path
    if not src.is_file():
        raise DownloadError(
            f"{source.name}: {src} not found in the mirror directory {mirror_dir} "
            f"(set by the mirror argument or the {MIRROR_ENV} environment variable)"
        )
    digest = hashlib.sha256()
    with src.open("rb") as fin, part.open("wb") as fout:
        _copy_stream(fin.read, fout, digest, source, start=0, progress=progress)
    return digest.hexdigest()


def _download_with_retries(
    source: Source, url: str, part: Path, retries: int, backoff: float, progress: bool
) -> str:
    """Download `url` into `part`, retrying transient failures; return the sha256 of `part`."""
    for attempt in range(retries + 1):
        try:
            return _download_once(source, url, part, progress)
        except _TransientError as err:
            if attempt == retries:
                raise DownloadError(
                    f"{source.name}: giving up on {url} after {retries + 1} attempts: {err}"
                ) from err
            delay = backoff * 2**attempt
            _say(f"{source.name}: {err}; retrying in {delay:.1f} s", progress)
            time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _download_once(source: Source, url: str, part: Path, progress: bool) -> str:
    """One HTTP attempt; resumes `part` if it holds a prefix of the file. Returns its sha256."""
    have = part.stat().st_size if part.exists() else 0
    if have > source.size:  # cannot be a prefix of the right file: start over
        part.unlink()
        have = 0
    if have == source.size and have > 0:
        return sha256_file(part)  # an earlier attempt got every byte; _verify judges them

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            if have and response.status == 206:
                content_range = response.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {have}-"):
                    part.unlink()  # the server resumed somewhere else: start over next time
                    raise _TransientError(f"unexpected Content-Range {content_range!r} from {url}")
                start = have  # the server resumes where we stopped
            else:
                start = 0  # a plain 200 sends the whole file again: overwrite the partial one
            # Hash while streaming; when resuming, the bytes we already have go first.
            digest = _hash_file(part) if start else hashlib.sha256()
            expected = _expected_body_length(response, source.size - start)
            with part.open("ab" if start else "wb") as fout:
                got = _copy_stream(response.read, fout, digest, source, start, progress)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # our partial file is not a prefix the server agrees with
            part.unlink(missing_ok=True)
            raise _TransientError(f"HTTP 416 for a resumed download of {url}") from err
        if err.code >= 500 or err.code in (408, 429):
            raise _TransientError(f"HTTP {err.code} {err.reason} from {url}") from err
        raise DownloadError(f"{source.name}: HTTP {err.code} {err.reason} for {url}") from err
    except _NETWORK_ERRORS as err:
        reason = getattr(err, "reason", err)
        raise _TransientError(f"connection problem with {url}: {reason}") from err

    if got < expected:  # the server closed the connection before sending everything
        raise _TransientError(f"connection closed after {start + got} of {source.size} bytes")
    return digest.hexdigest()


def _expected_body_length(response: http.client.HTTPResponse, default: int) -> int:
    length = response.headers.get("Content-Length")
    try:
        return int(length) if length is not None else default
    except ValueError:
        return default


# --- copying, hashing, verifying -------------------------------------------------------------


def _copy_stream(
    read: Callable[[int], bytes],
    fout: BinaryIO,
    digest: _Hasher,
    source: Source,
    start: int,
    progress: bool,
) -> int:
    """Copy chunks from `read` to `fout` until EOF, hashing them into `digest` and showing
    progress; return the number of bytes copied."""
    copied = 0
    with _progress(source, start, progress) as advance:
        while chunk := read(CHUNK_SIZE):
            fout.write(chunk)
            digest.update(chunk)
            copied += len(chunk)
            advance(len(chunk))
            if start + copied > source.size:
                break  # more bytes than the file should have: stop, verification will say so
        fout.flush()
        os.fsync(fout.fileno())  # the bytes are on disk before we rename the file into place
    return copied


def _verify(source: Source, part: Path, actual: str) -> None:
    """Check size and sha256 (computed while the bytes streamed in); delete `part` if wrong."""
    size = part.stat().st_size
    if size != source.size:
        part.unlink()
        raise DownloadError(
            f"{source.name}: {source.path} has {size} bytes, expected {source.size}; "
            "the file was deleted"
        )
    if actual != source.sha256:
        part.unlink()
        raise DownloadError(
            f"{source.name}: checksum mismatch for {source.path}: "
            f"expected sha256 {source.sha256}, got {actual}; the file was deleted"
        )


def _hash_file(path: Path) -> _Hasher:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest


# --- progress display --------------------------------------------------------------------------


@contextmanager
def _progress(source: Source, start: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n_bytes)`: a rich bar on a terminal, a few plain lines otherwise."""
    if enabled and sys.stderr.isatty():
        try:
            from rich.console import Console  # only needed for the interactive bar
            from rich.progress import Progress
        except ImportError:
            pass
        else:
            with Progress(console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task(source.name, total=source.size, completed=start)
                yield lambda n: bar.advance(task, n)
            return

    # Plain lines for logs (CI, DVC): one every 25%, so they stay short.
    done = start
    next_report = 0.25

    def advance(n: int) -> None:
        nonlocal done, next_report
        done += n
        fraction = done / source.size if source.size else 1.0
        if fraction >= next_report:
            _say(f"{source.name}: {min(fraction, 1.0):4.0%} of {source.size:,} bytes", enabled)
            next_report = int(fraction * 4) / 4 + 0.25

    yield advance


def _say(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


# --- pretrained checkpoints from the Hugging Face Hub -----------------------------------------

# What bardlet reads of a model repository: the config, the weights, the fast tokenizer.
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json"]
CHECKSUMS = "checksums.json"  # written beside the files: name -> sha256


def fetch_pretrained(repo_id: str, revision: str, dest: Path) -> Path:
    """The Hub repository `repo_id` at `revision` in `dest` (config, safetensors, tokenizer),
    with the sha256 of every file in dest/checksums.json. A folder whose checksums still
    match is kept as it is; offline, a clear error before anything is written."""
    recorded = dest / CHECKSUMS
    if recorded.is_file():
        sums = json.loads(recorded.read_text(encoding="utf-8"))
        if all(
            (dest / name).is_file() and sha256_file(dest / name) == s for name, s in sums.items()
        ):
            return dest
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise DownloadError(
            f"init {repo_id}@{revision} needs the Hugging Face Hub, but HF_HUB_OFFLINE is set "
            "(the Makefile sets it; run `HF_HUB_OFFLINE=0 dvc repro` online), or put the "
            "model's folder under data/pretrained/ and set init to that folder"
        )
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, revision=revision, local_dir=dest, allow_patterns=HUB_FILES)
    except Exception as error:  # noqa: BLE001 (network, auth, unknown repo or revision)
        raise DownloadError(
            f"could not download {repo_id}@{revision} from the Hugging Face Hub: "
            f"{str(error).splitlines()[0][:200]}"
        ) from None
    files = sorted(p for p in dest.iterdir() if p.is_file() and p.name != CHECKSUMS)
    write_json_atomic(recorded, {p.name: sha256_file(p) for p in files})
    return dest
