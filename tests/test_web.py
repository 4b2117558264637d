"""The chat page at `/`: served by bardlet itself, same-origin assets only, the elements its
script needs. What it does in a browser is tested in headless Chromium (test_web_browser.py)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest_server import STYLES, build_tiny_model
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
        "/static/markdown.js": "javascript",
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
