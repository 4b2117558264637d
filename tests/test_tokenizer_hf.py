"""The Hugging Face export encodes exactly like bardlet's tokenizer."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bardlet.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer
from bardlet.tokenizer.hf import bytes_to_unicode, export_hf

hf_tokenizers = pytest.importorskip("tokenizers")

REPO = Path(__file__).parents[1]


def data_dir() -> Path | None:
    """The shared data mirror: $BARDLET_DATA_MIRROR if it is a folder, else ../shared/data."""
    env = os.environ.get("BARDLET_DATA_MIRROR", "")
    for candidate in (Path(env) if env else None, REPO / ".." / "shared" / "data"):
        if candidate is not None and candidate.is_dir():
            return candidate
    return None


def shakespeare() -> str:
    root = data_dir()
    path = root / "tinyshakespeare" / "input.txt" if root else None
    if path is None or not path.is_file():
        pytest.skip("Tiny Shakespeare not found (set BARDLET_DATA_MIRROR)")
    return path.read_text(encoding="utf-8")


def oasst_texts() -> list[str]:
    root = data_dir()
    path = root / "oasst1" / "en-validation.jsonl" if root else None
    if path is None or not path.is_file():
        pytest.skip("OASST1 not found (set BARDLET_DATA_MIRROR)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, object]:
    """Our tokenizer (trained on Shakespeare + OASST1) and its export loaded by `tokenizers`."""
    tok = Tokenizer.train([shakespeare(), *oasst_texts()], vocab_size=4096)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    export_hf(tok, path)
    hf = hf_tokenizers.Tokenizer.from_file(str(path))
    # Match bardlet: special-token strings in the text are ordinary text.
    hf.encode_special_tokens = True
    return tok, hf


def hf_ids(hf: object, text: str) -> list[int]:
    return hf.encode(text, add_special_tokens=False).ids  # type: ignore[attr-defined]


def test_byte_table_is_a_bijection() -> None:
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


def test_vocab_and_specials_exported(pair: tuple[Tokenizer, object]) -> None:
    tok, hf = pair
    assert hf.get_vocab_size(with_added_tokens=True) == tok.vocab_size  # type: ignore[attr-defined]
    for name in DEFAULT_SPECIAL_TOKENS:
        assert hf.token_to_id(name) == tok.special_id(name)  # type: ignore[attr-defined]


def test_same_ids_on_shakespeare(pair: tuple[Tokenizer, object]) -> None:
    tok, hf = pair
    text = shakespeare()
    assert hf_ids(hf, text) == tok.encode(text)
    lines = text.splitlines(keepends=True)[:2000]
    assert [hf_ids(hf, line) for line in lines] == tok.encode_batch(lines)


def test_same_ids_on_oasst(pair: tuple[Tokenizer, object]) -> None:
    tok, hf = pair
    texts = oasst_texts()
    ours = tok.encode_batch(texts)
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]  # type: ignore[attr-defined]
    mismatches = [t for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0][:200]!r}"


# Unassigned code points (Cn) are left out: the `regex` module's Unicode tables are newer than
# those inside `tokenizers`, so the two pre-tokenizers may class a not-yet-assigned (in
# Python 3.11's Unicode 14) character differently. Every assigned code point encodes the same.
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(st.characters(blacklist_categories=("Cs", "Cn")), max_size=100))
def test_same_ids_on_any_text(pair: tuple[Tokenizer, object], text: str) -> None:
    tok, hf = pair
    ids = tok.encode(text)
    assert hf_ids(hf, text) == ids
    assert hf.decode(ids, skip_special_tokens=False) == text  # type: ignore[attr-defined]


def test_same_ids_on_long_chunks(pair: tuple[Tokenizer, object]) -> None:
    """Chunks far above the cap (bpe.MAX_CHUNK_CHARS): HF's second Split cuts them the same."""
    tok, hf = pair
    rng = random.Random(0)
    texts = [
        "x" * 200_000,
        "Hello " + "x" * 50_001 + " world",
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyzéßж", k=100_000)),  # one word, many pairs
        "".join(ch for ch in shakespeare()[:300_000] if ch.isalpha()),
        " " * 50_000 + "end",
        "!?" * 30_000,
        "\n" * 20_000,
        "日本語" * 10_000,
    ]
    for text in texts:
        ids = tok.encode(text)
        assert hf_ids(hf, text) == ids, text[:50]
        assert tok.decode(ids) == text


@pytest.mark.timeout(120)  # HF's own encode of it takes ~10 s
def test_training_on_a_10_million_character_message(tmp_path: Path) -> None:
    """One OASST message of 10,000,000 "x" (one chunk, cut by the cap) trains in seconds, and
    the export still encodes exactly like bardlet."""
    message = "x" * 10_000_000
    tok = Tokenizer.train([shakespeare(), *oasst_texts(), message], vocab_size=4096)
    export_hf(tok, tmp_path / "tokenizer.json")
    hf = hf_tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    hf.encode_special_tokens = True
    ids = tok.encode(message)
    assert len(ids) < 400_000  # runs of x got tokens of their own
    assert tok.decode(ids) == message
    assert hf_ids(hf, message) == ids
    text = "Short, ordinary text: " + shakespeare()[:2000]
    assert hf_ids(hf, text) == tok.encode(text)


def test_same_ids_across_code_points(pair: tuple[Tokenizer, object]) -> None:
    """Both regex engines (`regex` here, Oniguruma in HF) must agree on letters, digits and
    whitespace for every code point; a full sweep of all 1.1 M passes, this samples it."""
    tok, hf = pair
    code_points = [*range(0x800), *range(0x800, 0x110000, 89)]
    chars = [chr(cp) for cp in code_points if not 0xD800 <= cp < 0xE000]
    texts = [t for c in chars for t in (f"a{c}b", f" {c}{c} 1", f"'{c}", f"{c}\n x")]
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]  # type: ignore[attr-defined]
    ours = tok.encode_batch(texts)
    mismatches = [t for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[:5]!r}"


def test_special_token_strings(pair: tuple[Tokenizer, object]) -> None:
    """With encode_special_tokens=True, HF also treats "<|user|>" in text as plain text; by
    default HF would match it as the special token (bardlet's encode never does)."""
    tok, hf = pair
    text = "<|user|>Hi there<|end|><|assistant|>"
    assert hf_ids(hf, text) == tok.encode(text)
    hf.encode_special_tokens = False  # type: ignore[attr-defined]
    try:
        assert hf_ids(hf, text)[0] == tok.special_id("<|user|>")
    finally:
        hf.encode_special_tokens = True  # type: ignore[attr-defined]
    ids = [tok.special_id("<|user|>"), *tok.encode("Hi"), tok.special_id("<|end|>")]
    assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids)  # type: ignore[attr-defined]


def test_export_does_not_need_tokenizers_package() -> None:
    """bardlet/tokenizer may import only stdlib, regex and numpy (plus typer in the CLI)."""
    code = (
        "import sys; import bardlet.tokenizer, bardlet.tokenizer.hf; "
        "bad = [m for m in ('tokenizers', 'torch', 'tiktoken') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
