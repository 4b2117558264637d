"""The chat template: how a conversation becomes token ids, and where the loss is taken.

    <|bos|> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> ...

Role markers are special tokens that only this module inserts. User text goes through the
ordinary `encode`, which never emits special tokens, so a user who types `<|assistant|>` gets
those characters as plain bytes and cannot forge a turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from bardlet.tokenizer import AnyTokenizer

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
ROLES = ("system", "user", "assistant")


def render(
    tokenizer: AnyTokenizer, messages: Sequence[Message], system: str | None = None
) -> tuple[list[int], list[bool]]:
    """Token ids of a whole conversation, and a loss mask that is True exactly on the
    assistant's tokens and the <|end|> that closes each assistant turn."""
    end = tokenizer.special_id("<|end|>")
    ids = [tokenizer.special_id("<|bos|>")]
    mask = [False]
    turns = list(messages)
    if system is not None:
        turns.insert(0, {"role": "system", "content": system})
    for message in turns:
        role = message["role"]
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} in a message; use one of {ROLES}")
        content = tokenizer.encode(message["content"]) + [end]
        ids.append(tokenizer.special_id(f"<|{role}|>"))
        mask.append(False)
        ids.extend(content)
        mask.extend([role == "assistant"] * len(content))
    return ids, mask


def render_prompt(
    tokenizer: AnyTokenizer, messages: Sequence[Message], system: str | None = None
) -> list[int]:
    """Ids that ask the model for the next assistant turn: the conversation, then <|assistant|>."""
    ids, _ = render(tokenizer, messages, system)
    return ids + [tokenizer.special_id("<|assistant|>")]
