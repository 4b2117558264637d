"""Tests for bardlet.data.sources: the real HTTP code path against a loopback server."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bardlet.data.sources import (
    MIRROR_ENV,
    OASST1_EN_VALIDATION,
    OASST1_FULL,
    OASST1_REVISION,
    SOURCES,
    DownloadError,
    Source,
    fetch,
    oasst1_sources,
)

MIRROR_DIR = Path(
    os.environ.get(MIRROR_ENV) or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)

# A file big enough to span several 64 KiB chunks, with bytes that are not all alike.
BODY = bytes(range(256)) * 800  # 204,800 bytes
BODY_SHA = hashlib.sha256(BODY).hexdigest()


def get(source: Source, dest_dir: Path, mirror: str | None = None, retries: int = 4) -> Path:
    """`fetch` with tiny retry delays and no progress output, so the tests stay fast."""
    return fetch(source, dest_dir, mirror=mirror, retries=retries, progress=False, backoff=0.001)


@dataclass
class Behaviour:
    """How the server answers requests for one path, request after request."""

    # One entry per request: "ok", "truncate", "drop_half", "corrupt", "500", "404", "no_range".
    # The last entry repeats for any further requests.
    script: list[str]
    body: bytes = BODY
    requests: list[dict[str, str | None]] = field(default_factory=list)


class Server:
    """A loopback HTTP server whose answers are scripted per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Behaviour] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                behaviour = routes.get(self.path)
                if behaviour is None:
                    self.send_error(404)
                    return
                n = len(behaviour.requests)
                step = behaviour.script[min(n, len(behaviour.script) - 1)]
                behaviour.requests.append({"step": step, "range": self.headers.get("Range")})
                body = behaviour.body
                if step == "404":
                    self.send_error(404)
                elif step == "500":
                    self.send_error(500)
                elif step == "truncate":
                    # Promise the whole file, send a third, then close the connection.
                    self._headers(200, len(body))
                    self.wfile.write(body[: len(body) // 3])
                    self.close_connection = True
                elif step == "drop_half":
                    self._headers(200, len(body))
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                elif step == "corrupt":
                    bad = bytearray(body)
                    bad[len(bad) // 2] ^= 0xFF
                    self._headers(200, len(bad))
                    self.wfile.write(bytes(bad))
                elif step == "no_range":
                    # A server that ignores Range and always sends the whole file.
                    self._headers(200, len(body))
                    self.wfile.write(body)
                else:  # "ok": honours Range like a real static file server
                    range_header = self.headers.get("Range")
                    if range_header and range_header.startswith("bytes="):
                        start = int(range_header[len("bytes=") :].split("-")[0])
                        self.send_response(206)
                        self.send_header(
                            "Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"
                        )
                        self.send_header("Content-Length", str(len(body) - start))
                        self.end_headers()
                        self.wfile.write(body[start:])
                    else:
                        self._headers(200, len(body))
                        self.wfile.write(body)

            def _headers(self, status: int, length: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(length))
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def add(self, path: str, *script: str, body: bytes = BODY) -> tuple[Source, Behaviour]:
        behaviour = Behaviour(list(script), body)
        self.routes["/" + path] = behaviour
        source = Source(
            name=path.split("/")[0],
            path=path,
            url=f"{self.base}/{path}",
            sha256=hashlib.sha256(body).hexdigest(),
            size=len(body),
        )
        return source, behaviour


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def no_mirror_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests decide the mirror themselves; an outer BARDLET_DATA_MIRROR must not leak in.
    monkeypatch.delenv(MIRROR_ENV, raising=False)


def leftovers(dest_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(dest_dir)) for p in dest_dir.rglob("*") if p.is_file())


def test_good_file(server: Server, tmp_path: Path) -> None:
    source, behaviour = server.add("good/file.bin", "ok")
    path = get(source, tmp_path)
    assert path == tmp_path / "good" / "file.bin"
    assert path.read_bytes() == BODY
    assert leftovers(tmp_path) == ["good/file.bin"]  # no .part left behind
    assert len(behaviour.requests) == 1


def test_progress_output_does_not_break_download(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = server.add("good/file.bin", "ok")
    fetch(source, tmp_path, backoff=0.001, progress=True)
    assert "100%" in capsys.readouterr().err  # not a tty under pytest: plain lines


def test_already_present_file_is_not_downloaded_again(server: Server, tmp_path: Path) -> None:
    source, behaviour = server.add("good/file.bin", "ok")
    get(source, tmp_path)
    mtime = (tmp_path / source.path).stat().st_mtime_ns
    get(source, tmp_path)
    assert len(behaviour.requests) == 1
    assert (tmp_path / source.path).stat().st_mtime_ns == mtime


def test_present_but_wrong_file_is_replaced(server: Server, tmp_path: Path) -> None:
    source, behaviour = server.add("good/file.bin", "ok")
    (tmp_path / "good").mkdir()
    (tmp_path / source.path).write_bytes(b"stale")
    assert get(source, tmp_path).read_bytes() == BODY
    assert len(behaviour.requests) == 1


def test_truncated_every_time_gives_up_after_retries(server: Server, tmp_path: Path) -> None:
    # The server never sends Range answers here ("truncate" ignores Range), so no progress is made.
    source, behaviour = server.add("trunc/file.bin", "truncate")
    with pytest.raises(DownloadError, match=r"after 3 attempts.*connection closed"):
        get(source, tmp_path, retries=2)
    assert len(behaviour.requests) == 3
    assert not (tmp_path / source.path).exists()


def test_truncated_then_resumed(server: Server, tmp_path: Path) -> None:
    source, behaviour = server.add("trunc/file.bin", "truncate", "ok")
    assert get(source, tmp_path).read_bytes() == BODY
    assert behaviour.requests[1]["range"] == f"bytes={len(BODY) // 3}-"


def test_dropped_connection_resumes_with_range(server: Server, tmp_path: Path) -> None:
    source, behaviour = server.add("drop/file.bin", "drop_half", "ok")
    path = get(source, tmp_path)
    assert path.read_bytes() == BODY
    assert [r["range"] for r in behaviour.requests] == [None, f"bytes={len(BODY) // 2}-"]
    assert leftovers(tmp_path) == ["drop/file.bin"]


def test_resume_restarts_from_zero_when_server_ignores_range(
    server: Server, tmp_path: Path
) -> None:
    source, behaviour = server.add("drop/file.bin", "drop_half", "no_range")
    assert get(source, tmp_path).read_bytes() == BODY
    assert behaviour.requests[1]["range"] == f"bytes={len(BODY) // 2}-"  # asked, got a 200


def test_partial_file_from_an_earlier_run_is_resumed(server: Server, tmp_path: Path) -> None:
    source, behaviour = server.add("drop/file.bin", "ok")
    (tmp_path / "drop").mkdir()
    (tmp_path / "drop" / "file.bin.part").write_bytes(BODY[:1000])
    assert get(source, tmp_path).read_bytes() == BODY
    assert behaviour.requests[0]["range"] == "bytes=1000-"


def test_bad_partial_file_fails_cleanly_then_next_run_succeeds(
    server: Server, tmp_path: Path
) -> None:
    # A .part left by an earlier run of some other version of the file: resuming it gives
    # wrong bytes, which the checksum catches; the .part is gone, so the next run starts fresh.
    source, _ = server.add("drop/file.bin", "ok")
    (tmp_path / "drop").mkdir()
    (tmp_path / "drop" / "file.bin.part").write_bytes(b"x" * 1000)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        get(source, tmp_path)
    assert leftovers(tmp_path) == []
    assert get(source, tmp_path).read_bytes() == BODY


def test_complete_partial_file_needs_no_request(server: Server, tmp_path: Path) -> None:
    source, behaviour = server.add("drop/file.bin", "ok")
    (tmp_path / "drop").mkdir()
    (tmp_path / "drop" / "file.bin.part").write_bytes(BODY)
    assert get(source, tmp_path).read_bytes() == BODY
    assert behaviour.requests == []
    assert leftovers(tmp_path) == ["drop/file.bin"]


def test_500_then_200_is_retried(server: Server, tmp_path: Path) -> None:
    source, behaviour = server.add("flaky/file.bin", "500", "ok")
    assert get(source, tmp_path).read_bytes() == BODY
    assert [r["step"] for r in behaviour.requests] == ["500", "ok"]


def test_500_forever_gives_up(server: Server, tmp_path: Path) -> None:
    source, behaviour = server.add("down/file.bin", "500")
    with pytest.raises(DownloadError, match=r"after 5 attempts.*HTTP 500"):
        get(source, tmp_path)  # default retries=4: 5 attempts in all
    assert len(behaviour.requests) == 5


def test_404_is_not_retried_and_names_the_url(server: Server, tmp_path: Path) -> None:
    source, behaviour = server.add("missing/file.bin", "404")
    with pytest.raises(DownloadError, match="404") as excinfo:
        get(source, tmp_path)
    assert source.url in str(excinfo.value)
    assert len(behaviour.requests) == 1
    assert leftovers(tmp_path) == []


def test_refused_connection_is_retried_then_fails(tmp_path: Path) -> None:
    # Bind a port and close it again: nothing listens there any more.
    s = Server()
    base = s.base
    s.httpd.server_close()
    source = Source("nobody", "nobody/file.bin", f"{base}/nobody/file.bin", BODY_SHA, len(BODY))
    with pytest.raises(DownloadError, match="after 2 attempts"):
        get(source, tmp_path, retries=1)


def test_wrong_checksum_leaves_no_file_and_names_both_hashes(
    server: Server, tmp_path: Path
) -> None:
    source, _ = server.add("corrupt/file.bin", "corrupt")
    bad = bytearray(BODY)
    bad[len(bad) // 2] ^= 0xFF
    actual = hashlib.sha256(bytes(bad)).hexdigest()
    with pytest.raises(DownloadError) as excinfo:
        get(source, tmp_path)
    message = str(excinfo.value)
    assert source.path in message and source.sha256 in message and actual in message
    assert leftovers(tmp_path) == []  # neither the file nor its .part


def test_wrong_size_leaves_no_file(server: Server, tmp_path: Path) -> None:
    source, _ = server.add("big/file.bin", "ok")
    smaller = Source(source.name, source.path, source.url, source.sha256, source.size - 10)
    with pytest.raises(DownloadError, match="bytes, expected"):
        get(smaller, tmp_path)
    assert leftovers(tmp_path) == []


def test_mirror_as_http_url(server: Server, tmp_path: Path) -> None:
    # The source's own URL is dead; the mirror serves the same relative path.
    _, behaviour = server.add("mirror/ts/input.txt", "ok")
    source = Source("ts", "ts/input.txt", "http://127.0.0.1:9/dead", BODY_SHA, len(BODY))
    path = get(source, tmp_path / "raw", mirror=f"{server.base}/mirror/")
    assert path.read_bytes() == BODY
    assert len(behaviour.requests) == 1


def test_mirror_as_directory(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "ts").mkdir(parents=True)
    (mirror / "ts" / "input.txt").write_bytes(BODY)
    source = Source("ts", "ts/input.txt", "http://127.0.0.1:9/dead", BODY_SHA, len(BODY))
    path = get(source, tmp_path / "raw", mirror=str(mirror))
    assert path == tmp_path / "raw" / "ts" / "input.txt"
    assert path.read_bytes() == BODY
    assert leftovers(tmp_path / "raw") == ["ts/input.txt"]


def test_mirror_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "ts").mkdir(parents=True)
    (mirror / "ts" / "input.txt").write_bytes(BODY)
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    source = Source("ts", "ts/input.txt", "http://127.0.0.1:9/dead", BODY_SHA, len(BODY))
    assert get(source, tmp_path / "raw").read_bytes() == BODY


def test_missing_mirror_file_names_path_and_env_var(tmp_path: Path) -> None:
    source = Source("ts", "ts/input.txt", "http://127.0.0.1:9/dead", BODY_SHA, len(BODY))
    with pytest.raises(DownloadError) as excinfo:
        get(source, tmp_path / "raw", mirror=str(tmp_path / "empty"))
    message = str(excinfo.value)
    assert str(tmp_path / "empty" / "ts" / "input.txt") in message
    assert MIRROR_ENV in message


def test_corrupt_mirror_file_leaves_no_file(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "ts").mkdir(parents=True)
    (mirror / "ts" / "input.txt").write_bytes(BODY[:-1] + b"?")
    source = Source("ts", "ts/input.txt", "http://127.0.0.1:9/dead", BODY_SHA, len(BODY))
    with pytest.raises(DownloadError, match=BODY_SHA):
        get(source, tmp_path / "raw", mirror=str(mirror))
    assert leftovers(tmp_path / "raw") == []


@pytest.mark.parametrize("bad_path", ["/etc/passwd", "../escape.txt", "a/../../b", ""])
def test_source_paths_cannot_escape(bad_path: str) -> None:
    with pytest.raises(ValueError, match="relative"):
        Source("bad", bad_path, "http://example.invalid/x", BODY_SHA, 1)


@pytest.mark.skipif(not MIRROR_DIR.is_dir(), reason="shared data mirror not available")
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_known_sources_match_the_shared_mirror(name: str, tmp_path: Path) -> None:
    source = SOURCES[name]
    if source in OASST1_FULL:
        pytest.skip("the full OASST1 release is not in the offline mirror")
    path = fetch(source, tmp_path, mirror=str(MIRROR_DIR), progress=False)
    assert path.stat().st_size == source.size


def test_full_oasst1_release_is_pinned_to_one_revision() -> None:
    assert oasst1_sources(full=False) == (OASST1_EN_VALIDATION,)
    assert oasst1_sources(full=True) == OASST1_FULL
    prefix = f"https://huggingface.co/datasets/OpenAssistant/oasst1/resolve/{OASST1_REVISION}/"
    for source in OASST1_FULL:
        assert SOURCES[source.name] is source
        assert source.url.startswith(prefix)
        # A mirror laid out like the dataset repository serves the same relative path.
        assert "oasst1/" + source.url.removeprefix(prefix) == source.path
        assert source.path.endswith(".parquet")
    assert {s.size for s in OASST1_FULL} == {39_516_251, 2_080_179}
    assert len({s.sha256 for s in OASST1_FULL}) == 2
