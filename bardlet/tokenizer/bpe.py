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
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from itertools import chain, pairwise, repeat
from pathlib import Path
from typing import Any

import regex

from bardlet.defaults import DEFAULT_SPECIAL_TOKENS
from bardlet.files import write_text_atomic

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

# The pre-tokenizer patterns bardlet writes into a bpe.json, and so the only ones it loads from one
# (compared as exact strings). A pattern is a program for the regex engine: a crafted one (say with
# catastrophic backtracking) can make every encode hang, so a file must not bring its own.
# `Tokenizer.train` still takes any pattern for experiments in memory, but `save` refuses to write
# one that `load` would refuse. Add a pattern here only when bardlet itself starts writing it.
KNOWN_PATTERNS = frozenset({GPT4_PATTERN})

FORMAT_NAME = "bardlet-bpe"
FORMAT_VERSION = 1
MAX_VOCAB_SIZE = 65536  # ids must fit in uint16 token shards

# Chunks longer than this (in bytes) are encoded with a priority queue instead of repeated scans.
_LONG_CHUNK = 64
# The pre-tokenizer cuts a chunk longer than this many characters into pieces of at most this
# many (a "word" of 10 million "x" becomes 39,063 pieces): merges never span a cut. Without
# the cap, training on one giant chunk costs O(n^2) and a crafted message could stall it for
# hours. Ordinary text never reaches it (the longest chunk in Tiny Shakespeare and OASST1 is
# 183 bytes). The Hugging Face export and scripts/onnx_infer.py cut the same way.
MAX_CHUNK_CHARS = 256
# Encode cache: chunk string -> token ids. Natural text repeats the same few thousand chunks
# ("the", " and", "\n"), so after warm-up almost every chunk is a dict lookup. Bounded so that
# encoding an endless stream of random text cannot eat all memory.
_CACHE_LIMIT = 200_000
# Rank of a pair that is not a merge: larger than any real rank.
_NO_MERGE = MAX_VOCAB_SIZE
# When one encode call meets at least this many new chunks (a cold cache on a big text), the
# chunks of up to _BATCH_WIDTH bytes, nearly all of them in natural text, are merged together
# with numpy (see _BatchMerger); fewer chunks are faster with the plain loop.
_BATCH_MIN_CHUNKS = 1000
_BATCH_WIDTH = 16


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
        # The GPT-4 pattern matches every character (its last alternatives catch letters,
        # digits, whitespace and everything else), so its chunks need no gap check.
        self.complete = pattern == GPT4_PATTERN

    def __call__(self, text: str) -> list[str]:
        # str.isascii() is O(1) in CPython (strings remember whether they are ASCII).
        if self.ascii_compiled is not None and text.isascii():
            chunks = self.ascii_compiled.findall(text)
        elif self.complete:
            chunks = self.compiled.findall(text)
        else:
            chunks = _split_chunks(self.compiled, text)
        if chunks and max(map(len, chunks)) > MAX_CHUNK_CHARS:
            return _cap(chunks)
        return chunks


def _cap(chunks: list[str]) -> list[str]:
    """Each chunk longer than MAX_CHUNK_CHARS, cut into pieces of at most that many characters."""
    pieces: list[str] = []
    for chunk in chunks:
        pieces.extend(chunk[i : i + MAX_CHUNK_CHARS] for i in range(0, len(chunk), MAX_CHUNK_CHARS))
    return pieces


def _split_chunks(compiled: regex.Pattern[str], text: str) -> list[str]:
    """Cut text into pre-tokenizer chunks; text the pattern does not match becomes its own chunk.

    A custom pattern might skip characters; then we keep the gaps too (like Hugging Face's
    ``Split(behavior="Isolated")``), so no text is ever silently dropped.
    """
    chunks: list[str]
    if compiled.groups == 0:  # with capture groups, findall would return the groups instead
        chunks = compiled.findall(text)
        if sum(map(len, chunks)) == len(text):  # the matches cover the text: no gaps
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
    pair_counts: defaultdict[int, int] = defaultdict(int)
    where: defaultdict[int, set[int]] = defaultdict(set)
    for chunk, freq in chunk_counts.items():
        data = chunk.encode("utf-8")
        if len(data) <= 1:
            continue
        i = len(words)
        freqs.append(freq)
        words.append(list(data))
        for a, b in pairwise(data):
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
        # (new, right). Everything else in the corpus is untouched. Scanning left to right and
        # merging in place splits a run like "aaaa" as [aa, aa], exactly as encoding will.
        grown: set[int] = set()  # pairs with new_id; their counts only grow during this merge
        for i in where.pop(key):
            freq = freqs[i]
            word = words[i]
            j = 0
            while j < len(word) - 1:
                if word[j] == a and word[j + 1] == b:
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
        self._batch_merger: _BatchMerger | None = None  # built on first use

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

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text``. Never emits special tokens: their names encode as plain text."""
        return self._encode_split([self._split(text)])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for each text. Faster than a loop of ``encode`` on a cold cache: every
        distinct new chunk of the whole batch is encoded once, together."""
        return self._encode_split([self._split(text) for text in texts])

    def _encode_split(self, chunk_lists: list[list[str]]) -> list[list[int]]:
        """Token ids for texts already cut into chunks."""
        cache = self._cache
        lookup = cache.__getitem__
        try:
            # Fast path: every chunk seen before. chain + map run in C, no Python-level loop.
            return [list(chain.from_iterable(map(lookup, chunks))) for chunks in chunk_lists]
        except KeyError:
            pass
        # Run BPE once per *distinct* new chunk: a 1 MB English text has ~250k chunks but only
        # ~15k distinct ones (" the" and "\n" come back thousands of times).
        missing = set(chain.from_iterable(chunk_lists)).difference(cache)
        if len(cache) + len(missing) > _CACHE_LIMIT:
            # Simplest bound: start over rather than grow without limit.
            cache.clear()
            missing = set(chain.from_iterable(chunk_lists))
            if len(missing) > _CACHE_LIMIT and len(chunk_lists) > 1:
                return [self._encode_split([chunks])[0] for chunks in chunk_lists]
        cache.update(self._encode_chunks(missing))
        return [list(chain.from_iterable(map(lookup, chunks))) for chunks in chunk_lists]

    def _encode_chunks(self, chunks: Collection[str]) -> dict[str, list[int]]:
        """Token ids of many distinct chunks: ``{chunk: _encode_chunk(chunk's bytes)}``."""
        data = {chunk: _check_utf8(chunk) for chunk in chunks}
        short = [chunk for chunk, b in data.items() if len(b) <= _BATCH_WIDTH]
        if len(short) < _BATCH_MIN_CHUNKS:
            return {chunk: self._encode_chunk(b) for chunk, b in data.items()}
        if self._batch_merger is None:
            self._batch_merger = _BatchMerger(self.merges)
        ids = dict(zip(short, self._batch_merger([data[c] for c in short]), strict=True))
        for chunk, b in data.items():
            if len(b) > _BATCH_WIDTH:
                ids[chunk] = self._encode_chunk(b)
        return ids

    def _encode_chunk(self, data: bytes) -> list[int]:
        """Apply the merges to one chunk: repeatedly merge the lowest-rank adjacent pair.

        ``ranks[i]`` is the rank of the pair ``(ids[i], ids[i + 1])`` (``_NO_MERGE`` if it is not
        a merge). Each step merges the *leftmost* lowest-rank pair and recomputes only the two
        ranks next to it. Merging one occurrence at a time gives the same result as the textbook
        "merge every occurrence, then rescan" loop: a merge's new token only forms pairs of
        higher rank, so the remaining occurrences are still the minimum and come next, left to
        right. ``min`` and ``index`` scan in C, which makes this fast for normal-sized chunks;
        long chunks use a heap instead, and very long ones (think 10 MB of ``x``) numpy.
        """
        if len(data) > _LONG_CHUNK:
            return self._encode_long_chunk(data)
        ids = list(data)
        get = self._ranks.get
        ranks = list(map(get, pairwise(ids), repeat(_NO_MERGE)))
        while ranks:
            rank = min(ranks)
            if rank == _NO_MERGE:
                break  # no adjacent pair is a merge: done
            i = ranks.index(rank)
            new_id = 256 + rank
            ids[i : i + 2] = (new_id,)
            if i + 1 < len(ids):  # the pair to the right is now (new_id, next token)
                ranks[i : i + 2] = (get((new_id, ids[i + 1]), _NO_MERGE),)
            else:
                del ranks[i]
            if i > 0:  # the pair to the left is now (previous token, new_id)
                ranks[i - 1] = get((ids[i - 1], new_id), _NO_MERGE)
        return ids

    def _encode_long_chunk(self, data: bytes) -> list[int]:
        """Same result as ``_encode_chunk``'s loop, in O(n log n) for very long chunks.

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

    def byte_lengths(self) -> list[int]:
        """The UTF-8 bytes of text behind each id, 0 for special tokens (they stand for no
        text): what bits per byte divides by."""
        special = set(self.special_tokens.values())
        return [0 if i in special else len(b) for i, b in enumerate(self._vocab)]

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
        so a crash never leaves a half-written tokenizer behind.

        Only a tokenizer with one of the ``KNOWN_PATTERNS`` can be saved, since :meth:`load`
        accepts no other pattern."""
        path = Path(path)
        if self.pattern not in KNOWN_PATTERNS:
            raise ValueError(
                f"cannot save to {path}: this tokenizer's pre-tokenizer pattern is not one bardlet "
                f"writes, so Tokenizer.load would refuse the file; train with the default pattern "
                f"(bardlet.tokenizer.GPT4_PATTERN)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        d = self._to_dict()
        # Hand-formatted so a person can read it: one merge per line.
        lines = ["{"]
        for key in ("format", "version", "pattern", "special_tokens"):
            lines.append(f"  {json.dumps(key)}: {json.dumps(d[key], ensure_ascii=False)},")
        merges = ",\n".join(f"    [{a}, {b}]" for a, b in self.merges)
        lines.append('  "merges": [' + ("\n" + merges + "\n  ]" if merges else "]"))
        lines.append("}\n")
        write_text_atomic(path, "\n".join(lines))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a ``bpe.json`` written by :meth:`save`. Plain JSON: nothing is executed, and the
        pre-tokenizer pattern must be one of the ``KNOWN_PATTERNS`` (see there why)."""
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
        if not isinstance(pattern, str) or pattern not in KNOWN_PATTERNS:
            # Compared as a string, never compiled: a crafted regex could hang the process.
            raise bad(
                'the pre-tokenizer "pattern" is not one bardlet writes (a changed or crafted '
                "pattern can make encoding hang), so this file is not loaded: re-train the "
                "tokenizer with `dvc repro tokenizer` (or `bardlet tokenizer train`)"
            )
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


class _BatchMerger:
    """``Tokenizer._encode_chunk`` for thousands of short chunks at once, with numpy.

    Python spends about a microsecond per merge step, and a cold 1 MB text has ~15k distinct
    chunks needing ~75k steps. Here row ``k`` of an array holds chunk ``k``'s tokens, and each
    round does the *same* step as ``_encode_chunk`` in every row at once: find the leftmost
    lowest-rank pair, merge it, re-rank its two neighbour pairs. A row with no mergeable pair left
    is finished. So ~15 rounds of array operations replace ~75k rounds of Python (tests check the
    results are identical). numpy is imported here, not at module level, so the ``bardlet``
    command and training do not pay for importing it.
    """

    _PAD = 1 << 16  # fills rows past the chunk's end; no pair with it is a merge

    def __init__(self, merges: Sequence[tuple[int, int]]) -> None:
        import numpy as np

        self.np = np
        # Pair (a, b) as the int a << 17 | b (b may be _PAD, which needs 17 bits). Looking pairs
        # up = binary search in the sorted keys; a sentinel key at the end keeps every search
        # result a valid index.
        keys = np.array([a << 17 | b for a, b in merges], dtype=np.int64)
        order = np.argsort(keys)
        self.keys = np.append(keys[order], np.int64(1) << 40)
        self.ranks = np.append(order, _NO_MERGE)

    def rank_of(self, left: Any, right: Any) -> Any:
        """Ranks of the pairs (left[i], right[i]), _NO_MERGE where a pair is not a merge."""
        query = left.astype(self.np.int64) << 17 | right
        pos = self.np.searchsorted(self.keys, query)
        return self.np.where(self.keys[pos] == query, self.ranks[pos], _NO_MERGE)

    def __call__(self, chunks: Sequence[bytes]) -> list[list[int]]:
        """Token ids for each chunk (each at most ``_BATCH_WIDTH`` bytes)."""
        # Rows are padded to the longest chunk, so short chunks go in a group of their own.
        result = [list(b) for b in chunks]  # already the answer for chunks of 0 or 1 bytes
        half = _BATCH_WIDTH // 2
        for group in (
            [k for k, b in enumerate(chunks) if 2 <= len(b) <= half],
            [k for k, b in enumerate(chunks) if len(b) > half],
        ):
            if group:
                result_group = self._merge_rows([chunks[k] for k in group])
                for k, ids in zip(group, result_group, strict=True):
                    result[k] = ids
        return result

    def _merge_rows(self, chunks: list[bytes]) -> list[list[int]]:
        np = self.np
        n = np.array([len(b) for b in chunks], dtype=np.int32)  # tokens in each row
        width = int(n.max()) + 1  # one more column, so every row ends in at least one _PAD
        padded = b"".join(b.ljust(width, b"\0") for b in chunks)
        ids = np.frombuffer(padded, dtype=np.uint8).reshape(len(chunks), width).astype(np.int32)
        ids[np.arange(width) >= n[:, None]] = self._PAD
        ranks = self.rank_of(ids[:, :-1], ids[:, 1:])  # ranks[k, j]: pair (ids[k, j], ids[k, j+1])
        which = np.arange(len(chunks))  # the chunk each row holds
        result: list[list[int]] = [[] for _ in chunks]
        while True:
            best = ranks.min(axis=1)
            done = best == _NO_MERGE
            if done.any():
                for k, row, length in zip(
                    which[done].tolist(), ids[done].tolist(), n[done].tolist(), strict=True
                ):
                    result[k] = row[:length]
                keep = ~done
                if not keep.any():
                    return result
                which, ids, ranks, n, best = (a[keep] for a in (which, ids, ranks, n, best))
            at = ranks.argmin(axis=1)  # argmin gives the first (leftmost) minimum
            rows = np.arange(len(which))
            new_id = best + 256
            # Merge: token at+1 disappears and everything right of it moves one column left.
            # Every row got one token shorter, so the last column can go.
            cols = np.arange(width - 1)
            src = cols + (cols > at[:, None])
            ids = np.take_along_axis(ids, src, axis=1)
            ids[rows, at] = new_id
            ranks = np.take_along_axis(ranks, src[:, :-1], axis=1)
            n -= 1
            width -= 1
            # The two pairs that changed: (new token, right neighbour), (left neighbour, new token).
            ranks[rows, at] = self.rank_of(new_id, ids[rows, at + 1])
            left = at > 0
            rows, at, new_id = rows[left], at[left] - 1, new_id[left]
            ranks[rows, at] = self.rank_of(ids[rows, at], new_id)


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
