"""The chat page in a real headless Chromium: type a message, watch the reply stream into the
page, stop a long reply with the Stop button. Screenshots go to the test's tmp dir.

Needs Debian's `chromium` (or BARDLET_CHROMIUM=/path/to/chrome) and Playwright's Python package;
Playwright's own browser download is never used. Without either, these tests skip."""

from __future__ import annotations

import json
import os
import re
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


def stored_messages(page) -> list[dict]:
    """The current conversation as the page keeps it in localStorage."""
    origins = page.context.storage_state()["origins"]
    items = {i["name"]: i["value"] for o in origins for i in o["localStorage"]}
    store = json.loads(items["bardlet-chats"])
    return store["chats"][store["current"]]["messages"]


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
        text = assistant_text(page)
        streaming = is_streaming(page)  # still streaming after the read: a plain-text sample
        if streaming and text and (not samples or text != samples[-1]):
            samples.append(text)
        if not streaming and page.locator("#log .msg.assistant").count():
            break
        time.sleep(0.03)
    else:
        pytest.fail(f"the reply did not finish in {WAIT_MS / 1000} s: {samples[-1:]}")
    final = stored_messages(page)[-1]["content"]  # shown as Markdown: the text as written
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


# ---------------------------------------------------------------- the page's features

MARKDOWN_REPLY = (
    "Here is **bold**, *emphasis* and `code`.\n\n- one\n- two\n\n1. first\n2. second\n\n"
    "```python\nprint('<b>hi</b>')\n```\n\nAnd <img src=x onerror=alert(1)><script>alert(2)</script>"
)


def open_page(browser, server, width: int, *, stored: dict | None = None, dark: bool = False):
    """A fresh browser context at `width` px (390 is a phone), with a saved conversation store
    if given; returns (page, errors)."""
    state = None
    if stored is not None:
        value = json.dumps(stored)
        entry = {"name": "bardlet-chats", "value": value}
        state = {"cookies": [], "origins": [{"origin": server.url, "localStorage": [entry]}]}
    context = browser.new_context(
        viewport={"width": width, "height": 800},
        storage_state=state,
        color_scheme="dark" if dark else "light",
    )
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    tab.on("console", lambda msg: msg.type == "error" and errors.append(f"console: {msg.text}"))
    tab.goto(server.url + "/")
    tab.locator("#style option").first.wait_for(state="attached")
    return tab, errors


def saved(*conversations: tuple[str, str, list[dict]]) -> dict:
    chats = {
        cid: {"id": cid, "title": title, "messages": messages, "updated": 1000 - i}
        for i, (cid, title, messages) in enumerate(conversations)
    }
    return {"current": conversations[0][0], "chats": chats}


def show(page, drawer: str) -> None:
    """Open the `chats` or `settings` drawer when the page has drawers (a phone); no-op wide."""
    toggle = page.locator(f"#open-{drawer}")
    if toggle.is_visible() and toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
        wait_until(lambda: slid_in(page, drawer), f"the {drawer} drawer to slide in")


def slid_in(page, drawer: str) -> bool:
    """The drawer is open and wholly on screen (its slide has ended)."""
    box = page.locator(f"#{drawer}").bounding_box()
    width = page.viewport_size["width"]
    return box is not None and box["x"] > -0.5 and box["x"] + box["width"] < width + 0.5


def finish_reply(page, count: int) -> None:
    wait_until(lambda: page.locator("#log .msg.assistant").count() == count, f"reply {count}")
    wait_until(lambda: not is_streaming(page), "the reply to finish")
    page.wait_for_selector(f"#log .meta.assistant >> nth={count - 1}")


@pytest.mark.parametrize("width", [1280, 390])
def test_replies_render_as_markdown_and_never_as_markup(browser, server, tmp_path, width):
    stored = saved(
        ("a", "", [{"role": "user", "content": "<b>not bold</b>"},
                   {"role": "assistant", "content": MARKDOWN_REPLY}]),
    )  # fmt: skip
    page, errors = open_page(browser, server, width, stored=stored)
    reply = page.locator("#log .msg.assistant").last
    assert reply.locator("strong").text_content() == "bold"
    assert reply.locator("em").text_content() == "emphasis"
    assert reply.locator("p code").text_content() == "code"
    assert reply.locator("ul li").all_text_contents() == ["one", "two"]
    assert reply.locator("ol li").all_text_contents() == ["first", "second"]
    assert reply.locator("pre code").text_content() == "print('<b>hi</b>')"
    assert reply.locator("pre code").get_attribute("data-language") == "python"
    # Markup in a reply or a message is text: no element came from it.
    assert page.locator("#log img, #log script, #log b").count() == 0
    assert "<img src=x onerror=alert(1)><script>alert(2)</script>" in reply.text_content()
    assert page.locator("#log .msg.user").text_content() == "<b>not bold</b>"
    assert errors == []
    screenshot(page, tmp_path / f"markdown-{width}.png")
    page.context.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_conversations_persist_and_can_be_switched_renamed_and_deleted(
    browser, server, tmp_path, width
):
    stored = saved(
        ("a", "", [{"role": "user", "content": "first chat"},
                   {"role": "assistant", "content": "reply one"}]),
        ("b", "Named", [{"role": "user", "content": "second chat"},
                        {"role": "assistant", "content": "reply two"}]),
    )  # fmt: skip
    page, errors = open_page(browser, server, width, stored=stored)
    show(page, "chats")
    titles = page.locator("#chat-list .open")
    assert titles.all_text_contents() == ["first chat", "Named"]
    assert page.locator("#log .msg.user").text_content() == "first chat"
    titles.nth(1).click()
    assert page.locator("#log .msg.user").text_content() == "second chat"
    assert titles.nth(1).get_attribute("aria-current") == "true"
    page.reload()  # what was open stays open
    page.locator("#style option").first.wait_for(state="attached")
    assert page.locator("#log .msg.user").text_content() == "second chat"
    show(page, "chats")

    page.once("dialog", lambda dialog: dialog.accept("Renamed"))
    page.locator("#chat-list .rename").nth(1).click()
    assert page.locator("#chat-list .open").all_text_contents() == ["first chat", "Renamed"]
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#chat-list .delete").nth(1).click()
    assert page.locator("#chat-list .open").all_text_contents() == ["first chat"]
    assert page.locator("#log .msg.user").text_content() == "first chat"

    page.click("#clear")  # a new conversation; the old one stays in the list
    assert page.locator("#log .msg").count() == 0
    show(page, "settings")
    page.fill("#max-tokens", "6")
    page.keyboard.press("Escape")
    page.fill("#input", "a third one")
    page.press("#input", "Enter")
    finish_reply(page, 1)
    assert page.locator("#chat-list .open").all_text_contents() == ["a third one", "first chat"]
    assert [m["role"] for m in stored_messages(page)] == ["user", "assistant"]
    assert errors == []
    show(page, "chats")
    screenshot(page, tmp_path / f"conversations-{width}.png")
    page.context.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_settings_are_sent_and_seeded_regenerate_repeats_and_edit_resends(
    browser, server, tmp_path, width
):
    page, errors = open_page(browser, server, width)
    sent: list[dict] = []
    page.on(
        "request",
        lambda r: r.url.endswith("/v1/chat/completions") and sent.append(json.loads(r.post_data)),
    )
    styles = page.locator("#style option").all_text_contents()
    show(page, "settings")
    page.select_option("#style", styles[-1])
    page.fill("#top-k", "7")
    page.fill("#seed", "42")
    page.fill("#max-tokens", "12")
    page.keyboard.press("Escape")
    page.fill("#input", "Speak, friend.")
    page.press("#input", "Enter")
    finish_reply(page, 1)
    assert sent[-1]["top_k"] == 7 and sent[-1]["seed"] == 42 and sent[-1]["max_tokens"] == 12
    first = stored_messages(page)[-1]["content"]
    stats = page.locator("#log .meta.assistant .stats").last.text_content()
    assert re.fullmatch(r"\d+ tokens · \d+ tokens/s", stats), stats

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("#log .meta.assistant button.copy")
    wait_until(lambda: page.text_content("#log .meta.assistant button.copy") != "Copy", "copy")
    assert page.text_content("#log .meta.assistant button.copy") == "Copied"
    assert page.evaluate("navigator.clipboard.readText()") == first

    page.click("#log .meta.assistant button.regenerate")  # same seed: the same reply again
    finish_reply(page, 1)
    assert [m["content"] for m in stored_messages(page)] == ["Speak, friend.", first]
    assert len(sent) == 2 and sent[1]["messages"] == sent[0]["messages"]

    page.click("#log .meta.user button.edit")  # the message returns to the box, then resent
    assert page.input_value("#input") == "Speak, friend."
    assert page.locator("#log .msg").count() == 0
    page.fill("#input", "Speak again.")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    assert page.locator("#log .msg").count() == 0
    page.click("#send")
    finish_reply(page, 1)
    assert [m["role"] for m in stored_messages(page)] == ["user", "assistant"]
    assert stored_messages(page)[0]["content"] == "Speak again."
    assert sent[-1]["messages"][-1] == {"role": "user", "content": "Speak again."}
    assert errors == []
    screenshot(page, tmp_path / f"actions-{width}.png")
    page.context.close()


def test_a_style_sets_every_sampling_control(browser, server):
    page, errors = open_page(browser, server, 1280)
    styles = json.loads(page.context.request.get(server.url + "/v1/styles").text())["data"]
    for style in styles:
        page.select_option("#style", style["id"])
        assert float(page.input_value("#temperature")) == pytest.approx(style["temperature"])
        assert int(page.input_value("#top-k")) == style["top_k"]
        assert float(page.input_value("#top-p")) == pytest.approx(style["top_p"])
        assert page.input_value("#seed") == ("" if style["seed"] is None else str(style["seed"]))
    assert errors == []
    page.context.close()


def test_on_a_phone_settings_and_conversations_are_drawers(browser, server, tmp_path):
    page, errors = open_page(browser, server, 390)
    assert not page.is_visible("#temperature")  # the drawer is closed
    assert page.is_visible("#input") and page.is_visible("#send")
    composer = page.locator("#input").bounding_box()
    assert composer is not None and composer["width"] > 250  # the box uses the width
    screenshot(page, tmp_path / "phone.png")

    show(page, "settings")
    assert page.get_attribute("#open-settings", "aria-expanded") == "true"
    assert page.is_visible("#temperature")
    field = page.locator("#style").bounding_box()
    assert field is not None and field["width"] > 250  # no squeezed 95 px column
    screenshot(page, tmp_path / "phone-settings.png")
    page.keyboard.press("Escape")
    wait_until(lambda: not page.is_visible("#temperature"), "the settings drawer to close")

    show(page, "chats")
    assert page.is_visible("#clear")
    screenshot(page, tmp_path / "phone-chats.png")
    page.click("#backdrop", position={"x": 380, "y": 400})
    wait_until(lambda: not page.is_visible("#clear"), "the conversations drawer to close")
    assert errors == []
    page.context.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_dark_mode_reaches_the_inputs_and_every_field_has_a_label(browser, server, tmp_path, width):
    page, errors = open_page(browser, server, width, dark=True)
    show(page, "settings")
    for selector in ("#input", "#system", "#style", "#max-tokens", "#seed"):
        background = page.locator(selector).evaluate("e => getComputedStyle(e).backgroundColor")
        channels = [int(c) for c in re.findall(r"\d+", background)[:3]]
        assert max(channels) < 100, (selector, background)  # dark, not the default white
    fields = page.locator("input, select, textarea")
    for i in range(fields.count()):
        assert fields.nth(i).evaluate("e => e.labels.length") > 0, fields.nth(i).get_attribute("id")
    assert page.get_attribute("#log", "aria-live") == "polite"
    assert errors == []
    screenshot(page, tmp_path / f"dark-{width}.png")
    page.context.close()
