"""Your own chats and text: the four chat formats, the corpus formats, the split rule, mixing
weights, and the prepare stage on them (real files, a real stage run in a temporary project)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bardlet.config import ParamsError, validate_params
from bardlet.data.chats import checked, detect_format, read_chats
from bardlet.data.corpus import DataFileError, paragraphs, source_files, write_split_text
from bardlet.data.loaders import TokenWindows
from bardlet.data.shards import Row, ShardError, read_tokens, write_split

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
MIRROR = REPO.parent / "shared" / "data"


def chats_of(path: Path, fmt: str = "auto") -> list[list[dict]]:
    return [messages for _, messages in checked(read_chats(path, fmt), Counter())]


# --- chat formats ------------------------------------------------------------------------------


def test_each_example_chat_file_reads_in_its_format_and_auto_detects_it():
    expected = {"openai.jsonl": "openai", "sharegpt.json": "sharegpt"}
    expected |= {"oasst.jsonl": "oasst", "text.txt": "text"}
    for name, fmt in expected.items():
        assert detect_format(EXAMPLES / "chats" / name) == fmt, name
        assert chats_of(EXAMPLES / "chats" / name) == chats_of(EXAMPLES / "chats" / name, fmt)
    openai = chats_of(EXAMPLES / "chats/openai.jsonl")
    assert len(openai) == 3 and openai[0][0]["role"] == "system"
    assert [m["role"] for m in openai[1]] == ["user", "assistant"] * 2
    sharegpt = chats_of(EXAMPLES / "chats/sharegpt.json")
    assert sharegpt[1][0] == {"role": "system", "content": "Answer like a patient gardener."}
    # OASST: the best-ranked path through the tree, roles renamed.
    (oasst,) = chats_of(EXAMPLES / "chats/oasst.jsonl")
    assert [m["content"][:12] for m in oasst] == [
        "What is a ha",
        "A short Japa",
        "Write one ab",
        "Soft rain on",
    ]
    text = chats_of(EXAMPLES / "chats/text.txt")
    assert text == [
        [
            {"role": "user", "content": "Hello! Who are you?"},
            {"role": "assistant", "content": "I am a small chatbot you trained yourself."},
        ],
        [
            {"role": "user", "content": "Can you count to three?"},
            {"role": "assistant", "content": "One, two, three."},
            {"role": "user", "content": "And backwards?"},
            {"role": "assistant", "content": "Three, two, one."},
        ],
    ]


def test_bad_conversations_are_left_out_and_counted_by_reason(tmp_path):
    def turn(role: str, content: str = "x") -> dict:
        return {"role": role, "content": content}

    records = [
        [turn("user"), turn("assistant")],  # fine
        [turn("assistant"), turn("user"), turn("assistant")],
        [turn("user"), turn("user"), turn("assistant")],
        [turn("user"), turn("assistant", "   ")],
        [turn("user", "y" * 100_001), turn("assistant")],
        [turn("user"), turn("assistant"), turn("user")],  # trailing question: trimmed, kept
        [turn("user")],  # a question with no answer
        [turn("user"), turn("user")],  # not trimmed into a lone question: dropped
        [turn("user"), turn("system"), turn("assistant")],
        [turn("user", "a\ud800b"), turn("assistant")],
    ]
    path = tmp_path / "mine.jsonl"
    lines = [json.dumps({"messages": m}) for m in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dropped: Counter[str] = Counter()
    kept = list(checked(read_chats(path, "openai"), dropped))
    assert [cid for cid, _ in kept] == ["mine.jsonl#1", "mine.jsonl#6"]
    assert kept[1][1] == [turn("user"), turn("assistant")]
    assert dropped == {
        "does_not_start_with_user": 1,
        "roles_do_not_alternate": 2,
        "empty_turn": 1,
        "too_long": 1,
        "no_answer": 1,
        "system_message_not_first": 1,
        "not_utf8": 1,
    }


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [\n', "openai",
         r"mine\.jsonl, line 2: not JSON"),
        ('{"messages": [{"role": "bot", "content": "hi"}]}\n', "openai",
         r'line 1: a turn .*"bot".* is not openai: expected \{"messages"'),
        ('{"conversations": [{"from": "human", "value": "hi"}]}\n', "openai",
         r"line 1: expected a record of format openai, like"),
        ('{"text": "hello"}\n', "auto", r"line 1: not a chat format bardlet knows.*`format`"),
        ("Hello there\n<|user|> hi\n", "text", r"line 1: text before the first <\|user\|>"),
        ('{"message_id": 1}\n', "oasst", r"1 of 1 lines are not OASST messages"),
        ('{"message_id": "a", "parent_id": null, "message_tree_id": "a", "role": "prompter", '
         '"text": "hi", "lang": "en"}\n[1, 2]\n{"broken\n', "oasst",
         r"mine\.jsonl: 2 of 3 lines are not OASST messages .*: fix them"),
        ('[{"conversations": [}]', "sharegpt", r"line 1: not JSON"),
    ],
)  # fmt: skip
def test_a_file_that_is_not_its_format_names_the_file_the_line_and_the_fix(
    tmp_path, content, fmt, message
):
    path = tmp_path / "mine.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFileError, match=message):
        list(read_chats(path, fmt))


def test_a_chat_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"messages": []}\n{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    with pytest.raises(DataFileError, match=r"latin1\.jsonl, line 2: not UTF-8"):
        list(read_chats(path, "openai"))


conversation = st.lists(
    st.tuples(
        st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1, max_size=30)
        .map(str.strip)
        .filter(lambda s: s and "<|" not in s),
        st.text(st.characters(codec="utf-8", exclude_characters="\r"), min_size=1, max_size=30)
        .map(str.strip)
        .filter(lambda s: s and "<|" not in s and "\n\n" not in s),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(conversation, min_size=1, max_size=4))
def test_every_format_round_trips_conversations(tmp_path_factory, conversations):
    """Write the same conversations in each format; each reads back exactly."""
    folder = tmp_path_factory.mktemp("round")
    chats = [
        [{"role": r, "content": c} for q, a in pairs for r, c in (("user", q), ("assistant", a))]
        for pairs in conversations
    ]
    openai = "".join(json.dumps({"messages": m}) + "\n" for m in chats)
    (folder / "a.jsonl").write_text(openai, encoding="utf-8")
    sharegpt = [
        {"conversations": [{"from": {"user": "human"}.get(t["role"], "gpt"), "value": t["content"]}
                           for t in m]}
        for m in chats
    ]  # fmt: skip
    (folder / "b.json").write_text(json.dumps(sharegpt), encoding="utf-8")
    text = "\n".join(
        "".join(f"<|{'user' if t['role'] == 'user' else 'bot'}|> {t['content']}\n" for t in m)
        for m in chats
    )
    (folder / "c.txt").write_text(text, encoding="utf-8")
    for name in ("a.jsonl", "b.json", "c.txt"):
        assert chats_of(folder / name) == chats, name


# --- corpus ------------------------------------------------------------------------------------


def test_one_text_file_splits_as_nanogpt_does(tmp_path):
    data = ("Première ligne\n\nDeuxième — ligne\n" * 50).encode("utf-8")
    (tmp_path / "t.txt").write_bytes(data)
    counts = write_split_text([tmp_path / "t.txt"], "auto", "text", 0.1, tmp_path / "out")
    cut = int(len(data) * 0.9)
    while data[cut] & 0xC0 == 0x80:
        cut += 1
    assert (tmp_path / "out/train.txt").read_bytes() == data[:cut]
    assert (tmp_path / "out/val.txt").read_bytes() == data[cut:]
    assert counts == {"files": 1, "documents": 1, "train_bytes": cut, "val_bytes": len(data) - cut}


def test_documents_of_every_kind_join_with_a_blank_line_and_split_at_the_end(tmp_path):
    (tmp_path / "own").mkdir()
    (tmp_path / "own/a.md").write_text("# Title\nfirst", encoding="utf-8")
    (tmp_path / "own/b.jsonl").write_text('{"body": "second"}\n\n{"body": ""}\n', "utf-8")
    pq.write_table(pa.table({"body": ["third", None, "fourth"]}), tmp_path / "own/c.parquet")
    (tmp_path / "own/.hidden").write_text("not me", encoding="utf-8")
    files = source_files(tmp_path / "own")
    assert [f.name for f in files] == ["a.md", "b.jsonl", "c.parquet"]
    counts = write_split_text(files, "auto", "body", 0.25, tmp_path / "out")
    whole = "# Title\nfirst\n\nsecond\n\nthird\n\nfourth"
    train = (tmp_path / "out/train.txt").read_text("utf-8")
    val = (tmp_path / "out/val.txt").read_text("utf-8")
    assert train + val == whole and len(train) == int(len(whole) * 0.75)
    assert counts["documents"] == 4 and counts["files"] == 3


@pytest.mark.parametrize(
    ("name", "content", "fmt", "message"),
    [
        ("x.txt", b"ok\n\xff\xfe", "auto", r"x\.txt: not UTF-8 text at byte 3"),
        ("x.jsonl", b'{"text": "a"}\n{"body": "b"}\n', "auto",
         r'x\.jsonl, line 2: expected an object with a string under "text".*`column`'),
        ("x.jsonl", b'{"text": "a\\ud800"}\n', "jsonl", r"line 1: the text holds a lone surrogate"),
        ("x.parquet", b"PAR1 not really", "auto", r"x\.parquet: not a readable Parquet file"),
        ("x.txt", b"", "auto", r"the source has no text"),
    ],
)  # fmt: skip
def test_bad_corpus_files_are_named_with_the_fix(tmp_path, name, content, fmt, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataFileError, match=message):
        write_split_text([tmp_path / name], fmt, "text", 0.1, tmp_path / "out")
    assert not (tmp_path / "out/train.txt").exists()  # nothing half-written


def test_a_parquet_file_without_the_column_names_the_columns_it_has(tmp_path):
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "x.parquet")
    with pytest.raises(DataFileError, match=r"no column 'text' \(it has \['body'\]\)"):
        write_split_text([tmp_path / "x.parquet"], "auto", "text", 0.1, tmp_path / "out")


def test_a_source_that_names_nothing_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\*\.txt: no such file"):
        source_files(tmp_path / "nothing*.txt")


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from("ab \n\r"), max_size=60))
def test_paragraphs_stream_the_pieces_the_shard_stage_always_made(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("p") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    assert list(paragraphs(path)) == [d for d in re.split(r"(?<=\n\n)", text) if d]


def test_a_paragraph_longer_than_the_limit_ends_at_a_line_end(tmp_path, monkeypatch):
    import bardlet.data.corpus as corpus

    monkeypatch.setattr(corpus, "MAX_PIECE", 10)
    path = tmp_path / "t.txt"
    path.write_text("aaaaaa\nbbbbbb\ncc\n\ndd", encoding="utf-8")
    assert list(paragraphs(path)) == ["aaaaaa\nbbbbbb\n", "cc\n\n", "dd"]


# --- mixing ------------------------------------------------------------------------------------


def test_weights_change_how_often_each_source_is_drawn():
    tokens = np.concatenate([np.zeros(3000, np.uint16), np.ones(1000, np.uint16)])
    spans = {"big": range(0, 3000), "small": range(3000, 4000)}
    even = TokenWindows(tokens, 16, 64, seed=1, mix={k: (v, 1.0) for k, v in spans.items()})
    plain = TokenWindows(tokens, 16, 64, seed=1)
    for step in range(3):  # equal weights: the very same batches as no mix at all
        pairs = zip(even.batch(step), plain.batch(step), strict=True)
        assert all(np.array_equal(a, b) for a, b in pairs)
    mixed = TokenWindows(tokens, 16, 64, seed=1, mix={"big": (spans["big"], 1.0),
                                                      "small": (spans["small"], 3.0)})  # fmt: skip
    windows = np.concatenate([mixed.batch(step)[0] for step in range(200)])
    small = (windows == 1).all(axis=1).mean()
    assert 0.45 < small < 0.55  # 1000 x 3 vs 3000 x 1: half the windows
    assert ((windows == 0).all(axis=1) | (windows == 1).all(axis=1)).all()  # never across


def test_a_weighted_source_too_short_for_a_window_is_named():
    tokens = np.zeros(100, np.uint16)
    mix = {"big": (range(0, 95), 1.0), "tiny": (range(95, 100), 2.0)}
    with pytest.raises(ValueError, match="source tiny has 5 tokens"):
        TokenWindows(tokens, 16, 4, seed=0, mix=mix)


def test_read_tokens_says_where_each_source_lies(tmp_path):
    rows = [Row("a/0", [1, 2]), Row("a/1", [3]), Row("b/0", [4, 5, 6])]
    write_split(rows, tmp_path / "ok", "h", vocab_size=10, rows_per_file=2)
    tokens, spans = read_tokens(tmp_path / "ok", "h")
    assert tokens.tolist() == [1, 2, 3, 4, 5, 6]
    assert spans == {"a": range(0, 3), "b": range(3, 6)}
    write_split([*rows, Row("a/2", [7])], tmp_path / "mixed", "h", vocab_size=10)
    with pytest.raises(ShardError, match="the rows of source a are not together"):
        read_tokens(tmp_path / "mixed", "h")


# --- params ------------------------------------------------------------------------------------


def params_with(**prepare) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["prepare"].update(prepare)
    return raw


def test_own_sources_must_live_in_data_own_and_have_distinct_names():
    mine = {"path": "data/own/chats.jsonl"}
    params = validate_params(params_with(chats=["oasst1", mine]))
    assert params.prepare.chats[1].label == "chats.jsonl"  # type: ignore[union-attr]
    outside = str(Path.cwd().parent / "chats.jsonl")  # an absolute path, not under data/own
    for path in (outside, "data/own/../../secrets", "chats.jsonl"):
        with pytest.raises(ParamsError, match=r"must be inside data/own/"):
            validate_params(params_with(chats=[{"path": path}]))
    twice = [{"path": "data/own/a/x.txt"}, {"path": "data/own/b/x.txt", "name": "a_x.txt"}]
    with pytest.raises(ParamsError, match=r"two sources named \['a_x.txt'\]"):
        validate_params(params_with(corpus=twice))
    for key in ("corpus", "chats", "prefs"):  # its rows would mix with the built-in's
        named = [{"path": "data/own/mine.jsonl", "name": "oasst1"}]
        with pytest.raises(ParamsError, match=rf"{key}: \['oasst1'\] names a built-in source"):
            validate_params(params_with(**{key: named}))
    with pytest.raises(ParamsError, match=r"corpus\.0\..*format"):
        validate_params(params_with(corpus=[{"path": "data/own/x", "format": "csv"}]))
    with pytest.raises(ParamsError, match=r"weight"):
        validate_params(params_with(corpus=[{"path": "data/own/x", "weight": 0}]))


# --- the prepare stage -------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path) -> Path:
    """A folder the prepare stage can run in: params.yaml, data/raw from the mirror, data/own."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data/raw").mkdir(parents=True)
    for name in ("tinyshakespeare", "oasst1"):
        shutil.copytree(MIRROR / name, tmp_path / "data/raw" / name)
    shutil.copytree(EXAMPLES / "chats", tmp_path / "data/own/chats")
    shutil.copytree(EXAMPLES / "corpus", tmp_path / "data/own/corpus")
    return tmp_path


def run_prepare(project: Path, **prepare) -> subprocess.CompletedProcess:
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"].update(prepare)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "stages.prepare"],
        cwd=project,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_prepare_takes_your_chats_and_text_beside_the_defaults(project):
    done = run_prepare(
        project,
        corpus=["tinyshakespeare", {"path": "data/own/corpus", "name": "mine"}],
        chats=["oasst1", {"path": "data/own/chats", "name": "mine"}],
        chats_val_percent=10,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((project / "reports/prepare.json").read_text())
    assert report["chats"]["oasst1"]["train_conversations"] == 172  # the default, unchanged
    mine = report["chats"]["mine"]
    assert mine["files"] == 4 and mine["dropped"] == {}
    assert mine["train_conversations"] + mine["val_conversations"] == 3 + 2 + 1 + 2
    assert report["corpus"]["mine"]["documents"] == 3  # one text file, two JSON lines
    prepared = project / "data/prepared"
    assert sorted(p.name for p in (prepared / "corpus").iterdir()) == ["mine", "tinyshakespeare"]
    rows = [json.loads(line) for split in ("train", "val")
            for line in (prepared / f"chats/{split}.jsonl").read_text("utf-8").splitlines()]  # fmt: skip
    own = [row for row in rows if row["source"] == "mine"]
    assert {row["id"].split("#")[0] for row in own} >= {"mine/openai.jsonl", "mine/text.txt"}
    assert "mine/m1" in {row["id"] for row in own}  # an OASST file keeps its tree ids


def test_a_bad_file_stops_prepare_with_its_name_and_keeps_the_previous_data(project):
    assert run_prepare(project).returncode == 0
    before = (project / "data/prepared/chats/train.jsonl").read_bytes()
    (project / "data/own/chats/broken.jsonl").write_text('{"messages": [oops\n', "utf-8")
    done = run_prepare(project, chats=["oasst1", {"path": "data/own/chats"}])
    assert done.returncode != 0
    assert "broken.jsonl, line 1: not JSON" in done.stderr
    assert "Traceback" not in done.stderr
    assert (project / "data/prepared/chats/train.jsonl").read_bytes() == before
    done = run_prepare(project, chats=[{"path": "data/own/nothing.jsonl"}])
    assert "data/own/nothing.jsonl: no such file" in done.stderr
    (project / "data/own/empty.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "unanswered"}]}) + "\n", "utf-8"
    )
    done = run_prepare(project, chats=[{"path": "data/own/empty.jsonl"}])
    assert "empty.jsonl has no conversation to train on (left out: {'no_answer': 1})" in done.stderr
    # A path outside data/own is a params.yaml mistake: one line, no traceback, data kept.
    done = run_prepare(project, chats=[{"path": "/etc/passwd"}])
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: params.yaml is invalid:")
    assert "must be inside data/own/" in done.stderr
    assert (project / "data/prepared/chats/train.jsonl").read_bytes() == before
