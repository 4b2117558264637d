"""Tests for bardlet.data.oasst: OASST1 message trees to conversations."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bardlet.data.oasst import (
    OasstStats,
    build_conversations,
    read_all_messages,
    read_messages,
    tree_split,
)

MIRROR_DIR = Path(
    os.environ.get("BARDLET_DATA_MIRROR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
MIRROR_FILE = MIRROR_DIR / "oasst1" / "en-validation.jsonl"
needs_mirror = pytest.mark.skipif(not MIRROR_FILE.is_file(), reason="shared data mirror missing")


def msg(
    mid: str,
    parent: str | None,
    role: str,
    tree: str = "t1",
    rank: int | None = None,
    deleted: bool = False,
    review_result: bool | None = True,
    lang: str = "en",
) -> dict[str, Any]:
    """A message in the official flat format; its text is its id, to make paths easy to read."""
    return {
        "message_id": mid,
        "parent_id": parent,
        "message_tree_id": tree,
        "role": role,
        "text": mid,
        "lang": lang,
        "deleted": deleted,
        "review_result": review_result,
        "rank": rank,
    }


def texts(conversations: list[dict]) -> list[list[str]]:
    return [[m["content"] for m in c["messages"]] for c in conversations]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- reading ---------------------------------------------------------------------------------


def test_read_counts_malformed_wrong_lang_and_duplicates(tmp_path: Path) -> None:
    good = msg("p", None, "prompter")
    lines = [
        json.dumps(good),
        "",  # blank lines are ignored, not malformed
        "{not json",
        json.dumps([1, 2, 3]),  # JSON, but not an object
        json.dumps({k: v for k, v in good.items() if k != "parent_id"}),  # field missing
        json.dumps({**msg("x", "p", "assistant"), "role": "system"}),  # unknown role
        json.dumps({**msg("y", "p", "assistant"), "rank": True}),  # rank of the wrong type
        json.dumps({**msg("z", "p", "assistant"), "text": None}),
        json.dumps(msg("a", "p", "assistant", lang="de")),
        json.dumps({**good, "text": "a second p"}),  # duplicate id: the first one wins
        json.dumps(msg("b", "p", "assistant")),
    ]
    messages, stats = read_messages(write_jsonl(tmp_path / "m.jsonl", lines))
    assert [m["message_id"] for m in messages] == ["p", "b"]
    assert messages[0]["text"] == "p"
    assert stats.lines == 10
    assert stats.malformed_lines == 6
    assert stats.wrong_lang == 1
    assert stats.duplicate_ids == 1
    assert stats.messages == 2

    all_langs, stats = read_messages(tmp_path / "m.jsonl", lang=None)
    assert [m["message_id"] for m in all_langs] == ["p", "a", "b"]
    assert stats.wrong_lang == 0


def test_read_keeps_only_the_fields_trees_need(tmp_path: Path) -> None:
    line = json.dumps({**msg("p", None, "prompter"), "detoxify": {"toxicity": 0.1}, "emojis": {}})
    messages, _ = read_messages(write_jsonl(tmp_path / "m.jsonl", [line]))
    assert set(messages[0]) == set(msg("p", None, "prompter"))


def test_optional_flags_default_to_harmless_values(tmp_path: Path) -> None:
    line = json.dumps(
        {"message_id": "p", "parent_id": None, "message_tree_id": "p", "role": "prompter"}
        | {"text": "hi", "lang": "en"}
    )
    messages, stats = read_messages(write_jsonl(tmp_path / "m.jsonl", [line]))
    assert stats.malformed_lines == 0
    assert messages[0]["deleted"] is False and messages[0]["rank"] is None


def test_empty_file_gives_no_messages(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    messages, stats = read_messages(tmp_path / "empty.jsonl")
    assert messages == []
    assert stats.as_dict() == OasstStats().as_dict()


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(msg("p", None, "prompter")).encode() + b"\n\xe9t\xe9\n")
    with pytest.raises(ValueError, match="not valid UTF-8") as excinfo:
        read_messages(path)
    assert str(path) in str(excinfo.value) and "line 2" in str(excinfo.value)


def test_reads_gzipped_files(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(msg("p", None, "prompter")) + "\n")
    messages, _ = read_messages(path)
    assert [m["message_id"] for m in messages] == ["p"]


def test_gzip_cut_short_or_not_gzip_is_a_clear_error(tmp_path: Path) -> None:
    whole = gzip.compress((json.dumps(msg("p", None, "prompter")) + "\n").encode() * 50)
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "plain.jsonl.gz").write_bytes(b"this is not gzip\n")
    for name in ("cut.jsonl.gz", "plain.jsonl.gz"):
        with pytest.raises(ValueError, match="not a complete gzip file") as excinfo:
            read_messages(tmp_path / name)
        assert name in str(excinfo.value)


def test_binary_garbage_is_an_error_or_counted_never_a_crash(tmp_path: Path) -> None:
    garbage = bytes(random.Random(0).randrange(256) for _ in range(4000))
    (tmp_path / "garbage.jsonl").write_bytes(garbage)
    with pytest.raises(ValueError, match="garbage.jsonl.*not valid UTF-8"):
        read_messages(tmp_path / "garbage.jsonl")
    # Control characters and NULs are valid UTF-8: those lines are counted as malformed.
    (tmp_path / "nul.jsonl").write_bytes(b"\x00\x01\x02\n\x7f{\n" + b"\x00" * 100)
    messages, stats = read_messages(tmp_path / "nul.jsonl")
    assert messages == [] and stats.lines == stats.malformed_lines == 3


# --- the Hugging Face Parquet release --------------------------------------------------------


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as a Parquet file shaped like the Hugging Face release: one column per field,
    nulls where a message has no value (rank of a prompter, say)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_parquet_reads_like_the_jsonl(tmp_path: Path) -> None:
    rows = [
        msg("p", None, "prompter"),
        msg("a", "p", "assistant", rank=0),
        {**msg("b", "p", "assistant", rank=1), "deleted": None},  # null flag: default
        {**msg("c", "p", "assistant"), "text": None},  # malformed: no text
        msg("d", "p", "assistant", lang="de"),
        {**msg("a", "p", "assistant"), "text": "dup"},
    ]
    messages, stats = read_messages(write_parquet(tmp_path / "m.parquet", rows))
    assert [m["message_id"] for m in messages] == ["p", "a", "b"]
    assert messages[1] == msg("a", "p", "assistant", rank=0)
    assert messages[2]["deleted"] is False and messages[0]["rank"] is None
    assert (stats.lines, stats.malformed_lines, stats.wrong_lang, stats.duplicate_ids) == (
        6,
        1,
        1,
        1,
    )
    german, _ = read_messages(tmp_path / "m.parquet", lang="de")
    assert [m["message_id"] for m in german] == ["d"]


def test_parquet_without_the_needed_columns_is_a_clear_error(tmp_path: Path) -> None:
    rows = [{k: v for k, v in msg("p", None, "prompter").items() if k != "message_tree_id"}]
    with pytest.raises(ValueError, match="no column message_tree_id"):
        read_messages(write_parquet(tmp_path / "m.parquet", rows))


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_parquet_cut_short_is_a_clear_error(tmp_path: Path, keep: float) -> None:
    whole = write_parquet(
        tmp_path / "whole.parquet", [msg(f"m{i}", None, "prompter") for i in range(50)]
    )
    data = whole.read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match="cut.parquet.*re-run `dvc repro download`"):
        read_messages(cut)


@needs_mirror
def test_parquet_of_the_mirror_slice_gives_the_same_conversations(tmp_path: Path) -> None:
    # The mirror's rows, written as Parquet with all their fields (nested ones included),
    # like the full release: same messages, same counts, same conversations in both modes.
    lines = MIRROR_FILE.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    path = write_parquet(tmp_path / "slice.parquet", rows)

    from_jsonl, jsonl_stats = read_messages(MIRROR_FILE)
    from_parquet, parquet_stats = read_messages(path)
    assert from_parquet == from_jsonl
    assert parquet_stats.as_dict() == jsonl_stats.as_dict()
    for mode in ("best", "all"):
        assert build_conversations(from_parquet, mode) == build_conversations(from_jsonl, mode)


def test_read_all_messages_joins_files_and_counts_duplicates(tmp_path: Path) -> None:
    train = write_parquet(tmp_path / "train.parquet", [msg("p", None, "prompter", tree="p")])
    val = write_jsonl(
        tmp_path / "val.jsonl",
        [json.dumps(msg("q", None, "prompter", tree="q")), json.dumps(msg("p", None, "prompter"))],
    )
    messages, stats = read_all_messages([train, val])
    assert [m["message_id"] for m in messages] == ["p", "q"]
    assert (stats.lines, stats.messages, stats.duplicate_ids) == (3, 2, 1)


# --- building conversations ------------------------------------------------------------------


def test_simple_thread_becomes_one_conversation() -> None:
    messages = [
        msg("p1", None, "prompter"),
        msg("a1", "p1", "assistant", rank=0),
        msg("p2", "a1", "prompter"),
        msg("a2", "p2", "assistant", rank=0),
    ]
    conversations = build_conversations(messages)
    assert conversations == [
        {
            "id": "t1",
            "messages": [
                {"role": "user", "content": "p1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "p2"},
                {"role": "assistant", "content": "a2"},
            ],
        }
    ]


def test_deleted_message_and_its_subtree_are_dropped() -> None:
    messages = [
        msg("p1", None, "prompter"),
        msg("a1", "p1", "assistant", rank=0, deleted=True),  # best-ranked, but deleted
        msg("p2", "a1", "prompter"),
        msg("a2", "p2", "assistant"),
        msg("b1", "p1", "assistant", rank=1),
    ]
    stats = OasstStats()
    assert texts(build_conversations(messages, "all", stats)) == [["p1", "b1"]]
    assert (stats.deleted, stats.dropped_below_removed) == (1, 2)


def test_rejected_message_and_its_subtree_are_dropped() -> None:
    messages = [
        msg("p1", None, "prompter"),
        msg("a1", "p1", "assistant", rank=0),
        msg("p2", "a1", "prompter", review_result=False),
        msg("a2", "p2", "assistant"),
        msg("b1", "p1", "assistant", rank=1, review_result=None),  # not reviewed: kept
    ]
    stats = OasstStats()
    assert texts(build_conversations(messages, "all", stats)) == [["p1", "a1"], ["p1", "b1"]]
    assert (stats.rejected, stats.dropped_below_removed) == (1, 1)


def test_best_mode_follows_the_best_ranked_reply() -> None:
    messages = [
        msg("p1", None, "prompter"),
        msg("a-low", "p1", "assistant", rank=2),
        msg("a-best", "p1", "assistant", rank=0),
        msg("a-unranked", "p1", "assistant", rank=None),  # unranked comes after ranked ones
        msg("p2", "a-best", "prompter"),
        msg("a2-b", "p2", "assistant"),  # both unranked: the smaller id wins
        msg("a2-a", "p2", "assistant"),
        msg("q", "a-low", "prompter"),
        msg("r", "q", "assistant"),
    ]
    stats = OasstStats()
    assert texts(build_conversations(messages, "best", stats)) == [["p1", "a-best", "p2", "a2-a"]]
    assert (stats.trees, stats.conversations) == (1, 1)


def test_unranked_replies_come_after_ranked_ones() -> None:
    messages = [
        msg("p1", None, "prompter"),
        msg("a", "p1", "assistant", rank=None),
        msg("b", "p1", "assistant", rank=5),
    ]
    assert texts(build_conversations(messages)) == [["p1", "b"]]


def test_trailing_prompter_is_trimmed_and_all_mode_deduplicates() -> None:
    messages = [
        msg("p1", None, "prompter"),
        msg("a1", "p1", "assistant", rank=0),
        msg("p2", "a1", "prompter"),  # two unanswered follow-ups: both trim to [p1, a1]
        msg("p3", "a1", "prompter"),
        msg("b1", "p1", "assistant", rank=1),
    ]
    assert texts(build_conversations(messages, "best")) == [["p1", "a1"]]
    assert texts(build_conversations(messages, "all")) == [["p1", "a1"], ["p1", "b1"]]


def test_prompter_without_answer_gives_nothing() -> None:
    stats = OasstStats()
    assert build_conversations([msg("p1", None, "prompter")], "all", stats) == []
    assert (stats.trees, stats.conversations) == (1, 0)


def test_broken_alternation_is_cut_at_the_break() -> None:
    messages = [
        msg("p1", None, "prompter"),
        msg("a1", "p1", "assistant"),
        msg("a2", "a1", "assistant"),  # an assistant answering an assistant: not a dialogue
        msg("p2", "a2", "prompter"),
        msg("a3", "p2", "assistant"),
        msg("r", None, "assistant", tree="t2"),  # a tree must start with the user
        msg("r2", "r", "prompter", tree="t2"),
        msg("r3", "r2", "assistant", tree="t2"),
    ]
    stats = OasstStats()
    assert texts(build_conversations(messages, "all", stats)) == [["p1", "a1"]]
    assert stats.broken_alternation == 2
    assert stats.dropped_below_removed == 4
    assert stats.trees == 1


def test_orphans_are_counted_and_skipped() -> None:
    messages = [
        msg("p1", None, "prompter"),
        msg("a1", "p1", "assistant"),
        msg("lost", "not-in-file", "assistant"),  # its parent was filtered out upstream
        msg("lost-reply", "lost", "prompter"),
        msg("c1", "c2", "prompter"),  # a cycle never reaches a root
        msg("c2", "c1", "assistant"),
    ]
    stats = OasstStats()
    assert texts(build_conversations(messages, "all", stats)) == [["p1", "a1"]]
    assert stats.orphans == 4


def test_output_is_sorted_and_independent_of_input_order() -> None:
    messages = []
    for tree in ["t3", "t1", "t2"]:
        messages += [
            msg(f"{tree}-p", None, "prompter", tree=tree),
            msg(f"{tree}-b", f"{tree}-p", "assistant", tree=tree),
            msg(f"{tree}-a", f"{tree}-p", "assistant", tree=tree),
        ]
    expected = build_conversations(messages, "all")
    assert [c["id"] for c in expected] == ["t1", "t1", "t2", "t2", "t3", "t3"]
    assert texts(expected)[:2] == [["t1-p", "t1-a"], ["t1-p", "t1-b"]]
    shuffled = messages[:]
    random.Random(0).shuffle(shuffled)
    assert build_conversations(shuffled, "all") == expected
    assert build_conversations(shuffled, "best") == build_conversations(messages, "best")


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="best, all"):
        build_conversations([], mode="longest")


# --- splitting -------------------------------------------------------------------------------


def test_tree_split_is_a_stable_hash() -> None:
    # Pinned values: a change here would silently move trees between train and val.
    digest = hashlib.sha256(b"e0cf4fa2-e944-44fb-b502-11f155062092").digest()
    position = int.from_bytes(digest[:8], "big") / 2**64 * 100
    tree = "e0cf4fa2-e944-44fb-b502-11f155062092"
    assert tree_split(tree, position + 0.001) == "val"
    assert tree_split(tree, position - 0.001) == "train"
    assert tree_split(tree, 0) == "train"
    assert tree_split(tree, 100) == "val"


def test_tree_split_proportion() -> None:
    ids = [f"tree-{i}" for i in range(20_000)]
    val = sum(tree_split(i, 10) == "val" for i in ids)
    assert 1_800 < val < 2_200


@pytest.mark.parametrize("bad", [-1, 100.5])
def test_tree_split_rejects_bad_percent(bad: float) -> None:
    with pytest.raises(ValueError, match="val_percent"):
        tree_split("t", bad)


# --- the real slice in the shared mirror -----------------------------------------------------


@needs_mirror
def test_mirror_slice_counts() -> None:
    messages, stats = read_messages(MIRROR_FILE)
    assert (stats.lines, stats.messages, stats.malformed_lines) == (2022, 2022, 0)

    best_stats = dataclass_copy(stats)
    best = build_conversations(messages, "best", best_stats)
    assert best_stats.trees == 188  # trees with a prompter root
    assert best_stats.orphans == 3  # English replies to non-English parents
    assert (best_stats.deleted, best_stats.rejected) == (40, 46)  # 53 rejected, 7 also deleted
    assert len(best) == best_stats.conversations == 188  # one per tree
    assert len({c["id"] for c in best}) == 188

    every = build_conversations(messages, "all")
    assert len(every) == 914
    assert {c["id"] for c in every} == {c["id"] for c in best}
    for c in every:
        roles = [m["role"] for m in c["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant"


@needs_mirror
def test_mirror_split_never_puts_a_tree_in_both() -> None:
    messages, _ = read_messages(MIRROR_FILE)
    every = build_conversations(messages, "all")
    split_of: dict[str, set[str]] = {}
    for c in every:
        split_of.setdefault(c["id"], set()).add(tree_split(c["id"], 10))
    assert all(len(splits) == 1 for splits in split_of.values())
    val_trees = {t for t, splits in split_of.items() if splits == {"val"}}
    assert len(val_trees) == 16  # of 188: both splits are non-empty
    assert sum(c["id"] in val_trees for c in every) == 93


def dataclass_copy(stats: OasstStats) -> OasstStats:
    return OasstStats(**stats.as_dict())


# --- property: any tree gives well-formed conversations --------------------------------------


@st.composite
def random_forest(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Up to a few trees of random shape, roles, flags and ranks; sometimes an orphan."""
    messages: list[dict[str, Any]] = []
    for t in range(draw(st.integers(1, 3))):
        tree: list[dict[str, Any]] = []
        for i in range(draw(st.integers(1, 25))):
            parent = None if i == 0 else tree[draw(st.integers(0, i - 1))]
            if parent is None:
                proper = "prompter"
            else:
                proper = "assistant" if parent["role"] == "prompter" else "prompter"
            # Mostly proper alternation, sometimes not, to exercise the pruning.
            role = draw(st.sampled_from([proper] * 4 + ["prompter", "assistant"]))
            tree.append(
                msg(
                    f"t{t}-m{i}",
                    None if parent is None else parent["message_id"],
                    role,
                    tree=f"t{t}",
                    rank=draw(st.none() | st.integers(0, 3)),
                    deleted=draw(st.sampled_from([False] * 5 + [True])),
                    review_result=draw(st.sampled_from([True] * 5 + [None, False])),
                )
            )
        messages += tree
    if draw(st.booleans()):
        messages.append(msg("orphan", "missing", "assistant"))
    return draw(st.permutations(messages))


@settings(max_examples=100, deadline=None)
@given(random_forest())
def test_conversations_always_alternate_user_first_assistant_last(
    messages: list[dict[str, Any]],
) -> None:
    by_id = {m["message_id"]: m for m in messages}

    def removed(mid: str | None) -> bool:
        # True if this message or any ancestor is deleted or rejected.
        while mid is not None and mid in by_id:
            m = by_id[mid]
            if m["deleted"] or m["review_result"] is False:
                return True
            mid = m["parent_id"]
        return False

    best = build_conversations(messages, "best")
    every = build_conversations(messages, "all")
    for c in every:
        roles = [m["role"] for m in c["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        ids = [m["content"] for m in c["messages"]]  # text == message id in these trees
        assert by_id[ids[0]]["parent_id"] is None
        assert all(by_id[b]["parent_id"] == a for a, b in zip(ids, ids[1:], strict=False))
        assert not any(removed(i) for i in ids)
    assert len(every) == len({tuple(texts([c])[0]) for c in every})  # no duplicates
    assert len(best) == len({c["id"] for c in best})  # at most one per tree
    assert all(c in every for c in best)  # the best path is one of the paths
    assert {c["id"] for c in best} == {c["id"] for c in every}
