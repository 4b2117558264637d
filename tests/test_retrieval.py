"""Your documents and a memory (bardlet/retrieval/): the index, its readers and bad input, the
memory file, and both in the terminal chat and the HTTP API (a real server on loopback)."""

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

from bardlet.retrieval.documents import read_blocks, split_passages
from bardlet.retrieval.index import Index, build_index, match_query
from bardlet.retrieval.memory import Memory
from tests.conftest_server import REPO, Server, build_tiny_model


def words_count(text: str) -> int:
    return len(text.split())


@settings(deadline=None, max_examples=80)
@given(
    words_per_line=st.lists(st.integers(0, 8), max_size=30),
    size=st.integers(2, 12),
    overlap=st.integers(0, 6),
)
def test_passages_keep_every_word_in_order_within_their_size(words_per_line, size, overlap):
    overlap = min(overlap, size - 1)
    count = iter(range(10**6))  # every word different, so a repeat is the overlap's doing
    block = [(line, " ".join(f"w{next(count)}" for _ in range(n)))
             for line, n in enumerate(words_per_line, 1)]  # fmt: skip
    words = [w for _, text in block for w in text.split()]
    passages = split_passages(block, words_count, size, overlap)
    if not words:
        assert passages == []
        return
    # Each passage is at most `size` words (here a word is a token) ...
    assert all(words_count(text) <= size for _, _, text in passages)
    # ... starts with at most `overlap` words of the one before, and moves on ...
    seen: list[str] = []
    for _, _, text in passages:
        ws = text.split()
        repeated = [w for w in ws if w in seen]
        assert ws[: len(repeated)] == repeated and len(repeated) <= overlap
        assert len(repeated) < len(ws)
        seen += ws[len(repeated) :]
    # ... and together they are the text, in order, with the lines they span.
    assert seen == words
    line_of = {w: line for line, text in block for w in text.split()}
    for start, end, text in passages:
        assert (start, end) == (line_of[text.split()[0]], line_of[text.split()[-1]])


def make_pdf(text: str | None) -> bytes:
    """A one-page PDF with `text` on it (None: a blank page, as a scan without OCR gives)."""
    content = b"" if text is None else f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = io.BytesIO(b"%PDF-1.4\n"), []
    out.seek(0, 2)
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def encrypted(pdf: bytes) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.add_page(PdfReader(io.BytesIO(pdf)).pages[0])
    writer.encrypt("secret", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture
def documents(tmp_path) -> Path:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "tea.txt").write_text(
        "How to brew tea.\nBoil the water.\nSteep the leaves three minutes.\n"
    )
    (docs / "sub" / "ships.md").write_text("# Ships\n\nA galleon carries cargo across the ocean.\n")
    (docs / "planets.csv").write_text("planet,moons\nMars,2\nJupiter,95\n")
    (docs / "page.html").write_text(
        "<html><head><title>x</title><style>.a{color:red}</style></head><body>\n"
        "<p>The lighthouse keeper lit the lamp.</p>\n<script>var hidden = 'kumquat';</script>\n"
        "</body></html>\n"
    )
    (docs / "paper.pdf").write_bytes(make_pdf("Photosynthesis turns sunlight into sugar"))
    (docs / "scan.pdf").write_bytes(make_pdf(None))
    (docs / "locked.pdf").write_bytes(encrypted(make_pdf("a secret about zeppelins")))
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02 binary")
    (docs / "latin.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    (docs / "image.png").write_bytes(b"\x89PNG\r\n")
    (docs / ".hidden.txt").write_text("never indexed")
    return docs


def test_every_reader_gives_its_text_with_the_place_a_citation_names(documents, tmp_path):
    out = tmp_path / "docs.sqlite"
    report = build_index(out, [documents], words_count, "tok", passage_tokens=20, overlap=2)
    assert report.added == 5 and report.passages > 0
    assert report.skipped == {
        "no text in the PDF (scanned images? run OCR first)": [f"{documents.as_posix()}/scan.pdf"],
        "encrypted PDF (save a copy without a password)": [f"{documents.as_posix()}/locked.pdf"],
        "binary, not text": [f"{documents.as_posix()}/blob.txt"],
        "not UTF-8 text (convert it: iconv -t utf-8)": [f"{documents.as_posix()}/latin.txt"],
        "unsupported type .png": [f"{documents.as_posix()}/image.png"],
    }
    index = Index(out)
    (tea,) = index.search("how long to steep tea leaves", k=1)
    assert tea.path.endswith("tea.txt") and tea.place().endswith("tea.txt:1-3")
    (row,) = index.search("how many moons has Jupiter", k=1)
    assert row.text == "planet: Jupiter; moons: 95" and row.place().endswith("planets.csv row 3")
    (pdf,) = index.search("photosynthesis", k=1)
    assert pdf.place().endswith("paper.pdf page 1") and "sunlight" in pdf.text
    (html,) = index.search("lighthouse", k=1)
    assert html.text == "The lighthouse keeper lit the lamp." and html.start == 2
    assert index.search("kumquat color red") == []  # scripts and styles are not text
    assert index.search("never indexed") == [] and index.search("zeppelins") == []
    assert index.search("") == [] and index.search("?!") == []


def test_reindexing_reads_only_what_changed_and_drops_what_is_gone(documents, tmp_path):
    out = tmp_path / "docs.sqlite"
    build_index(out, [documents], words_count, "tok")
    (documents / "tea.txt").write_text("Green tea wants cooler water.\n")
    (documents / "sub" / "ships.md").unlink()
    report = build_index(out, [documents], words_count, "tok")
    assert (report.added, report.changed, report.removed, report.unchanged) == (0, 1, 1, 3)
    index = Index(out)
    assert index.search("galleon") == []
    assert [p.text for p in index.search("tea", k=5)] == ["Green tea wants cooler water."]
    # Other passage settings (or another tokenizer): everything is read again.
    report = build_index(out, [documents], words_count, "other tokenizer")
    assert report.added == 4 and report.unchanged == 0


def test_a_build_that_fails_leaves_the_previous_index_as_it_was(documents, tmp_path):
    out = tmp_path / "docs.sqlite"
    build_index(out, [documents], words_count, "tok")
    before = Index(out).search("galleon")
    (documents / "sub" / "ships.md").write_text("Brigantines are fast.\n")
    (documents / "zz.txt").write_text("this one breaks the counter\n")

    def breaks(text: str) -> int:
        if "breaks" in text:
            raise RuntimeError("interrupted")
        return words_count(text)

    with pytest.raises(RuntimeError, match="interrupted"):
        build_index(out, [documents], breaks, "tok")
    index = Index(out)
    assert index.search("galleon") == before and index.search("brigantines") == []
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder"):
        build_index(out, [tmp_path / "nowhere"], words_count, "tok")


@settings(deadline=None, max_examples=100)
@given(st.text(max_size=60))
def test_any_text_is_a_safe_query(tmp_path_factory, text):
    out = tmp_path_factory.mktemp("q") / "docs.sqlite"
    if not out.exists():
        folder = out.parent / "d"
        folder.mkdir()
        (folder / "a.txt").write_text("alpha beta gamma\n")
        build_index(out, [folder], words_count, "tok")
    query = match_query(text)
    assert query == "" or all(part.startswith('"') for part in query.split(" OR "))
    assert isinstance(Index(out).search(text), list)  # never an FTS5 syntax error


def test_files_over_the_size_bound_and_bad_index_files_are_named(documents, tmp_path):
    big = documents / "big.txt"
    big.write_text("word " * 1000)
    report = build_index(tmp_path / "i.sqlite", [big], words_count, "tok", max_bytes=100)
    assert report.skipped == {"over 0.0001 MB": [big.as_posix()]}
    indexed = build_index(tmp_path / "i.sqlite", [big], words_count, "tok")
    assert (indexed.added, indexed.removed) == (1, 0)
    shrunk = build_index(tmp_path / "i.sqlite", [big], words_count, "tok", max_bytes=100)
    assert shrunk.removed == 1 and "1 removed" in shrunk.summary()  # it left the index: said
    not_index = tmp_path / "notes.sqlite"
    sqlite3.connect(not_index).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ValueError, match="is not a bardlet index"):
        Index(not_index)
    with pytest.raises(FileNotFoundError, match="bardlet index DOCS"):
        Index(tmp_path / "missing.sqlite")
    assert read_blocks(Path("x.md"), b"") == [[]]


def test_memory_keeps_every_turn_at_once_and_finds_the_matching_ones(tmp_path):
    path = tmp_path / "memory.sqlite"
    first = Memory(path, session="one")
    first.add("user", "My cat is called Bartholomew.")
    first.add("assistant", "What a grand name.")
    # Committed when add returns: another connection (another process) sees it.
    assert sqlite3.connect(path).execute("SELECT count(*) FROM turns").fetchone() == (2,)
    second = Memory(path, session="two")
    second.add("user", "The weather is fine.")
    (found,) = second.recall("what is my cat called?", k=1)
    assert (found.session, found.content) == ("one", "My cat is called Bartholomew.")
    left_out = {("user", "My cat is called Bartholomew.")}
    assert all(t.role != "user" or "cat" not in t.content
               for t in second.recall("cat", k=3, leave_out=left_out))  # fmt: skip
    assert [s for s, _, _ in second.sessions()] == ["one", "two"]
    assert second.forget("one") == 2 and [t.session for t in second.turns("two")] == ["two"]
    assert second.forget("all") == 1 and second.sessions() == []
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="cannot use it as a memory file"):
        Memory(bad)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, small_tokenizer) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("rag") / "onnx", small_tokenizer, block_size=128
    )


def test_bardlet_index_counts_in_the_models_tokens_and_names_bad_paths(model_dir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("one two three\n")
    command = [sys.executable, "-m", "bardlet.cli", "index", str(docs), "--model", str(model_dir)]
    out = tmp_path / "docs.sqlite"
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "1 passages; files: 1 added" in done.stdout
    again = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert "1 unchanged" in again.stdout
    missing = [
        sys.executable,
        "-m",
        "bardlet.cli",
        "index",
        str(tmp_path / "nope"),
        "--out",
        str(out),
    ]
    failed = subprocess.run(
        [*missing, "--model", str(model_dir)], capture_output=True, text=True, cwd=REPO
    )
    assert failed.returncode == 2 and "nope: no such file or folder" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_the_chat_reads_its_sources_cites_them_and_remembers(model_dir, tmp_path):
    from bardlet.chat import Chat, command
    from bardlet.runtime.session import OnnxLM

    lm = OnnxLM(model_dir, threads=1)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("Steep green tea for two minutes in water below boiling.\n")
    (docs / "ships.md").write_text("A galleon carries cargo across the ocean.\n")
    out = tmp_path / "docs.sqlite"
    build_index(out, [docs], lambda text: len(lm.tokenizer.encode(text)), lm.tokenizer.hash)
    memory = Memory(tmp_path / "memory.sqlite")
    chat = Chat(lm, max_new_tokens=8, docs=Index(out), memory=memory)
    chat.messages.append({"role": "user", "content": "How long should green tea steep?"})
    prompt = lm.tokenizer.decode(chat._prompt())  # what reply() gives the model
    assert "<|system|>Sources:\n[1] Steep green tea for two minutes" in prompt
    chat.messages.pop()
    "".join(chat.reply("How long should green tea steep?"))
    assert [p.path.endswith("tea.md") for p in chat.sources] == [True]
    assert chat.footnotes() == f"[1] {docs.as_posix()}/tea.md:1"
    assert [t.role for t in memory.turns()] == ["user", "assistant"]

    # A long conversation: the first turns leave the prompt, and come back when they match.
    chat.docs = None
    for i in range(12):
        "".join(chat.reply(f"filler message number {i} about nothing in particular"))
    assert all("green tea" not in m["content"] for m in chat.messages)
    chat.messages.append({"role": "user", "content": "what about the green tea?"})
    prompt = lm.tokenizer.decode(chat._prompt())
    assert "From earlier conversations:\nuser: How long" in prompt  # cut to its share
    assert "forgot 26 turns" in command(chat, "/forget")
    assert command(chat, "/memory").count("\n") == 0  # only the heading: nothing stored


def test_the_api_returns_the_sources_on_the_message_and_the_last_chunk(model_dir, tmp_path):
    from bardlet.runtime.session import OnnxLM

    tokenizer = OnnxLM(model_dir, threads=1).tokenizer
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("Steep green tea for two minutes in water below boiling.\n")
    out = tmp_path / "docs.sqlite"
    build_index(out, [docs], lambda text: len(tokenizer.encode(text)), tokenizer.hash)
    server = Server(model_dir / "model.onnx", "--docs", str(out))
    try:
        server.wait_healthy()
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        asked = [{"role": "user", "content": "how long does green tea steep?"}]
        reply = client.chat.completions.create(model="bardlet", messages=asked, max_tokens=4)
        (source,) = reply.choices[0].message.model_extra["sources"]
        assert source["index"] == 1 and source["place"] == f"{docs.as_posix()}/tea.md:1"
        assert source["text"].startswith("Steep green tea")
        chunks = list(client.chat.completions.create(
            model="bardlet", messages=asked, max_tokens=4, stream=True))  # fmt: skip
        assert chunks[-1].choices[0].finish_reason is not None
        assert chunks[-1].choices[0].delta.model_extra["sources"] == [source]
        assert all("sources" not in (c.choices[0].delta.model_extra or {}) for c in chunks[:-1])
        unrelated = [{"role": "user", "content": "zzz qqq"}]
        raw = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                         json={"messages": unrelated, "max_tokens": 2}).json()  # fmt: skip
        assert raw["choices"][0]["message"]["sources"] == []
    finally:
        server.stop()
    failed = subprocess.run(
        [sys.executable, "-m", "bardlet.cli", "serve", "--model", str(model_dir),
         "--docs", str(tmp_path / "missing.sqlite")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert failed.returncode == 2 and "no index there" in failed.stderr
    json.dumps(source)  # plain JSON all through


def test_the_server_remembers_per_conversation_id_and_never_across_them(model_dir, tmp_path):
    memory = tmp_path / "memory.sqlite"
    server = Server(model_dir / "model.onnx", "--memory", str(memory))
    try:
        server.wait_healthy()

        def ask(text: str, conversation: str | None) -> int:
            extra = {"conversation_id": conversation} if conversation else {}
            body = {"messages": [{"role": "user", "content": text}], "max_tokens": 2, **extra}
            answer = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            return answer.json()["usage"]["prompt_tokens"]

        ask("My cat is called Bartholomew.", "alice")
        plain = ask("What is my cat called?", None)
        assert ask("What is my cat called?", "bob") == plain  # another conversation: nothing
        assert ask("What is my cat called?", "alice") > plain + 5  # the turn came back
        rows = sqlite3.connect(memory).execute("SELECT session, role FROM turns").fetchall()
        assert rows[:2] == [("alice", "user"), ("alice", "assistant")]
        assert {session for session, _ in rows} == {"alice", "bob"}
    finally:
        server.stop()


def test_a_file_that_can_no_longer_be_read_leaves_the_index(documents, tmp_path):
    out = tmp_path / "docs.sqlite"
    build_index(out, [documents], words_count, "tok")
    assert Index(out).search("galleon")
    (documents / "sub" / "ships.md").write_text("galleon " * 100)
    report = build_index(out, [documents], words_count, "tok", max_bytes=200)
    assert f"{documents.as_posix()}/sub/ships.md" in report.skipped["over 0.0002 MB"]
    assert Index(out).search("galleon") == []  # not the old text either


def test_the_commands_name_bad_input_without_a_traceback(model_dir, tmp_path):
    """What a user gets wrong on the command line: one `error:` line and exit code 2."""
    from typer.testing import CliRunner

    from bardlet.cli import app

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("one two three\n")
    not_an_index = tmp_path / "notes.txt"
    not_an_index.write_text("mine: keep me\n")
    model = ["--model", str(model_dir)]
    cases = {
        ("index", str(docs), "--out", str(not_an_index), *model): "give --out a new file",
        ("index", str(docs), "--out", str(tmp_path), *model): "give --out a new file",
        ("index", str(docs), "--model", str(tmp_path / "nope")): "no model at",
        ("generate", "the king is dead. " * 200, *model): "tokens but the model's context is",
        ("generate", "hi", "--chat", "-n", "5", *model, "--beams", "2"): None,  # fine
        ("serve", *model, "--log-level", "bogus"): "'bogus' is not one of",
        ("generate", "hi", "--beams", "2", "--length-penalty", "nan", *model): "not nan",
    }
    for args, message in cases.items():
        result = CliRunner().invoke(app, list(args))
        if message is None:
            assert result.exit_code == 0, result.output
            continue
        assert result.exit_code == 2, (args[:2], result.output)
        assert message in result.output and result.exception.__class__.__name__ == "SystemExit"
    assert not_an_index.read_text() == "mine: keep me\n"  # nothing lost
