"""Hugging Face ``tokenizer.json`` both ways: export ours, and use theirs (`HFTokenizer`).

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

`HFTokenizer` goes the other way: a pretrained model's ``tokenizer.json`` (GPT-2's, Llama's,
SmolLM's) behind the interface of our `Tokenizer`, so shards, the chat template, evaluation
and the runtime take either. The chat template's markers are bardlet's six special tokens
(`DEFAULT_SPECIAL_TOKENS`). The rule for a foreign tokenizer (`with_chat_tokens`): a marker it
already has as a special token keeps its id; each one it lacks is added after its last id, in
the order of DEFAULT_SPECIAL_TOKENS, and the model's embedding grows by as many rows
(`GPT.resize_vocab`). User text never becomes a special token here either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bardlet.files import write_bytes_atomic, write_text_atomic
from bardlet.tokenizer.bpe import DEFAULT_SPECIAL_TOKENS, MAX_CHUNK_CHARS, Tokenizer


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


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` with the methods bardlet uses of a `Tokenizer`."""

    def __init__(self, text: str, source: str = "tokenizer.json") -> None:
        from tokenizers import Tokenizer as Fast

        try:
            self._fast = Fast.from_str(text)
        except Exception as error:  # noqa: BLE001 (the library raises plain Exception)
            raise ValueError(
                f"{source} is not a Hugging Face tokenizer.json ({str(error)[:160]}): "
                "use the file from the model's folder"
            ) from None
        self._fast.encode_special_tokens = True  # typed "<|user|>" stays text, as in ours
        self.text = text
        self.hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
        added = self._fast.get_added_tokens_decoder()
        self.special_tokens = {t.content: i for i, t in sorted(added.items()) if t.special}
        self.vocab_size = self._fast.get_vocab_size(with_added_tokens=True)
        self._bytes = [self._token_bytes(i) for i in range(self.vocab_size)]

    @classmethod
    def load(cls, path: str | Path) -> HFTokenizer:
        path = Path(path)
        return cls(path.read_text(encoding="utf-8"), str(path))

    def save(self, path: str | Path) -> None:
        write_bytes_atomic(path, self.text.encode("utf-8"))

    def _token_bytes(self, token_id: int) -> bytes:
        """What a token stands for, in bytes: byte-level vocabularies (GPT-2, Llama 3, SmolLM)
        spell bytes as GPT-2's printable characters; SentencePiece ones (Llama 2) write a
        space as U+2581 and unknown bytes as <0xNN>."""
        piece = self._fast.id_to_token(token_id) or ""
        if token_id in self.special_tokens.values():
            return piece.encode("utf-8")
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        char_byte = _CHAR_BYTE
        if all(c in char_byte for c in piece):
            return bytes(char_byte[c] for c in piece)
        return piece.replace("\u2581", " ").encode("utf-8")

    def encode(self, text: str) -> list[int]:
        return list(self._fast.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._fast.encode_batch(list(texts), add_special_tokens=False)]

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def byte_lengths(self) -> list[int]:
        special = set(self.special_tokens.values())
        return [0 if i in special else len(b) for i, b in enumerate(self._bytes)]

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        return b"".join(self._bytes[i] for i in ids).decode("utf-8", errors=errors)

    def special_id(self, name: str) -> int:
        try:
            return self.special_tokens[name]
        except KeyError:
            raise ValueError(
                f"unknown special token {name!r}; this tokenizer has {list(self.special_tokens)}"
            ) from None

    def with_chat_tokens(self) -> HFTokenizer:
        """This tokenizer with bardlet's chat markers: those it lacks added at the end (the
        rule in the module docstring). The same tokenizer when it has them all."""
        from tokenizers import AddedToken

        missing = [t for t in DEFAULT_SPECIAL_TOKENS if t not in self.special_tokens]
        if not missing:
            return self
        fast = type(self._fast).from_str(self.text)
        fast.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        return HFTokenizer(fast.to_str(pretty=True))


_CHAR_BYTE = {char: byte for byte, char in bytes_to_unicode().items()}
