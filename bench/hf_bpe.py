"""Hugging Face `tokenizers` BPE trained as bardlet trains its own (GPT-4 split pattern, then
ByteLevel bytes; the same special tokens), for the tokenizer and data benches to compare with.

As a script, a whole process to time against `bardlet tokenizer train` (it imports nothing but
`tokenizers`): `python bench/hf_bpe.py FILE VOCAB_SIZE OUT_DIR PATTERN SPECIALS_JSON` trains on
FILE's texts and writes OUT_DIR/tokenizer.json.
"""

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_texts(path: Path) -> list[str]:
    """A file's texts: the "text" field of each line of a .jsonl file, else the whole file."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        return [raw]
    return [json.loads(line)["text"] for line in raw.split("\n") if line.strip()]


def train(texts: Iterable[str], vocab_size: int, pattern: str, special_tokens: list[str]) -> Any:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=special_tokens,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


if __name__ == "__main__":
    vocab_size, out = int(sys.argv[2]), Path(sys.argv[3])
    tokenizer = train(
        read_texts(Path(sys.argv[1])), vocab_size, sys.argv[4], json.loads(sys.argv[5])
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
