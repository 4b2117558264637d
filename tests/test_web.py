"""The chat page at `/`: served by bardlet itself, same-origin assets only, and its script
really streams a reply from the API (run under Node with a minimal DOM when Node exists)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest_server import STYLES, build_tiny_model, free_port
from fastapi.testclient import TestClient

from bardlet.runtime.session import OnnxLM
from bardlet.server.app import create_app

STATIC = Path(__file__).resolve().parents[1] / "bardlet" / "server" / "static"


@pytest.fixture(scope="module")
def lm(tmp_path_factory, small_tokenizer) -> OnnxLM:
    return OnnxLM(build_tiny_model(tmp_path_factory.mktemp("web"), small_tokenizer))


@pytest.fixture(scope="module")
def web(lm) -> TestClient:
    return TestClient(create_app(lm))


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.ids: set[str] = set()
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href", "action"):
            if found.get(name):
                self.urls.append(found[name] or "")
        if found.get("id"):
            self.ids.add(found["id"] or "")
        if tag == "script" and not found.get("src"):
            self.inline_scripts += 1
        if any(name.startswith("on") for name in found):
            self.inline_scripts += 1


def parse_page(web: TestClient) -> Links:
    links = Links()
    links.feed(web.get("/").text)
    return links


def test_the_page_and_its_assets_are_served_with_the_right_types(web):
    page = web.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    links = parse_page(web)
    types = {
        "/static/app.js": "javascript",
        "/static/style.css": "text/css",
        "/static/favicon.svg": "image/svg+xml",
    }
    assert set(links.urls) == set(types)
    for url, kind in types.items():
        asset = web.get(url)
        assert asset.status_code == 200 and kind in asset.headers["content-type"], url
        assert asset.text == (STATIC / url.rsplit("/", 1)[1]).read_text(encoding="utf-8")
    assert web.get("/static/nothing.js").status_code == 404


def test_the_page_loads_nothing_from_elsewhere(web):
    links = parse_page(web)
    for url in links.urls:
        assert url.startswith("/") and not url.startswith("//"), url
    assert links.inline_scripts == 0  # the CSP forbids inline code, so there must be none
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text(encoding="utf-8")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text), name
    # An SVG may name its own XML namespace, and nothing else.
    icon = (STATIC / "favicon.svg").read_text(encoding="utf-8")
    assert re.findall(r"https?://[^\s\"']*", icon) == ["http://www.w3.org/2000/svg"]
    assert not re.search(r"href|<script|@import|url\(", icon)


def test_the_script_uses_the_streaming_api_and_the_elements_exist(web):
    script = web.get("/static/app.js").text
    for needle in (
        'fetch("/v1/chat/completions"',
        "stream: true",
        ".getReader()",
        "new AbortController()",
        ".abort()",
        '"/v1/styles"',
        "[DONE]",
    ):
        assert needle in script, needle
    used = set(re.findall(r'\$\("([\w-]+)"\)', script))
    assert used <= parse_page(web).ids, used - parse_page(web).ids
    assert {"stop", "temperature", "top-p", "style", "log", "input"} <= used


def test_styles_are_offered_and_the_page_stays_open_when_a_key_is_set(web, lm):
    styles = web.get("/v1/styles").json()["data"]
    assert {s["id"]: {k: v for k, v in s.items() if k != "id"} for s in styles} == STYLES
    keyed = TestClient(create_app(lm, api_key="k"))
    assert keyed.get("/").status_code == 200
    assert keyed.get("/static/app.js").status_code == 200
    assert keyed.get("/v1/styles").status_code == 401
    assert keyed.get("/v1/styles", headers={"Authorization": "Bearer k"}).status_code == 200


NODE_DRIVER = r"""
const fs = require("fs"), vm = require("vm");
const [base, file] = process.argv.slice(2);
class El {
  constructor(id) { this.id = id; this.value = ""; this._text = ""; this.children = [];
    this.updates = 0; this.disabled = false; this.listeners = {};
    this.classList = { add: (c) => { this.className += " " + c; }, remove() {} };
    this.className = ""; }
  get textContent() { return this._text; }
  set textContent(v) { this._text = String(v); this.updates++; if (v === "") this.children = []; }
  appendChild(c) { this.children.push(c); return c; }
  scrollIntoView() {}
  addEventListener(type, f) { this.listeners[type] = f; }
  requestSubmit() { this.listeners.submit({ preventDefault() {} }); }
}
const els = {}; let ready = null; const sent = [];
const document = {
  getElementById: (id) => (els[id] ||= new El(id)),
  createElement: () => new El(""),
  addEventListener: (type, f) => { if (type === "DOMContentLoaded") ready = f; },
};
const context = vm.createContext({
  document, console, TextDecoder, AbortController, JSON, Number, Error, setTimeout,
  localStorage: { getItem: () => "", setItem() {} },
  fetch: (url, options) => { sent.push([url, options && options.body]); return fetch(base + url, options); },
});
vm.runInContext(fs.readFileSync(file, "utf8"), context);
const wait = async (ok) => { for (let i = 0; i < 300 && !ok(); i++) await new Promise((r) => setTimeout(r, 50)); };
(async () => {
  document.getElementById("max-tokens").value = "30";
  ready();
  await wait(() => els.style.children.length > 0);
  els.style.value = "terse";
  els.style.listeners.change({ target: { value: "terse" } });
  els.input.value = "Good morrow";
  els.composer.requestSubmit();
  await wait(() => els.log.children.length === 2 && !els.send.disabled);
  const [user, bot] = els.log.children;
  console.log(JSON.stringify({
    styles: els.style.children.map((o) => o.value), system: els.system.value,
    temperature: els.temperature.value, user: user.textContent, bot: bot.textContent,
    botClass: bot.className, updates: bot.updates, sent,
  }));
})();
"""


@pytest.fixture(scope="module")
def live(lm):
    """The app under uvicorn in a thread, on a free loopback port."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(lm), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        pytest.fail("the server did not start")
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run the page script")
def test_the_page_script_streams_a_reply_from_the_server(live, tmp_path):
    driver = tmp_path / "driver.js"
    driver.write_text(NODE_DRIVER)
    done = subprocess.run(
        ["node", str(driver), live, str(STATIC / "app.js")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["styles"] == list(STYLES)
    assert result["system"] == STYLES["terse"]["system"]
    assert float(result["temperature"]) == STYLES["terse"]["temperature"]
    assert result["user"] == "Good morrow"
    assert "error" not in result["botClass"], result["bot"]
    assert result["bot"] and result["updates"] > 2  # streamed: the bubble grew piece by piece
    url, body = result["sent"][-1]
    request = json.loads(body)
    assert url == "/v1/chat/completions" and request["stream"] is True
    assert request["messages"][0] == {"role": "system", "content": STYLES["terse"]["system"]}
    assert request["messages"][-1] == {"role": "user", "content": "Good morrow"}
    assert request["max_tokens"] == 30 and request["temperature"] == 0.3
