"""bardlet's byte-level BPE tokenizer (see ``bpe.py`` for how it works).

>>> tok = Tokenizer.train([text], vocab_size=4096)
>>> tok.decode(tok.encode("Hello")) == "Hello"
"""

from bardlet.tokenizer.bpe import (
    DEFAULT_SPECIAL_TOKENS,
    GPT4_PATTERN,
    KNOWN_PATTERNS,
    Tokenizer,
    TokenizerFileError,
)

__all__ = [
    "DEFAULT_SPECIAL_TOKENS",
    "GPT4_PATTERN",
    "KNOWN_PATTERNS",
    "Tokenizer",
    "TokenizerFileError",
]
