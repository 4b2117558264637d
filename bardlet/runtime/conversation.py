"""Conversations for a model with a small context: the prompt, fitted; the reply; the style
presets. Shared by the terminal chat, `bardlet generate --chat` and the HTTP server (and the
page, through it), so a conversation is cut, ended and styled the same way everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from bardlet.data.chat_template import ROLES, Message
from bardlet.retrieval.index import Passage
from bardlet.retrieval.memory import Turn
from bardlet.runtime.generation import Generation, TokenSource
from bardlet.runtime.sampling import Sampling, Style
from bardlet.runtime.session import OnnxLM
from bardlet.tokenizer import AnyTokenizer

# The export stage writes params.yaml's `chat.styles` here, beside the model.
STYLES_FILE = "styles.json"
_STYLES = TypeAdapter(dict[str, Style])


def fit_conversation(
    tokenizer: AnyTokenizer,
    messages: Sequence[Message],
    system: str | None,
    block_size: int,
    reply_room: int,
) -> tuple[list[Message], list[int]]:
    """The newest turns whose prompt leaves `reply_room` tokens of the context for a reply.

    Drops the oldest exchange (user + assistant) until it fits; system messages and the
    newest message always stay. Returns the kept messages and their prompt ids (what
    `render_prompt` gives for them), or raises ValueError when the newest message alone
    cannot fit. Each message is encoded once, so a long history costs linear time.
    """
    end = tokenizer.special_id("<|end|>")

    def turn(role: str, content: str) -> list[int]:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} in a message; use one of {ROLES}")
        return [tokenizer.special_id(f"<|{role}|>"), *tokenizer.encode(content), end]

    head = [tokenizer.special_id("<|bos|>")] + (turn("system", system) if system else [])
    encoded = [turn(m["role"], m["content"]) for m in messages]
    total = len(head) + sum(map(len, encoded)) + 1  # + the <|assistant|> that asks for a reply
    turns = [i for i, m in enumerate(messages) if m["role"] != "system"]
    start = 0  # how many of the oldest turns are dropped
    while total + reply_room > block_size:
        if len(turns) - start <= 1:
            raise ValueError(
                f"that message is {total} tokens with the template; the model's context "
                f"is {block_size} tokens including the reply: please shorten it"
            )
        step = 2 if len(turns) - start > 2 else 1
        total -= sum(len(encoded[i]) for i in turns[start : start + step])
        start += step
    dropped = set(turns[:start])
    kept = [i for i in range(len(messages)) if i not in dropped]
    ids = head + [token for i in kept for token in encoded[i]]
    return [messages[i] for i in kept], ids + [tokenizer.special_id("<|assistant|>")]


# With documents or a memory, the context is shared out so (256 tokens by default):
#   reply:     min(max_tokens, context / 4)          64
#   sources:   up to SOURCES_SHARE of the context    96: about two passages of 48 tokens
#   memory:    up to MEMORY_SHARE of the context     48: a turn or two said earlier
#   system prompt and the conversation: the rest     at least 48; the oldest turns go first
# (Shares are limits: without documents or a memory the conversation has their room too.)
SOURCES_SHARE = 3 / 8
MEMORY_SHARE = 3 / 16
SOURCES_HEADER = "Sources:"
MEMORY_HEADER = "From earlier conversations:"


def fitting(tokenizer: AnyTokenizer, texts: Sequence[str], budget: int) -> int:
    """How many of `texts`, in order, fit in `budget` tokens together."""
    used = 0
    for count, text in enumerate(texts):
        used += len(tokenizer.encode(text)) + 1  # + the line break between them
        if used > budget:
            return count
    return len(texts)


def pick_sources(
    tokenizer: AnyTokenizer, passages: Sequence[Passage], block_size: int
) -> list[Passage]:
    """The best passages that fit in the sources' share of the context."""
    budget = int(block_size * SOURCES_SHARE) - len(tokenizer.encode(SOURCES_HEADER))
    texts = [f"[{i}] {p.text}" for i, p in enumerate(passages, 1)]
    return list(passages[: fitting(tokenizer, texts, budget)])


def pick_recalled(tokenizer: AnyTokenizer, turns: Sequence[Turn], block_size: int) -> list[Turn]:
    """The best remembered turns that fit in the memory's share of the context; the last one
    cut short (by words) if only its start fits."""
    budget = int(block_size * MEMORY_SHARE) - len(tokenizer.encode(MEMORY_HEADER))
    texts = [f"{t.role}: {t.content}" for t in turns]
    count = fitting(tokenizer, texts, budget)
    picked = list(turns[:count])
    if count < len(turns):
        left = budget - sum(len(tokenizer.encode(text)) + 1 for text in texts[:count])
        words = turns[count].content.split()
        while words and len(tokenizer.encode(f"{turns[count].role}: {' '.join(words)}")) >= left:
            words.pop()
        if words:
            picked.append(replace(turns[count], content=" ".join(words) + " ..."))
    return picked


def system_with(
    system: str | None, sources: Sequence[Passage] = (), recalled: Sequence[Turn] = ()
) -> str | None:
    """The system message with the numbered sources and the remembered turns after it: what
    the model reads before the conversation."""
    parts = [system] if system else []
    if sources:
        numbered = [f"[{i}] {p.text}" for i, p in enumerate(sources, 1)]
        parts.append("\n".join([SOURCES_HEADER, *numbered]))
    if recalled:
        parts.append("\n".join([MEMORY_HEADER, *(f"{t.role}: {t.content}" for t in recalled)]))
    return "\n\n".join(parts) or None


def load_styles(model_path: str | Path) -> dict[str, Style]:
    """The style presets saved beside an exported model; a model without them offers only
    `default` (the model's own distribution, no system prompt)."""
    path = Path(model_path)
    path = (path if path.is_dir() else path.parent) / STYLES_FILE
    if not path.exists():
        return {"default": Style()}
    try:
        styles = _STYLES.validate_python(json.loads(path.read_bytes()))
    except (ValueError, UnicodeDecodeError) as error:
        if isinstance(error, ValidationError):
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            error = ValueError(f"{where}: {first['msg']} (got {first.get('input')!r})")
        raise ValueError(
            f"{path} is not a styles file ({error}): re-run `dvc repro export`"
        ) from None
    return {"default": Style(), **styles}  # `default` is what a chat starts with


def with_settings(style: Style, **given: Any) -> Style:
    """`style` with the settings given (None keeps the style's), checked by type and range:
    raises pydantic's ValidationError, which names the field."""
    updates = {key: value for key, value in given.items() if value is not None}
    return Style.model_validate({**style.model_dump(), **updates})


def reply(
    lm: OnnxLM,
    prompt: Sequence[int],
    max_tokens: int,
    settings: Sampling,
    top_logprobs: int | None = None,
    stream: TokenSource | None = None,
) -> Generation:
    """The model's reply to `prompt`: any special token (a chat marker) ends it."""
    stop_ids = sorted(lm.tokenizer.special_tokens.values())
    return Generation(lm, prompt, max_tokens, settings, stop_ids, top_logprobs, stream)
