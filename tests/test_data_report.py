"""Tests for bardlet.data.report: the polars data report over token shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bardlet.data.report import HISTOGRAM_EDGES, TOP_TOKENS, data_report, split_report
from bardlet.data.shards import Row, write_split
from bardlet.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    # A tiny tokenizer: 256 bytes, a few merges, the default special tokens. Quick to train.
    return Tokenizer.train(["the cat sat on the mat " * 20], vocab_size=270)


def hist(stats: dict) -> dict[tuple[int, int | None], int]:
    return {(b["lo"], b["hi"]): b["rows"] for b in stats["length_histogram"] if b["rows"]}


def write_shards(root: Path, tok: Tokenizer) -> None:
    a, b, c = (ord(ch) for ch in "abc")
    bos, end = tok.special_id("<|bos|>"), tok.special_id("<|end|>")
    pretrain_train = [
        Row("p/0", [a]),  # length 1
        Row("p/1", [a, b]),  # 2
        Row("p/2", [a, b, c]),  # 3
        Row("p/3", [a] * 5),  # 5
        Row("p/4", [c] * 9),  # 9
    ]
    # rows_per_file=2: three files, so the report must read them all.
    write_split(pretrain_train, root / "pretrain/train", "h", tok.vocab_size, rows_per_file=2)
    write_split([Row("v/0", [b, b])], root / "pretrain/val", "h", tok.vocab_size)
    sft_train = [
        Row("s/0", [bos, a, end, b, b, end], [False, False, False, True, True, True]),
        Row("s/1", [bos, c, end, a, end], [False, False, False, True, True]),
    ]
    write_split(sft_train, root / "sft/train", "h", tok.vocab_size)


def test_counts_lengths_and_histogram(tmp_path: Path, tok: Tokenizer) -> None:
    write_shards(tmp_path, tok)
    report = data_report(tmp_path, tok)
    assert set(report) == {"pretrain", "sft"}
    assert set(report["pretrain"]) == {"train", "val"}
    assert set(report["sft"]) == {"train"}  # a missing split is left out, not an error

    train = report["pretrain"]["train"]
    assert train["files"] == 3
    assert (train["rows"], train["tokens"]) == (5, 20)
    assert (train["min_len"], train["median_len"], train["max_len"]) == (1, 3.0, 9)
    assert train["mean_len"] == 4.0
    assert hist(train) == {(0, 1): 1, (1, 2): 1, (2, 4): 1, (4, 8): 1, (8, 16): 1}
    assert len(train["length_histogram"]) == len(HISTOGRAM_EDGES)  # every bucket, empty or not
    assert train["length_histogram"][-1]["hi"] is None
    assert train["text_bytes"] == 20 and train["bytes_per_token"] == 1.0  # byte tokens only
    assert "assistant_tokens" not in train

    val = report["pretrain"]["val"]
    assert (val["rows"], val["tokens"], val["median_len"]) == (1, 2, 2.0)


def test_top_tokens_are_counted_decoded_and_ordered(tmp_path: Path, tok: Tokenizer) -> None:
    write_shards(tmp_path, tok)
    top = data_report(tmp_path, tok)["pretrain"]["train"]["top_tokens"]
    # a: 1+1+1+5 = 8, c: 1+9 = 10, b: 1+1 = 2
    assert [(t["text"], t["count"]) for t in top] == [("c", 10), ("a", 8), ("b", 2)]
    assert [t["id"] for t in top] == [ord("c"), ord("a"), ord("b")]
    assert top[0]["share"] == 0.5


def test_top_tokens_keep_twenty_and_break_ties_by_id(tmp_path: Path, tok: Tokenizer) -> None:
    ids = list(range(60, 0, -1))  # ids 60..1, each once: all tied
    write_split([Row("x", ids)], tmp_path / "pretrain/train", "h", tok.vocab_size)
    top = data_report(tmp_path, tok)["pretrain"]["train"]["top_tokens"]
    assert [t["id"] for t in top] == list(range(1, TOP_TOKENS + 1))
    assert top[-1]["text"] == chr(TOP_TOKENS)


def test_chat_split_reports_the_assistant_share(tmp_path: Path, tok: Tokenizer) -> None:
    write_shards(tmp_path, tok)
    sft = data_report(tmp_path, tok)["sft"]["train"]
    assert (sft["rows"], sft["tokens"]) == (2, 11)
    assert sft["assistant_tokens"] == 5
    assert sft["assistant_share"] == round(5 / 11, 4)
    # Special tokens stand for no text: only the 5 byte tokens count as text.
    assert sft["text_bytes"] == 5
    top = {t["text"]: t["count"] for t in sft["top_tokens"]}
    assert top["<|end|>"] == 4 and top["<|bos|>"] == 2


def test_partial_utf8_tokens_are_shown_escaped(tmp_path: Path, tok: Tokenizer) -> None:
    e_acute = "é".encode()  # two byte tokens, neither a character on its own
    write_split([Row("x", list(e_acute) * 3)], tmp_path / "pretrain/val", "h", tok.vocab_size)
    top = data_report(tmp_path, tok)["pretrain"]["val"]["top_tokens"]
    assert sorted(t["text"] for t in top) == ["\\xa9", "\\xc3"]


def test_empty_split_reports_zeros(tmp_path: Path, tok: Tokenizer) -> None:
    write_split([], tmp_path / "sft/val", "h", tok.vocab_size)
    stats = split_report(tmp_path / "sft/val", tok)
    assert (stats["files"], stats["rows"], stats["tokens"], stats["max_len"]) == (0, 0, 0, 0)


def test_no_splits_is_a_clear_error(tmp_path: Path, tok: Tokenizer) -> None:
    with pytest.raises(FileNotFoundError, match="dvc repro shard"):
        data_report(tmp_path, tok)


def test_report_is_json_with_numbers_first_for_dvc(tmp_path: Path, tok: Tokenizer) -> None:
    write_shards(tmp_path, tok)
    report = json.loads(json.dumps(data_report(tmp_path, tok)))
    for splits in report.values():
        for stats in splits.values():
            # `dvc metrics show` keeps numbers and drops lists: every other value is a number.
            for key, value in stats.items():
                if isinstance(value, list):
                    assert key in ("length_histogram", "top_tokens")
                else:
                    assert isinstance(value, int | float) and not isinstance(value, bool), key
