"""Byte-level BPE (byte pair encoding): train, encode, decode, save, load.

How it works, in four sentences:

1. Text is UTF-8 bytes, so the first 256 token ids are the 256 possible byte values. Starting
   from bytes (not characters) means *every* string can be encoded, emoji and Chinese included,
   and nothing is ever "unknown".
2. A regex (the pre-tokenizer ``pattern``) first cuts text into chunks: words with their leading
   space, runs of digits, punctuation, whitespace. Merges never cross chunk boundaries, so a token
   never glues the end of one word to the start of the next.
3. Training repeatedly finds the most frequent adjacent pair of tokens and replaces it with a new
   token. Merge ``i`` creates token id ``256 + i``.
4. Encoding replays the learned merges on each chunk, earliest-learned (lowest rank) first.

Special tokens (``<|bos|>``, ``<|user|>``, ...) get the ids right after the merges. ``encode``
never produces them, even when the text contains the string ``"<|assistant|>"``: a chat template
must add them explicitly with :meth:`Tokenizer.special_id`, so user text cannot forge a turn.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import chain, pairwise
from pathlib import Path
from typing import Any

import regex

# The GPT-4 (cl100k) pre-tokenizer pattern. Alternatives, tried left to right at each position:
#   's 't 'll 've 're ...          English contractions, case-insensitive
#   an optional non-letter + letters   "Hello", " world", "(word"
#   1-3 digits                     numbers are split into groups of at most three
#   optional space + punctuation   " ...", "!!\n"
#   whitespace ending in newlines, whitespace not followed by text, other whitespace.
# `?+`, `++` and `*+` are possessive (no backtracking): same matches as the greedy forms here,
# but faster. (`{1,3}+` is left out on purpose: in the Oniguruma syntax that Hugging Face
# `tokenizers` uses it would mean "repeat {1,3} one or more times".)
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# Speed-up for pure-ASCII text (most English): the same pattern spelled with ASCII classes, run
# by the stdlib `re` engine, which is about 3x faster than `regex` here. On ASCII input it cuts
# exactly the same chunks: the only ASCII letters are A-Z a-z, the only ASCII digits 0-9, and
# `\s` with re.ASCII is the same set as `regex`'s Unicode `\s` restricted to ASCII (a test
# checks this). Non-ASCII text and custom patterns always use the full Unicode pattern.
_GPT4_PATTERN_ASCII = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?+[A-Za-z]++|[0-9]{1,3}"""
    r"""| ?[^\sA-Za-z0-9]++[\r\n]*+|\s*[\r\n]|\s+(?!\S)|\s+"""
)
_ASCII_FAST_PATTERNS = {GPT4_PATTERN: re.compile(_GPT4_PATTERN_ASCII, re.ASCII)}

DEFAULT_SPECIAL_TOKENS = (
    "<|bos|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|pad|>",
)

FORMAT_NAME = "bardlet-bpe"
FORMAT_VERSION = 1
MAX_VOCAB_SIZE = 65536  # ids must fit in uint16 token shards

# Chunks longer than this (in bytes) are encoded with a priority queue instead of repeated scans,
# so a 1 MB "word" costs O(n log n) instead of O(n * merges).
_LONG_CHUNK = 64
# Encode cache: chunk string -> token ids. Natural text repeats the same few thousand chunks
# ("the", " and", "\n"), so after warm-up almost every chunk is a dict lookup. Bounded so that
# encoding an endless stream of random text cannot eat all memory.
_CACHE_LIMIT = 200_000


class TokenizerFileError(ValueError):
    """A tokenizer file is missing, malformed, or from an unsupported format version."""


def _check_utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text``, or a ValueError that says clearly what is wrong with it."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start : err.end]
        raise ValueError(
            f"text is not valid Unicode and cannot be encoded as UTF-8: lone surrogate "
            f"{', '.join(f'U+{ord(ch):04X}' for ch in bad)} at position {err.start} "
            f"(decode bytes with errors='replace' or fix the source)"
        ) from None


class _Splitter:
    """The pre-tokenizer: cuts text into chunks with ``pattern``."""

    def __init__(self, pattern: str) -> None:
        self.compiled = regex.compile(pattern)
        self.ascii_compiled = _ASCII_FAST_PATTERNS.get(pattern)

    def __call__(self, text: str) -> list[str]:
        # str.isascii() is O(1) in CPython (strings remember whether they are ASCII).
        if self.ascii_compiled is not None and text.isascii():
            return _split_chunks(self.ascii_compiled, text)
        return _split_chunks(self.compiled, text)


def _split_chunks(compiled: regex.Pattern[str] | re.Pattern[str], text: str) -> list[str]:
    """Cut text into pre-tokenizer chunks; text the pattern does not match becomes its own chunk.

    With the GPT-4 pattern every character is matched, so the fast ``findall`` result already
    covers the whole text. A custom pattern might skip characters; then we keep the gaps too
    (like Hugging Face's ``Split(behavior="Isolated")``), so no text is ever silently dropped.
    """
    chunks: list[str] = compiled.findall(text)
    if sum(map(len, chunks)) == len(text):
        return chunks
    chunks = []
    pos = 0
    for m in compiled.finditer(text):
        if m.start() > pos:
            chunks.append(text[pos : m.start()])
        if m.end() > m.start():
            chunks.append(m.group())
        pos = m.end()
    if pos < len(text):
        chunks.append(text[pos:])
    return chunks


def _learn_merges(chunk_counts: Counter[str], num_merges: int) -> list[tuple[int, int]]:
    """The BPE training loop: return up to ``num_merges`` merges learned from chunk frequencies.

    The naive loop recounts every pair in the whole corpus for each merge: O(merges * corpus).
    Here we count pairs once and then keep the counts up to date:

    - ``pair_counts[pair]``: how often the pair occurs, weighted by chunk frequency;
    - ``where[pair]``: indices of the chunks that contain it, so a merge only visits those;
    - a heap of ``(-count, pair)`` to find the most frequent pair in O(log n). Updating an entry
      inside a heap is awkward, so we never do: stale entries stay in and are checked ("lazy
      invalidation") when they reach the top.

    Ties go to the smallest ``(a, b)``, which makes training deterministic on every machine.

    A pair (a, b) is stored as the single int ``a << 16 | b`` (ids are < 65536): ints hash faster
    than tuples, and they sort the same way as the tuples, which the tie-break relies on.
    """
    # Each distinct chunk is trained once, weighted by how often it occurs. One-byte chunks have
    # no pairs, so they can be left out.
    words: list[list[int]] = []
    freqs: list[int] = []
    for chunk, freq in chunk_counts.items():
        data = chunk.encode("utf-8")
        if len(data) > 1:
            words.append(list(data))
            freqs.append(freq)

    pair_counts: defaultdict[int, int] = defaultdict(int)
    where: defaultdict[int, set[int]] = defaultdict(set)
    for i, (word, freq) in enumerate(zip(words, freqs, strict=True)):
        for a, b in pairwise(word):
            key = a << 16 | b  # pack the pair into one int: faster dict keys than tuples
            pair_counts[key] += freq
            where[key].add(i)

    heap = [(-count, key) for key, count in pair_counts.items()]
    heapq.heapify(heap)

    token_bytes = [bytes([i]) for i in range(256)]
    known_bytes = set(token_bytes)
    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges and heap:
        neg_count, key = heapq.heappop(heap)
        count = pair_counts.get(key, 0)
        if count <= 0:
            continue  # the pair no longer occurs anywhere
        if count != -neg_count:
            # Stale entry: the count only went down since it was pushed. Re-queue the true count.
            heapq.heappush(heap, (-count, key))
            continue
        a, b = key >> 16, key & 0xFFFF
        new_bytes = token_bytes[a] + token_bytes[b]
        if new_bytes in known_bytes:
            # Another merge path already made a token with exactly these bytes (say "t"+"he" after
            # "th"+"e"). Two ids for one string would make decode ambiguous and break the Hugging
            # Face export (its vocab maps strings to ids), so this pair is never merged.
            continue

        new_id = 256 + len(merges)
        merges.append((a, b))
        token_bytes.append(new_bytes)
        known_bytes.add(new_bytes)

        # Replace (a, b) by new_id in every chunk that contains it, updating only the counts
        # of the pairs next to each merge: (left, a) becomes (left, new), (b, right) becomes
        # (new, right). Everything else in the corpus is untouched.
        grown: set[int] = set()  # pairs with new_id; their counts only grow during this merge
        for i in where.pop(key):
            word = words[i]
            freq = freqs[i]
            j = 0
            while True:
                try:
                    j = word.index(a, j)
                except ValueError:
                    break
                if j + 1 < len(word) and word[j + 1] == b:
                    if j > 0:
                        left = word[j - 1]
                        pair_counts[left << 16 | a] -= freq
                        k = left << 16 | new_id
                        pair_counts[k] += freq
                        where[k].add(i)
                        grown.add(k)
                    if j + 2 < len(word):
                        right = word[j + 2]
                        pair_counts[b << 16 | right] -= freq
                        k = new_id << 16 | right
                        pair_counts[k] += freq
                        where[k].add(i)
                        grown.add(k)
                    word[j : j + 2] = [new_id]
                j += 1
        del pair_counts[key]
        for k in grown:
            count = pair_counts[k]
            if count > 0:
                heapq.heappush(heap, (-count, k))
    return merges


class Tokenizer:
    """A trained byte-level BPE tokenizer. Build one with :meth:`train` or :meth:`load`."""

    def __init__(
        self,
        merges: Sequence[tuple[int, int]],
        pattern: str = GPT4_PATTERN,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    ) -> None:
        self.merges: list[tuple[int, int]] = [(int(a), int(b)) for a, b in merges]
        self.pattern: str = pattern
        special_tokens = tuple(special_tokens)
        _validate(self.merges, special_tokens)
        first_special = 256 + len(self.merges)
        self.special_tokens: dict[str, int] = {
            name: first_special + i for i, name in enumerate(special_tokens)
        }
        self._split = _Splitter(pattern)
        # rank of a mergeable pair = index of its merge; the merged token id is 256 + rank.
        self._ranks: dict[tuple[int, int], int] = {pair: i for i, pair in enumerate(self.merges)}
        # id -> bytes for every token, special tokens as their UTF-8 names (decode needs these).
        vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            vocab.append(vocab[a] + vocab[b])
        vocab.extend(name.encode("utf-8") for name in self.special_tokens)
        self._vocab: list[bytes] = vocab
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        pattern: str = GPT4_PATTERN,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    ) -> Tokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``texts``.

        ``vocab_size`` counts everything: the 256 byte tokens, the merges and the special tokens.
        """
        special_tokens = tuple(special_tokens)
        _validate([], special_tokens)
        low = 256 + len(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
        if not low <= vocab_size <= MAX_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must be between {low} (256 bytes + {len(special_tokens)} special "
                f"tokens) and {MAX_VOCAB_SIZE}, got {vocab_size}"
            )
        if isinstance(texts, str):
            texts = [texts]  # a bare string would otherwise be iterated character by character
        split = _Splitter(pattern)
        chunk_counts: Counter[str] = Counter()
        for text in texts:
            _check_utf8(text)
            chunk_counts.update(split(text))

        num_merges = vocab_size - low
        merges = _learn_merges(chunk_counts, num_merges)
        if len(merges) < num_merges:
            reached = low + len(merges)
            raise ValueError(
                f"the training text only supports {len(merges)} of the {num_merges} merges needed "
                f"(vocab_size {reached} of {vocab_size}): lower vocab_size to at most {reached} "
                f"or add more text"
            )
        return cls(merges, pattern, special_tokens)

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        """Number of token ids: 256 bytes + merges + special tokens."""
        return len(self._vocab)

    @property
    def hash(self) -> str:
        """sha256 (hex) of the canonical JSON content; identical across save/load and machines."""
        canonical = json.dumps(
            self._to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={list(self.special_tokens)})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self._to_dict() == other._to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable-looking object: not hashable

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text``. Never emits special tokens: their names encode as plain text."""
        chunks = self._split(text)
        cache = self._cache
        # Run BPE only on chunks never seen before; everything else is a dict lookup.
        unique = set(chunks)
        missing = unique.difference(cache)
        if missing:
            if len(cache) + len(missing) > _CACHE_LIMIT:
                # Simplest bound: start over rather than grow without limit.
                cache.clear()
                missing = unique
            for chunk in missing:
                cache[chunk] = self._encode_chunk(_check_utf8(chunk))
        # chain + map run in C: much faster than a Python loop with ids.extend().
        return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for each text (sharing one chunk cache)."""
        return [self.encode(text) for text in texts]

    def _encode_chunk(self, data: bytes) -> list[int]:
        """Apply the merges to one chunk, lowest rank (earliest learned) first."""
        if len(data) > _LONG_CHUNK:
            return self._encode_long_chunk(data)
        return self._encode_short_chunk(data)

    def _encode_short_chunk(self, data: bytes) -> list[int]:
        """The textbook loop: merge the lowest-rank pair everywhere, repeat until none is left."""
        ids = list(data)
        ranks = self._ranks
        while len(ids) >= 2:
            # The pair that was learned first among the adjacent pairs present.
            pair = min(pairwise(ids), key=lambda p: ranks.get(p, MAX_VOCAB_SIZE))
            rank = ranks.get(pair)
            if rank is None:
                break  # no adjacent pair is a merge: done
            new_id = 256 + rank
            merged: list[int] = []
            i = 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            ids = merged
        return ids

    def _encode_long_chunk(self, data: bytes) -> list[int]:
        """Same result as ``_encode_short_chunk``, in O(n log n) for very long chunks.

        Tokens form a doubly linked list; a heap holds ``(rank, position)`` of every mergeable
        adjacent pair, so the lowest rank, leftmost pair comes out first. Entries made stale by a
        neighbouring merge are detected (the pair at that position changed) and skipped.
        """
        ids = list(data)
        n = len(ids)
        prev = list(range(-1, n - 1))  # prev[0] == -1: no neighbour
        nxt = [*range(1, n), -1]  # -1: no neighbour
        alive = [True] * n
        ranks = self._ranks
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get((ids[i], ids[i + 1]))) is not None]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j < 0 or ranks.get((ids[i], ids[j])) != rank:
                continue  # stale: one of the two tokens was merged away in the meantime
            ids[i] = 256 + rank
            alive[j] = False
            k = nxt[j]
            nxt[i] = k
            if k >= 0:
                prev[k] = i
                r = ranks.get((ids[i], ids[k]))
                if r is not None:
                    heapq.heappush(heap, (r, i))
            p = prev[i]
            if p >= 0:
                r = ranks.get((ids[p], ids[i]))
                if r is not None:
                    heapq.heappush(heap, (r, p))
        return [t for t, keep in zip(ids, alive, strict=True) if keep]

    # ------------------------------------------------------------------ decoding

    def special_id(self, name: str) -> int:
        """The id of a special token such as ``"<|assistant|>"``."""
        try:
            return self.special_tokens[name]
        except KeyError:
            raise ValueError(
                f"unknown special token {name!r}; this tokenizer has {list(self.special_tokens)}"
            ) from None

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token gives the UTF-8 bytes of its name)."""
        self._check_id(token_id)
        return self._vocab[token_id]

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text for any sequence of ids. Byte sequences that are not valid UTF-8 (a token sequence
        cut in the middle of a character, say) become U+FFFD with the default ``errors``."""
        ids = list(ids)
        vocab = self._vocab
        try:
            if ids and (min(ids) < 0 or max(ids) >= len(vocab)):
                raise IndexError
            data = b"".join([vocab[i] for i in ids])
        except (IndexError, TypeError):
            for i in ids:
                self._check_id(i)
            raise
        return data.decode("utf-8", errors=errors)

    def _check_id(self, token_id: int) -> None:
        try:
            valid = 0 <= token_id < len(self._vocab) and int(token_id) == token_id
        except TypeError:
            valid = False
        if not valid:
            raise ValueError(
                f"token id {token_id!r} is out of range: this tokenizer has vocab_size "
                f"{len(self._vocab)} (valid ids 0..{len(self._vocab) - 1})"
            )

    # ------------------------------------------------------------------ save / load

    def _to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "merges": [[a, b] for a, b in self.merges],
            "special_tokens": dict(self.special_tokens),
        }

    def save(self, path: str | Path) -> None:
        """Write ``bpe.json`` atomically: a temp file in the same folder, then ``os.replace``,
        so a crash never leaves a half-written tokenizer behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        d = self._to_dict()
        # Hand-formatted so a person can read it: one merge per line.
        lines = ["{"]
        for key in ("format", "version", "pattern", "special_tokens"):
            lines.append(f"  {json.dumps(key)}: {json.dumps(d[key], ensure_ascii=False)},")
        merges = ",\n".join(f"    [{a}, {b}]" for a, b in self.merges)
        lines.append('  "merges": [' + ("\n" + merges + "\n  ]" if merges else "]"))
        lines.append("}\n")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a ``bpe.json`` written by :meth:`save`. Plain JSON: nothing is executed."""
        path = Path(path)
        if path.is_dir():
            path = path / "bpe.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TokenizerFileError(f"no tokenizer file at {path}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TokenizerFileError(f"{path} is not a valid JSON tokenizer file: {err}") from None
        return cls._from_dict(d, source=str(path))

    @classmethod
    def _from_dict(cls, d: Any, source: str = "tokenizer data") -> Tokenizer:
        def bad(msg: str) -> TokenizerFileError:
            return TokenizerFileError(f"{source}: {msg}")

        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise bad(f'not a bardlet tokenizer (expected "format": "{FORMAT_NAME}")')
        if d.get("version") != FORMAT_VERSION:
            raise bad(
                f"unsupported version {d.get('version')!r}; this bardlet reads version "
                f"{FORMAT_VERSION}"
            )
        pattern, merges, specials = d.get("pattern"), d.get("merges"), d.get("special_tokens")
        if not isinstance(pattern, str):
            raise bad('"pattern" must be a string')
        try:
            regex.compile(pattern)
        except regex.error as err:
            raise bad(f'"pattern" is not a valid regex: {err}') from None
        if not isinstance(merges, list) or not all(
            isinstance(m, list) and len(m) == 2 and all(type(x) is int for x in m) for m in merges
        ):
            raise bad('"merges" must be a list of [int, int] pairs')
        if not isinstance(specials, dict):
            raise bad('"special_tokens" must be an object of name -> id')
        names = sorted(
            specials, key=lambda name: specials[name] if type(specials[name]) is int else -1
        )
        first = 256 + len(merges)
        if [specials[name] for name in names] != list(range(first, first + len(names))):
            raise bad(f"special token ids must be {first}, {first + 1}, ... right after the merges")
        try:
            return cls([(a, b) for a, b in merges], pattern, names)
        except ValueError as err:
            raise bad(str(err)) from None


def _validate(merges: list[tuple[int, int]], special_tokens: tuple[str, ...]) -> None:
    """Check the invariants the rest of the code relies on."""
    for i, (a, b) in enumerate(merges):
        if not (0 <= a < 256 + i and 0 <= b < 256 + i):
            raise ValueError(
                f"merge {i} ({a}, {b}) uses an id that does not exist yet (ids must be < {256 + i})"
            )
    if len(special_tokens) != len(set(special_tokens)):
        raise ValueError("special token names must be unique")
    for name in special_tokens:
        if not isinstance(name, str) or not name:
            raise ValueError(f"special token names must be non-empty strings, got {name!r}")
        _check_utf8(name)
    if 256 + len(merges) + len(special_tokens) > MAX_VOCAB_SIZE:
        raise ValueError(f"vocab size must be at most {MAX_VOCAB_SIZE}")
