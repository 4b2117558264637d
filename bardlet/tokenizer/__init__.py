"""bardlet's byte-level BPE tokenizer (see ``bpe.py`` for how it works), and a Hugging Face
``tokenizer.json`` behind the same methods (``hf.py``) for pretrained models.

>>> tok = Tokenizer.train([text], vocab_size=4096)
>>> tok.decode(tok.encode("Hello")) == "Hello"
"""

from pathlib import Path

from bardlet.tokenizer.bpe import (
    DEFAULT_SPECIAL_TOKENS,
    GPT4_PATTERN,
    KNOWN_PATTERNS,
    Tokenizer,
    TokenizerFileError,
)
from bardlet.tokenizer.hf import HFTokenizer

AnyTokenizer = Tokenizer | HFTokenizer


def load_tokenizer(path: str | Path) -> AnyTokenizer:
    """bpe.json (ours) or tokenizer.json (Hugging Face's); a folder: its bpe.json if it has
    one (an exported bardlet model has both), else its tokenizer.json."""
    path = Path(path)
    if path.is_dir():
        path = path / "bpe.json" if (path / "bpe.json").is_file() else path / "tokenizer.json"
    return HFTokenizer.load(path) if path.name == "tokenizer.json" else Tokenizer.load(path)


__all__ = [
    "DEFAULT_SPECIAL_TOKENS",
    "GPT4_PATTERN",
    "KNOWN_PATTERNS",
    "AnyTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "TokenizerFileError",
    "load_tokenizer",
]
