"""The chat page in a real headless Chromium: type a message, watch the reply stream into the
page, stop a long reply with the Stop button. Screenshots go to the test's tmp dir.

Needs Debian's `chromium` (or BARDLET_CHROMIUM=/path/to/chrome) and Playwright's Python package;
Playwright's own browser download is never used. Without either, these tests skip."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest_server import Server, build_tiny_model

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs Playwright's Python package (pip install playwright)"
)

CHROMIUM = os.environ.get("BARDLET_CHROMIUM") or next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs a Chromium binary (apt-get install chromium)"
)

ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A long context, so a reply can run for a few seconds: time to watch it grow and to stop it.
CONTEXT = 2048
WAIT_MS = 60_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_tokenizer):
    # Wide enough that a 2,048-token reply takes seconds even on a fast runtime.
    folder = build_tiny_model(
        tmp_path_factory.mktemp("browser"), small_tokenizer, CONTEXT, n_embd=192, logit_scale=50
    )
    served = Server(folder / "model.onnx")
    try:
        served.wait_healthy()
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=WAIT_MS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server):
    """The chat page, loaded, with its settings fetched; records every script error."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    tab.errors = []  # type: ignore[attr-defined]
    tab.on("pageerror", lambda error: tab.errors.append(f"pageerror: {error}"))
    tab.on(
        "console",
        lambda msg: msg.type == "error" and tab.errors.append(f"console: {msg.text}"),
    )
    tab.on(
        "response",
        lambda r: r.status >= 400 and tab.errors.append(f"HTTP {r.status}: {r.url}"),
    )
    tab.on("requestfailed", lambda r: tab.errors.append(f"failed: {r.url} {r.failure}"))
    response = tab.goto(server.url + "/")
    assert response is not None and response.ok
    tab.locator("#style option").first.wait_for(state="attached")
    yield tab
    context.close()


def wait_until(condition, what: str) -> None:
    """Poll from Python: the page's CSP forbids the eval that `page.wait_for_function` uses."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_MS / 1000} s waiting for {what}")
        time.sleep(0.03)


def assistant_text(page) -> str:
    return page.locator("#log .msg.assistant").last.text_content() or ""


def is_streaming(page) -> bool:
    return page.locator("#log .msg.assistant.streaming").count() > 0


def screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, (path, len(data))


def test_a_typed_message_gets_a_streamed_reply(page, tmp_path):
    assert "bardlet" in page.locator("#model").text_content()
    # Throttled, so the reply reaches the page over seconds however fast the machine writes
    # it: on a fast CI runner an unthrottled reply arrived whole between two samples.
    slow_network(page, 8_000)
    page.fill("#max-tokens", "200")
    page.fill("#input", "Good morrow, gentle friend!")
    page.click("#send")
    page.wait_for_selector("#log .msg.user")
    assert page.locator("#log .msg.user").text_content() == "Good morrow, gentle friend!"
    assert page.input_value("#input") == ""

    # Sample the assistant bubble while it streams: it must show text before it is done,
    # and each sample must extend the one before.
    samples: list[str] = []
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        streaming = is_streaming(page)
        text = assistant_text(page)
        if text and (not samples or text != samples[-1]):
            samples.append(text)
        if not streaming and page.locator("#log .msg.assistant").count():
            break
        time.sleep(0.03)
    else:
        pytest.fail(f"the reply did not finish in {WAIT_MS / 1000} s: {samples[-1:]}")
    final = assistant_text(page)
    assert final.strip(), "the assistant bubble is empty"
    assert len(samples) >= 3, f"the reply did not grow piece by piece: {samples}"
    for before, after in zip(samples, samples[1:], strict=False):
        assert after.startswith(before) and len(after) > len(before)
    assert final.startswith(samples[-1])
    bubble = page.locator("#log .msg.assistant").last
    assert "error" not in (bubble.get_attribute("class") or ""), final
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    assert page.errors == []
    screenshot(page, tmp_path / "chat.png")


def slow_network(page, bytes_per_second: int) -> None:
    """Chromium's own network throttling (DevTools protocol): a reply the server writes in two
    seconds then reaches the page over many, so Stop is always clicked mid-stream."""
    devtools = page.context.new_cdp_session(page)
    devtools.send("Network.enable")
    devtools.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": bytes_per_second,
            "uploadThroughput": -1,
        },
    )


def test_stop_ends_a_long_reply(page, tmp_path):
    slow_network(page, 8_000)  # each streamed token is ~150 bytes of SSE: ~50 tokens a second
    page.fill("#max-tokens", str(CONTEXT))
    page.fill("#input", "Tell me a very long tale.")
    page.press("#input", "Enter")  # Enter sends too
    page.wait_for_selector("#log .msg.assistant")
    wait_until(lambda: assistant_text(page), "the first words of the reply")
    assert page.is_enabled("#stop") and page.is_disabled("#send")
    assert is_streaming(page), "the reply finished before Stop could be clicked"
    page.click("#stop")
    wait_until(lambda: not is_streaming(page), "the reply to stop")
    assert page.text_content("#status") == "(stopped)"
    stopped = assistant_text(page)
    assert stopped.strip()
    time.sleep(0.5)
    assert assistant_text(page) == stopped, "text kept arriving after Stop"
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    bubble = page.locator("#log .msg.assistant").last
    assert "error" not in (bubble.get_attribute("class") or ""), stopped
    screenshot(page, tmp_path / "stopped.png")

    # The conversation goes on after a stop: the next message gets a reply too.
    page.fill("#max-tokens", "20")
    page.fill("#input", "Then say farewell.")
    page.click("#send")
    wait_until(lambda: page.locator("#log .msg.assistant").count() == 2, "a second reply")
    wait_until(lambda: not is_streaming(page), "the second reply to finish")
    assert assistant_text(page).strip()
    # Stop aborts the fetch: that one cancelled request is the only failure allowed.
    aborted = [e for e in page.errors if e.endswith("/v1/chat/completions net::ERR_ABORTED")]
    assert len(aborted) == 1 and [e for e in page.errors if e not in aborted] == []


def test_a_reply_shows_its_sources_as_citations_never_as_markup(
    browser, tmp_path_factory, small_tokenizer, tmp_path
):
    """`bardlet serve --docs`: the passages a reply was given are listed under it by file and
    line; a document's own markup stays text."""
    from bardlet.retrieval.index import build_index

    root = tmp_path_factory.mktemp("sources")
    folder = build_tiny_model(root / "onnx", small_tokenizer, 256)
    docs = root / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text(
        "Brew green tea for two minutes.\nSteep <img src=x onerror=alert(1)> gently.\n"
    )
    index = root / "docs.sqlite"
    build_index(index, [docs], lambda t: len(small_tokenizer.encode(t)), small_tokenizer.hash)
    served = Server(folder / "model.onnx", "--docs", str(index))
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.set_default_timeout(WAIT_MS)
    try:
        served.wait_healthy()
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        tab.goto(served.url + "/")
        tab.locator("#style option").first.wait_for(state="attached")
        tab.fill("#max-tokens", "8")
        tab.fill("#input", "how long should green tea brew?")
        tab.click("#send")
        tab.wait_for_selector("#log ol.sources li")
        items = tab.locator("#log ol.sources li")
        assert items.count() == 1
        assert items.first.text_content() == f"{docs.as_posix()}/tea.md:1-2"
        assert "<img" in (items.first.get_attribute("title") or "")  # the text, as text
        assert tab.locator("#log img").count() == 0
        assert errors == []
        screenshot(tab, tmp_path / "sources.png")
    finally:
        context.close()
        served.stop()
