"""The `web` stage: models/web served by a plain static server runs the chatbot in headless
Chromium with every other host blocked: the JavaScript tokenizer and chat template give
Python's ids, greedy decoding with the KV cache gives the Python runtime's tokens, and a typed
message gets a reply. The runtime files come from the mirror, checked by sha256."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest_server import build_tiny_model, free_port
from test_tokenizer import MIXED_TEXT
from test_web_browser import ARGS, CHROMIUM, WAIT_MS, screenshot, sync_api, wait_until

from bardlet.data.chat_template import render_prompt
from bardlet.data.sources import DownloadError
from bardlet.export import quantize_int8
from bardlet.runtime.sampling import Sampling
from bardlet.runtime.session import OnnxLM
from stages.web import ORT_WEB, build_web

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium binary")

TEXTS = [
    "ROMEO: Who art thou, that, bescreen'd in night, so stumblest on my counsel?",
    "I'll say they're here; we've done it, don't you?  Spaces   and\ttabs\n\n\nlines",
    MIXED_TEXT,
    "<|user|> is text here, not a marker",
    "",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, small_tokenizer) -> Path:
    folder = build_tiny_model(tmp_path_factory.mktemp("webmodel"), small_tokenizer, logit_scale=4.0)
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx")
    return folder


@pytest.fixture(scope="module")
def site(model_dir, tmp_path_factory, mirror):
    """models/web built from the mirror, served by `python -m http.server` on loopback."""
    web = build_web(model_dir, tmp_path_factory.mktemp("site") / "web", str(mirror))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "-d", str(web), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/model.json", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the static server did not start"
                time.sleep(0.1)
        yield web, url
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def page(site):
    web, url = site
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=WAIT_MS)
        context = browser.new_context(viewport={"width": 1000, "height": 700})
        context.set_default_timeout(WAIT_MS)
        elsewhere: list[str] = []

        def only_this_host(route) -> None:  # the page may load nothing from anywhere else
            if route.request.url.startswith(url + "/"):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        context.route("**/*", only_this_host)
        tab = context.new_page()
        tab.errors = []  # type: ignore[attr-defined]
        tab.elsewhere = elsewhere  # type: ignore[attr-defined]
        tab.on("pageerror", lambda error: tab.errors.append(str(error)))
        tab.on("console", lambda m: m.type == "error" and tab.errors.append(m.text))
        tab.goto(url + "/")
        wait_until(lambda: "loaded in" in (tab.text_content("#status") or ""), "the model")
        yield tab
        browser.close()


def test_the_folder_has_the_page_the_model_and_the_pinned_runtime(site, model_dir):
    web, _ = site
    names = {p.relative_to(web).as_posix() for p in web.rglob("*") if p.is_file()}
    assert names == {
        "index.html", "chat.js", "bpe.js", "style.css", "model.json", "bpe.json",
        "model.onnx", "model.int8.onnx", "ort/ort.wasm.min.mjs",
        "ort/ort-wasm-simd-threaded.mjs", "ort/ort-wasm-simd-threaded.wasm",
    }  # fmt: skip
    assert (web / "model.onnx").read_bytes() == (model_dir / "model.onnx").read_bytes()
    info = json.loads((web / "model.json").read_text())
    assert (info["n_layer"], info["cache_heads"], info["head_dim"], info["block_size"]) == (
        2, 2, 16, 64,
    )  # fmt: skip


def test_javascript_tokenizer_and_template_give_pythons_ids(page, small_tokenizer):
    for text in TEXTS:
        ours = page.evaluate("text => window.bardlet.model.bpe.encode(text)", text)
        assert ours == small_tokenizer.encode(text), text
    messages = [
        {"role": "user", "content": "Who art thou?"},
        {"role": "assistant", "content": "A friend, good sir."},
        {"role": "user", "content": "Then speak!"},
    ]
    for system in (None, "Answer in verse."):
        ours = page.evaluate(
            "([m, s]) => window.bardlet.renderPrompt(window.bardlet.model.bpe, m, s)",
            [messages, system],
        )
        assert ours == render_prompt(small_tokenizer, messages, system)


def test_greedy_decoding_in_the_browser_gives_the_python_runtimes_tokens(page, model_dir):
    lm = OnnxLM(model_dir)
    stops = sorted(lm.tokenizer.special_tokens.values())
    for text in ("ROMEO:", "Who art thou?"):
        prompt = render_prompt(lm.tokenizer, [{"role": "user", "content": text}])
        expected = list(lm.stream(prompt, 20, Sampling(temperature=0), stops))
        ours = page.evaluate(
            """async (prompt) => {
                const ids = [];
                for await (const id of window.bardlet.model.generate(prompt, 20)) ids.push(id);
                return ids;
            }""",
            prompt,
        )
        assert ours == expected and len(ours) == 20, text


def test_a_typed_message_gets_a_reply_and_nothing_loads_from_elsewhere(page, tmp_path):
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "12")
    page.fill("#input", "Good morrow!")
    page.press("#input", "Enter")
    page.wait_for_selector("#log .msg.assistant")
    wait_until(lambda: page.locator("#log .msg.streaming").count() == 0, "the reply")
    assert (page.locator("#log .msg.assistant").text_content() or "").strip()
    assert "tokens/s" in (page.text_content("#stats") or "")
    assert page.errors == [] and page.elsewhere == []
    screenshot(page, tmp_path / "in-browser.png")


def test_a_runtime_file_with_the_wrong_bytes_is_refused_and_the_old_folder_kept(
    tmp_path, model_dir, mirror
):
    web = build_web(model_dir, tmp_path / "web", str(mirror))
    before = sorted(p.name for p in web.rglob("*"))
    bad = tmp_path / "mirror"
    shutil.copytree(mirror / "npm", bad / "npm")
    wasm = bad / "npm" / ORT_WEB / "dist" / "ort-wasm-simd-threaded.mjs"
    wasm.chmod(0o644)
    wasm.write_bytes(wasm.read_bytes() + b"// tampered")
    with pytest.raises(DownloadError, match="ort-wasm-simd-threaded.mjs"):
        build_web(model_dir, web, str(bad))
    assert sorted(p.name for p in web.rglob("*")) == before


def test_a_pretrained_tokenizer_gets_a_readme_not_a_broken_page(tmp_path, model_dir):
    folder = tmp_path / "onnx"
    shutil.copytree(model_dir, folder)
    (folder / "bpe.json").unlink()
    web = build_web(folder, tmp_path / "web")
    assert [p.name for p in web.iterdir()] == ["README.md"]
    assert "bpe.json" in (web / "README.md").read_text()
