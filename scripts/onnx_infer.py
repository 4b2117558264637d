#!/usr/bin/env python3
"""Generate text or chat with an exported bardlet model: numpy + onnxruntime only.

Copy three files to any machine with Python 3.11+, `pip install numpy onnxruntime`
(and, recommended, `regex`), and run (the graph uses ONNX opset 23's Attention and
RotaryEmbedding: tested with onnxruntime 1.32; a release without them refuses the file):

    python onnx_infer.py --model model.onnx --prompt "ROMEO:" --max-new-tokens 100
    python onnx_infer.py --model model.onnx --chat              # interactive conversation
    python onnx_infer.py --model model.onnx --chat --prompt "Who are you?"   # one reply

The three files: this script, `model.onnx` (or `model.int8.onnx`) and `bpe.json` (the
tokenizer, looked for beside the model; a model that started from a pretrained GPT-2 or Llama
has the model's own `tokenizer.json` instead, which needs `pip install tokenizers`). Only the generated text goes to stdout; prompts,
notes and errors go to stderr.

This file does not import bardlet: it carries its own copy of bardlet's byte-level BPE
(encode and decode), chat template and sampling, which tests keep identical to bardlet's
(same token ids, same greedy output, same seeded samples).
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import re
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as missing:  # pragma: no cover - depends on the machine
    sys.exit(f"error: {missing.name} is needed: pip install numpy onnxruntime")

FORMAT_NAME = "bardlet-bpe"
FORMAT_VERSION = 1
NO_MERGE = 1 << 30
MAX_CHUNK_CHARS = 256  # bardlet.tokenizer.bpe.MAX_CHUNK_CHARS

# ------------------------------------------------------------------------------- tokenizer

# Unicode White_Space (what `regex` means by \s): a fixed list of 25 code points.
_WHITE_SPACE = (
    "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
)
_CLASS_CACHE: dict[str, str] = {}


def _category_class(prefix: str) -> str:
    """A character-class body (no brackets) of every code point whose Unicode general
    category starts with `prefix` ("L" = letters, "N" = numbers), for the stdlib `re`."""
    if prefix not in _CLASS_CACHE:
        parts = []
        start = None
        for code in range(0x110001):
            inside = code <= 0x10FFFF and unicodedata.category(chr(code)).startswith(prefix)
            if inside and start is None:
                start = code
            elif not inside and start is not None:
                end = code - 1
                parts.append(f"\\U{start:08x}" + (f"-\\U{end:08x}" if end > start else ""))
                start = None
        _CLASS_CACHE[prefix] = "".join(parts)
    return _CLASS_CACHE[prefix]


def translate_pattern(pattern: str) -> str:
    """Rewrite a `regex` pattern for the stdlib `re`: \\p{L} / \\p{N} become explicit ranges
    from Python's Unicode database, \\s / \\S become Unicode White_Space. Possessive
    quantifiers (?+ ++ *+) are stdlib `re` syntax since Python 3.11."""
    out: list[str] = []
    i, in_class, class_start = 0, False, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            kind = pattern[i + 1]
            if kind in "pP" and pattern[i + 2 : i + 3] == "{":
                close = pattern.index("}", i)
                name = pattern[i + 3 : close]
                if name not in ("L", "N") or (in_class and kind == "P"):
                    raise ValueError(f"pattern uses \\{kind}{{{name}}}: install `regex`")
                body = _category_class(name)
                negate = "^" if kind == "P" else ""
                out.append(body if in_class else f"[{negate}{body}]")
                i = close + 1
                continue
            if kind in "sS":
                if in_class and kind == "S":
                    raise ValueError("pattern uses \\S inside a class: install `regex`")
                negate = "^" if kind == "S" else ""
                out.append(_WHITE_SPACE if in_class else f"[{negate}{_WHITE_SPACE}]")
                i += 2
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if not in_class and char == "[":
            in_class = True
            class_start = i + 1 + (pattern[i + 1 : i + 2] == "^")
        elif in_class and char == "]" and i != class_start:
            in_class = False
        out.append(char)
        i += 1
    return "".join(out)


def compile_pattern(pattern: str, use_regex: bool = True) -> Any:
    """The pre-tokenizer. With the `regex` module: exactly bardlet's. Without it: the stdlib
    `re` with \\p{L} / \\p{N} spelled out from Python's own Unicode tables (the same splits,
    unless the two Unicode versions disagree about a character; ~1 s more start-up)."""
    if use_regex:
        try:
            import regex

            return regex.compile(pattern)
        except ImportError:
            pass
    return re.compile(translate_pattern(pattern))


class BPE:
    """bardlet's byte-level BPE, read from bpe.json: encode never emits special tokens."""

    def __init__(self, path: Path, use_regex: bool = True) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT_NAME or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a bardlet tokenizer file (format {FORMAT_NAME} v1)")
        self.merges = [(int(a), int(b)) for a, b in data["merges"]]
        self.special_tokens: dict[str, int] = dict(data["special_tokens"])
        self.pattern: str = data["pattern"]
        canonical = json.dumps(
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "pattern": self.pattern,
                "merges": [[a, b] for a, b in self.merges],
                "special_tokens": self.special_tokens,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        )
        self.hash = hashlib.sha256(canonical.encode("ascii")).hexdigest()
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            vocab.append(vocab[a] + vocab[b])
        for name, _ in sorted(self.special_tokens.items(), key=lambda item: item[1]):
            vocab.append(name.encode("utf-8"))
        self.vocab = vocab
        self.split = compile_pattern(self.pattern, use_regex).findall
        self.cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for long_chunk in self.split(text):
            # bardlet's cap: a chunk longer than 256 characters is cut every 256 (MAX_CHUNK_CHARS)
            for i in range(0, len(long_chunk), MAX_CHUNK_CHARS):
                chunk = long_chunk[i : i + MAX_CHUNK_CHARS]
                if chunk not in self.cache:
                    self.cache[chunk] = self._merge(chunk.encode("utf-8"))
                ids.extend(self.cache[chunk])
        return ids

    def _merge(self, data: bytes) -> list[int]:
        """Repeatedly merge the leftmost adjacent pair with the lowest rank (earliest merge)."""
        ids = list(data)
        while len(ids) > 1:
            ranks = [self.ranks.get(pair, NO_MERGE) for pair in pairwise(ids)]
            rank = min(ranks)
            if rank == NO_MERGE:
                break
            i = ranks.index(rank)
            ids[i : i + 2] = [256 + rank]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def special(self, name: str) -> int:
        return self.special_tokens[name]


class PretrainedTokens:
    """A pretrained model's tokenizer.json (`init:` a GPT-2 or Llama), through Hugging Face
    `tokenizers` (pip install tokenizers): the same methods as BPE above."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            sys.exit("error: this model's tokenizer.json needs `pip install tokenizers`")
        text = path.read_text(encoding="utf-8")
        self.hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self.fast = Tokenizer.from_str(text)
        self.fast.encode_special_tokens = True  # typed text never becomes a special token
        added = self.fast.get_added_tokens_decoder()
        self.special_tokens = {t.content: i for i, t in sorted(added.items()) if t.special}
        self.vocab = [self._bytes(i) for i in range(self.fast.get_vocab_size())]

    def _bytes(self, token_id: int) -> bytes:
        """Byte-level vocabularies spell bytes as GPT-2's printable characters; SentencePiece
        ones write a space as U+2581 and unknown bytes as <0xNN>."""
        piece = self.fast.id_to_token(token_id) or ""
        if token_id in self.special_tokens.values():
            return piece.encode("utf-8")
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        if all(c in BYTE_OF_CHAR for c in piece):
            return bytes(BYTE_OF_CHAR[c] for c in piece)
        return piece.replace("\u2581", " ").encode("utf-8")

    def encode(self, text: str) -> list[int]:
        return list(self.fast.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def special(self, name: str) -> int:
        return self.special_tokens[name]


def _gpt2_byte_chars() -> dict[str, int]:
    """GPT-2's byte <-> printable character table (Hugging Face's ByteLevel), reversed."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    for extra, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = chr(256 + extra)
    return {c: b for b, c in chars.items()}


BYTE_OF_CHAR = _gpt2_byte_chars()


def render_chat(tokenizer: BPE, messages: list[dict[str, str]], system: str | None) -> list[int]:
    """<|bos|> [<|system|> text <|end|>] (<|user|> text <|end|> <|assistant|> text <|end|>)*
    <|assistant|>: the conversation, asking for the next assistant turn."""
    end = tokenizer.special("<|end|>")
    ids = [tokenizer.special("<|bos|>")]
    turns = ([{"role": "system", "content": system}] if system is not None else []) + messages
    for message in turns:
        ids.append(tokenizer.special(f"<|{message['role']}|>"))
        ids.extend(tokenizer.encode(message["content"]))
        ids.append(end)
    return ids + [tokenizer.special("<|assistant|>")]


def fit_chat(
    tokenizer: BPE,
    messages: list[dict[str, str]],
    system: str | None,
    block_size: int,
    max_new_tokens: int,
) -> tuple[list[dict[str, str]], list[int] | None]:
    """The messages that fit and their prompt: the oldest exchange (user + assistant) goes
    until the prompt leaves room for a reply; (messages, None) if the last one alone is too
    long."""
    room = min(max_new_tokens, block_size // 4)
    start = 0
    while True:
        prompt = render_chat(tokenizer, messages[start:], system)
        if len(prompt) + room <= block_size:
            return messages[start:], prompt
        if len(messages) - start <= 1:
            return messages, None
        start += 2 if len(messages) - start > 2 else 1


# ------------------------------------------------------------------------------- sampling


@dataclass
class Sampling:
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 1.0
    seed: int | None = None
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()


def sample(
    logits: np.ndarray, settings: Sampling, rng: np.random.Generator, previous: Sequence[int]
) -> int:
    """Repetition penalty, then greedy or temperature, top-k, top-p, min-p, and a draw."""
    if settings.repetition_penalty != 1.0:
        logits = logits.astype(np.float64, copy=True)
        if len(previous):
            seen = np.unique(np.asarray(previous, dtype=np.int64))
            values = logits[seen]
            penalty = settings.repetition_penalty
            logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    if settings.temperature <= 0:
        return int(np.argmax(logits))
    # Top-k first (ties with the k-th kept), so what follows works on k candidates, not the
    # whole vocabulary. They stay in id order, as a draw over every id would see them.
    ids = np.arange(len(logits))
    if 0 < settings.top_k < len(logits):
        ids = np.flatnonzero(logits >= np.partition(logits, -settings.top_k)[-settings.top_k])
    chosen = logits[ids].astype(np.float64)
    # Shifted so the largest is 0: a tiny temperature then makes -inf, never inf - inf.
    probs = np.exp((chosen - chosen.max()) / settings.temperature)
    if settings.top_p < 1.0:
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Keep tokens until the cumulative probability first reaches top_p (at least one).
        dropped = order[int(np.searchsorted(cumulative, settings.top_p)) + 1 :]
        probs[dropped] = 0.0
    if settings.min_p > 0.0:
        probs[probs < settings.min_p * probs.max()] = 0.0
    # The draw: one uniform number against the cumulative weights (what rng.choice does,
    # without its checks, which cost more than the rest of this function).
    cumulative = np.cumsum(probs)
    at = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(ids[min(at, len(ids) - 1)])


def stop_cut(text: str, stops: Sequence[str], shown: int, final: bool) -> tuple[int, bool]:
    """How much of `text` may be shown, and whether a stop string ended it (the text before
    the first stop string; a tail that may begin a stop string waits unless `final`)."""
    if not stops:
        return len(text), False
    longest = max(map(len, stops))
    found = [i for i in (text.find(s, max(0, shown - longest)) for s in stops) if i >= 0]
    if found:
        return max(min(found), shown), True
    if final:
        return len(text), False
    for size in range(min(longest - 1, len(text) - shown), 0, -1):
        if any(s.startswith(text[len(text) - size :]) for s in stops):
            return len(text) - size, False
    return len(text), False


# ------------------------------------------------------------------------------- model


class Model:
    """model.onnx (past key/values in, present out) with bardlet's metadata inside."""

    def __init__(self, path: Path, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "bardlet" not in meta:
            raise ValueError(f"{path} has no bardlet metadata: is it a bardlet export?")
        self.info = json.loads(meta["bardlet"])
        config = self.info["model"]
        self.block_size = int(config["block_size"])
        heads = config.get("n_kv_head") or config["n_head"]  # fewer with grouped-query attention
        self.cache_shape = (heads, 0, config["n_embd"] // config["n_head"])
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past.")]

    def stream(
        self, prompt: list[int], max_new_tokens: int, settings: Sampling, stop_ids: Sequence[int]
    ) -> Iterator[int]:
        """New token ids, one by one, with the KV cache (bardlet's OnnxLM.stream)."""
        if not prompt or len(prompt) >= self.block_size:
            raise ValueError(
                f"the prompt has {len(prompt)} tokens; the model's context is "
                f"{self.block_size}: shorten it"
            )
        rng = np.random.default_rng(settings.seed)
        penalize = settings.repetition_penalty != 1.0
        history = [t for t in prompt if t not in stop_ids] if penalize else []
        empty = np.zeros((1, *self.cache_shape), dtype=np.float32)
        feeds: dict[str, np.ndarray] = dict.fromkeys(self.past_names, empty)
        feeds["input_ids"] = np.array([prompt], dtype=np.int64)
        for step in range(min(max_new_tokens, self.block_size - len(prompt))):
            # 1 for every token so far: padding (0) is only for rows of a batch.
            feeds["attention_mask"] = np.ones((1, len(prompt) + step), dtype=np.int64)
            logits, *present = self.session.run(None, feeds)
            token = sample(logits[0, -1], settings, rng, history)
            if token in stop_ids:
                return
            yield token
            if penalize:
                history.append(token)
            feeds = dict(zip(self.past_names, present, strict=True))
            feeds["input_ids"] = np.array([[token]], dtype=np.int64)

    def stream_text(
        self,
        tokenizer: BPE,
        prompt: list[int],
        max_new_tokens: int,
        settings: Sampling,
        stop_ids: Sequence[int] = (),
    ) -> Iterator[str]:
        """Pieces of text: whole characters only (an incremental UTF-8 decoder), no special
        tokens, ending before the first stop string."""
        special = set(tokenizer.special_tokens.values())
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, shown = "", 0
        for token in self.stream(prompt, max_new_tokens, settings, stop_ids):
            if token in special:  # a marker, not text: never printed as "<|end|>"
                continue
            text += decoder.decode(tokenizer.vocab[token])
            cut, ended = stop_cut(text, settings.stop, shown, final=False)
            if cut > shown:
                yield text[shown:cut]
                shown = cut
            if ended:
                return
        text += decoder.decode(b"", final=True)
        cut, _ = stop_cut(text, settings.stop, shown, final=True)
        if cut > shown:
            yield text[shown:cut]


# ------------------------------------------------------------------------------- front end


def write(text: str, stream: Any = sys.stdout) -> None:
    stream.write(text)
    stream.flush()


def chat(model: Model, tokenizer: BPE, args: argparse.Namespace, settings: Sampling) -> None:
    """A multi-turn conversation; the oldest exchanges go when the context is full."""
    stops = tuple(tokenizer.special_tokens.values())  # any special token ends a reply
    messages: list[dict[str, str]] = []
    interactive = args.prompt is None
    if interactive:
        write("chat with the model: /clear forgets, /exit (or Ctrl-D) quits\n", sys.stderr)
    while True:
        if interactive:
            write("you> ", sys.stderr)
            line = sys.stdin.readline()
            if not line:
                write("\n", sys.stderr)
                return
            line = line.strip()
            if not line:
                continue
            if line in ("/exit", "/quit"):
                return
            if line == "/clear":
                messages = []
                write("(conversation cleared)\n", sys.stderr)
                continue
        else:
            line = args.prompt
        messages.append({"role": "user", "content": line})
        kept, prompt = fit_chat(
            tokenizer, messages, args.system, model.block_size, args.max_new_tokens
        )
        if prompt is None:
            messages.pop()
            write(
                f"[that message is too long for the {model.block_size}-token context]\n", sys.stderr
            )
            if not interactive:
                sys.exit(2)
            continue
        messages = kept
        reply = []
        for piece in model.stream_text(tokenizer, prompt, args.max_new_tokens, settings, stops):
            reply.append(piece)
            write(piece)
        write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
        if not interactive:
            return


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Generate text or chat with an exported bardlet model (model.onnx + bpe.json), "
            "using only numpy and onnxruntime. Prints only the generated text on stdout."
        ),
        epilog=(
            "The `regex` module is optional: with it, text is split into chunks exactly as "
            "bardlet does; without it, the stdlib `re` gets the same pattern with \\p{L} and "
            "\\p{N} written out from Python's Unicode tables (identical splits unless the two "
            "Unicode versions disagree on a character; about 1 s more start-up for non-ASCII "
            "tokenizer patterns). Sampling order: repetition penalty, temperature (0 = greedy), "
            "top-k, top-p, min-p. The same --seed gives the same text."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", "-m", default="model.onnx", help="the exported model.onnx or model.int8.onnx"
    )
    parser.add_argument(
        "--tokenizer", help="the tokenizer file (default: bpe.json beside the model)"
    )
    parser.add_argument(
        "--prompt",
        "-p",
        help="text to continue; with --chat, one user message to answer (then exit)",
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="use the chat template; without --prompt, an interactive conversation on stdin",
    )
    parser.add_argument("--system", help="a system prompt for --chat")
    parser.add_argument(
        "--max-new-tokens", "-n", type=int, default=100, help="most tokens to generate"
    )
    parser.add_argument(
        "--temperature", "-t", type=float, default=0.8, help="0 = greedy (most likely token)"
    )
    parser.add_argument("--top-k", type=int, default=50, help="keep the k most likely (0 = all)")
    parser.add_argument(
        "--top-p", type=float, default=1.0, help="keep the smallest set reaching p (1 = all)"
    )
    parser.add_argument(
        "--min-p",
        type=float,
        default=0.0,
        help="drop tokens below min_p x the top probability (0 = off)",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="> 1 makes tokens already in the prompt or reply less likely (1 = off)",
    )
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="end the text before this string (repeatable)",
    )
    parser.add_argument(
        "--ignore-end",
        action="store_true",
        help="without --chat: keep going past <|end|>, where a chat model ends its turn "
        "(special tokens are never printed either way)",
    )
    parser.add_argument("--seed", "-s", type=int, help="random seed (same seed, same text)")
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = one per core)"
    )
    parser.add_argument(
        "--no-regex",
        action="store_true",
        help="use the stdlib `re` even when `regex` is installed",
    )
    args = parser.parse_args(argv)
    if args.prompt is None and not args.chat:
        parser.error("give --prompt TEXT, or --chat for a conversation")
    checks = [
        (args.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
        (args.temperature >= 0, "--temperature must be >= 0"),
        (args.top_k >= 0, "--top-k must be >= 0"),
        (0 <= args.top_p <= 1, "--top-p must be in [0, 1]"),
        (0 <= args.min_p < 1, "--min-p must be in [0, 1)"),
        (args.repetition_penalty > 0, "--repetition-penalty must be > 0"),
        (args.threads >= 0, "--threads must be >= 0"),
        (all(args.stop), "--stop must not be empty"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    model_path = Path(args.model)
    if model_path.is_dir():
        model_path = model_path / "model.onnx"
    tokenizer_path = Path(args.tokenizer) if args.tokenizer else model_path.parent / "bpe.json"
    if not args.tokenizer and not tokenizer_path.exists():  # a pretrained model's own
        tokenizer_path = model_path.parent / "tokenizer.json"
    for path in (model_path, tokenizer_path):
        if not path.exists():
            sys.exit(f"error: {path} not found (copy model.onnx and bpe.json side by side)")
    try:
        model = Model(model_path, args.threads)
        tokenizer: Any = (
            PretrainedTokens(tokenizer_path)
            if tokenizer_path.name == "tokenizer.json"
            else BPE(tokenizer_path, use_regex=not args.no_regex)
        )
    except (ValueError, KeyError) as error:
        sys.exit(f"error: {error}")
    expected = model.info.get("tokenizer_hash")
    if expected and tokenizer.hash != expected:
        sys.exit(f"error: {tokenizer_path} is not the tokenizer {model_path.name} was trained with")
    settings = Sampling(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        stop=tuple(args.stop),
    )
    try:
        if args.chat:
            chat(model, tokenizer, args, settings)
            return
        prompt = [tokenizer.special("<|bos|>"), *tokenizer.encode(args.prompt)]
        stops = [] if args.ignore_end else [tokenizer.special("<|end|>")]
        for piece in model.stream_text(tokenizer, prompt, args.max_new_tokens, settings, stops):
            write(piece)
        write("\n")
    except ValueError as error:
        sys.exit(f"error: {error}")
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(130)


if __name__ == "__main__":
    main()
