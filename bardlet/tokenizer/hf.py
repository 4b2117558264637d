"""Export a bardlet tokenizer as a Hugging Face ``tokenizer.json``.

The file is plain JSON written by hand (no ``tokenizers`` import needed here). Loaded with
``tokenizers.Tokenizer.from_file``, it encodes every text to exactly the ids that
:meth:`Tokenizer.encode` gives, because it describes the same three steps:

1. pre-tokenizer: ``Split`` with our regex (``behavior="Isolated"``: every match is a chunk),
   a second ``Split`` that cuts chunks longer than ``MAX_CHUNK_CHARS`` characters as ours does,
   then ``ByteLevel`` (``use_regex=False``), which only maps each UTF-8 byte to a printable
   character, the GPT-2 trick that lets a string-based vocab hold raw bytes;
2. model: BPE with our vocab (token bytes as those characters) and our merges, in rank order;
3. decoder: ``ByteLevel``, mapping the characters back to bytes.

One difference, on purpose: Hugging Face matches special tokens ("added tokens") inside the
input text, so ``hf.encode("<|user|>")`` gives the special id. bardlet's ``encode`` never emits a
special id (user text must not be able to forge a chat turn). To get bardlet's behaviour from
the exported file, set ``hf_tokenizer.encode_special_tokens = True`` before encoding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bardlet.files import write_text_atomic
from bardlet.tokenizer.bpe import MAX_CHUNK_CHARS, Tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by Hugging Face's ``ByteLevel``.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (control characters, space,
    ...) map to code points from U+0100 upward, so every byte becomes one visible character.
    A space becomes "Ġ", a newline "Ċ".
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def to_hf_dict(tok: Tokenizer) -> dict[str, Any]:
    """The ``tokenizer.json`` content as a dict."""
    byte_char = bytes_to_unicode()

    def as_text(token_id: int) -> str:
        return "".join(byte_char[b] for b in tok.token_bytes(token_id))

    num_regular = 256 + len(tok.merges)
    vocab: dict[str, int] = {}
    for token_id in range(num_regular):
        text = as_text(token_id)
        if text in vocab:
            # Hugging Face's vocab maps strings to ids, so two ids with the same bytes cannot be
            # represented. bardlet's trainer never makes such a pair; a hand-edited file might.
            raise ValueError(
                f"tokens {vocab[text]} and {token_id} have the same bytes "
                f"{tok.token_bytes(token_id)!r}: cannot export to a Hugging Face vocab"
            )
        vocab[text] = token_id

    added_tokens = [
        {
            "id": token_id,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for name, token_id in tok.special_tokens.items()
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": tok.pattern},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {  # bardlet's cap: a longer chunk is cut every MAX_CHUNK_CHARS characters
                    "type": "Split",
                    "pattern": {"Regex": f"[\\s\\S]{{1,{MAX_CHUNK_CHARS}}}"},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": False,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            # ignore_merges=True would emit a whole chunk as one token whenever it is in the
            # vocab, even if the merges would split it differently: not what bardlet does.
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[as_text(a), as_text(b)] for a, b in tok.merges],
        },
    }


def export_hf(tok: Tokenizer, path: str | Path) -> None:
    """Write ``tokenizer.json`` for Hugging Face ``tokenizers`` (atomically). ``path`` may be a
    directory, in which case the file is ``path/tokenizer.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_hf_dict(tok), ensure_ascii=False, indent=1)
    write_text_atomic(path, text)
