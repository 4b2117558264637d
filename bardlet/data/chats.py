"""Your own conversations: four file formats in, checked conversations out.

A source is a file, a folder or a glob (see bardlet.data.corpus.source_files) in one of these
formats; `auto` tells them apart by each file's first record:

- `openai`: JSON lines, one `{"messages": [{"role": "system" | "user" | "assistant",
  "content": "..."}]}` a line: the format OpenAI's fine-tuning API and most tools take;
- `sharegpt`: a JSON list, or JSON lines, of `{"conversations": [{"from": "system" | "human" |
  "gpt", "value": "..."}]}`;
- `oasst`: OASST's flat message format, trees rebuilt as for OASST1 itself (bardlet.data.oasst);
- `text`: plain text where `<|user|>` or `<|bot|>` starts a turn (the format LuminaAI's
  fine-tuning script reads), at the start of a line or within one; a turn runs over lines
  until the next marker; a blank line after a `<|bot|>` turn ends the conversation.

Every conversation is checked the same way (`problem`): an optional system message first, then
user and assistant alternating, starting with the user, with at least one answer (a trailing
user turn, with no answer to learn from, is then trimmed); no empty turn; at most
MAX_CHARS characters in all. A conversation that fails is left out and counted by reason.
A file that is not the format it claims (or, under `auto`, any format) stops the stage with an
error naming the file, the line and what was expected: better than training on the wrong data.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bardlet.data.corpus import DataFileError, json_lines
from bardlet.data.oasst import build_conversations, read_messages

FORMATS = ("openai", "sharegpt", "oasst", "text")
MAX_CHARS = 100_000  # longer conversations could never fit a context: they are left out
ROLES = {
    "openai": {"system": "system", "user": "user", "assistant": "assistant"},
    "sharegpt": {"system": "system", "human": "user", "user": "user", "gpt": "assistant"},
}
KEYS = {"openai": ("messages", "role", "content"), "sharegpt": ("conversations", "from", "value")}
TEXT_MARKERS = {"<|user|>": "user", "<|bot|>": "assistant"}

Message = dict[str, str]


def read_chats(
    path: Path, fmt: str, oasst_lang: str = "en", oasst_mode: str = "best"
) -> Iterator[tuple[str, list[Message]]]:
    """(id, messages) for each conversation of one file, as written (`checked` checks them).
    The id is the tree id for OASST files, else "<file name>#<record number>"."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "oasst":
        try:
            messages, stats = read_messages(path, lang=oasst_lang)
        except ValueError as error:
            raise DataFileError(str(error)) from None
        if stats.malformed_lines:  # a few bad lines: a broken file, not a choice to skip them
            raise DataFileError(
                f"{path}: {stats.malformed_lines} of {stats.lines} lines are not OASST messages "
                "(message_id, parent_id, message_tree_id, role, text, each of its type): fix "
                "them, or set the source's `format` if the file is another kind"
            )
        for conversation in build_conversations(messages, mode=oasst_mode):
            yield conversation["id"], conversation["messages"]
    elif fmt == "text":
        for n, messages in enumerate(_text_conversations(path), 1):
            yield f"{path.name}#{n}", messages
    elif fmt in KEYS:
        for n, (where, record) in _json_records(path):
            yield f"{path.name}#{n}", _turns(where, record, fmt)
    else:
        raise DataFileError(f"{path}: unknown chat format {fmt!r} (use one of {FORMATS})")


def checked(
    conversations: Iterable[tuple[str, list[Message]]], dropped: Counter[str]
) -> Iterator[tuple[str, list[Message]]]:
    """The conversations that pass `problem`, less a trailing user turn (a question with no
    answer: nothing to learn from); the others are counted in `dropped` by reason."""
    for conversation_id, messages in conversations:
        reason = problem(messages)
        if reason is not None:
            dropped[reason] += 1
        elif messages[-1]["role"] == "user":
            yield conversation_id, messages[:-1]
        else:
            yield conversation_id, messages


def problem(messages: list[Message]) -> str | None:
    """Why a conversation cannot be trained on (a short reason for the report), or None."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns:
        return "no_turns"
    if turns[0]["role"] != "user":
        return "does_not_start_with_user"
    if any(m["role"] == "system" for m in turns):
        return "system_message_not_first"
    if any(a["role"] == b["role"] for a, b in zip(turns, turns[1:], strict=False)):
        return "roles_do_not_alternate"
    if len(turns) < 2:
        return "no_answer"  # a lone question: no assistant tokens to learn from
    if any(not m["content"].strip() for m in messages):
        return "empty_turn"
    if sum(len(m["content"]) for m in messages) > MAX_CHARS:
        return "too_long"
    try:
        for m in messages:
            m["content"].encode("utf-8")
    except UnicodeEncodeError:
        return "not_utf8"  # a lone surrogate, written as a JSON escape such as \ud800
    return None


def detect_format(path: Path) -> str:
    """The format of a chat file, from its first record (see the module docstring)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith(tuple(TEXT_MARKERS)):
        return "text"
    if text.startswith("["):
        return "sharegpt"  # a JSON list: ShareGPT's own layout
    line = text.split("\n", 1)[0]
    try:
        first = json.loads(line)
    except json.JSONDecodeError as error:
        if line.startswith("{"):
            raise DataFileError(f"{path}, line 1: not JSON ({error.msg})") from None
        first = None
    if isinstance(first, dict):
        for key, fmt in (("messages", "openai"), ("conversations", "sharegpt")):
            if key in first:
                return fmt
        if "message_tree_id" in first:
            return "oasst"
    raise DataFileError(
        f"{path}, line 1: not a chat format bardlet knows: expected a JSON object a line with "
        '"messages" (openai), "conversations" (sharegpt) or "message_tree_id" (oasst), a JSON '
        "list (sharegpt), or text starting with <|user|> (text); set the source's `format`"
    )


def _turns(where: str, record: Any, fmt: str) -> list[Message]:
    """An openai or sharegpt record as [{"role", "content"}]; a record of another shape means
    the file is not that format: DataFileError."""
    key, role_key, text_key = KEYS[fmt]
    roles = ROLES[fmt]
    example = f'{{"{key}": [{{"{role_key}": "{"|".join(roles)}", "{text_key}": "..."}}]}}'
    turns = record.get(key) if isinstance(record, dict) else None
    if not isinstance(turns, list):
        raise DataFileError(f"{where}: expected a record of format {fmt}, like {example}")
    messages = []
    for turn in turns:
        role = turn.get(role_key) if isinstance(turn, dict) else None
        text = turn.get(text_key) if isinstance(turn, dict) else None
        if role not in roles or not isinstance(text, str):
            raise DataFileError(
                f"{where}: a turn {json.dumps(turn)[:80]} is not {fmt}: expected {example}"
            )
        messages.append({"role": roles[role], "content": text})
    return messages


def _json_records(path: Path) -> Iterator[tuple[int, tuple[str, Any]]]:
    """(record number, (where, record)) of a JSON lines file, or of a file holding one JSON
    list; JSON lines are read one at a time."""
    with open(path, "rb") as f:
        start = f.read(1 << 16).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if start.startswith("["):
        try:
            records = json.loads(path.read_bytes().decode("utf-8-sig"))
        except UnicodeDecodeError as error:
            raise DataFileError(f"{path}: not UTF-8 text (byte {error.start})") from None
        except json.JSONDecodeError as error:
            raise DataFileError(f"{path}, line {error.lineno}: not JSON ({error.msg})") from None
        for number, record in enumerate(records, 1):
            yield number, (f"{path}, record {number}", record)
        return
    yield from enumerate(json_lines(path), 1)


def _text_conversations(path: Path) -> Iterator[list[Message]]:
    """Conversations from `<|user|> ...` / `<|bot|> ...` text (see the module docstring)."""
    block: list[str] = []  # the lines of the conversation being read
    last = None  # the role of the block's latest marker
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise DataFileError(
                    f"{path}, line {number}: not UTF-8 text (byte {error.start})"
                ) from None
            if not block and not line.strip():
                continue
            if not block and not line.startswith(tuple(TEXT_MARKERS)):
                raise DataFileError(
                    f"{path}, line {number}: text before the first <|user|> or <|bot|> "
                    "marker: a text chat file starts each turn with one of them"
                )
            if not line.strip() and last == "assistant":
                yield _turns_of_text("\n".join(block))
                block, last = [], None
                continue
            block.append(line)
            found = [(line.rfind(m), role) for m, role in TEXT_MARKERS.items() if m in line]
            last = max(found)[1] if found else last
    if block:
        yield _turns_of_text("\n".join(block))


def _turns_of_text(text: str) -> list[Message]:
    """`<|user|> hi <|bot|> hello` (markers anywhere, turns over several lines) as messages."""
    pieces = re.split(r"(<\|user\|>|<\|bot\|>)", text)[1:]  # marker, text, marker, text...
    return [
        {"role": TEXT_MARKERS[marker], "content": content.strip()}
        for marker, content in zip(pieces[::2], pieces[1::2], strict=True)
    ]


# --- preference pairs --------------------------------------------------------------------------


def read_pairs(path: Path) -> Iterator[dict[str, Any]]:
    """Preference pairs of one JSON-lines file, one `{"prompt": [messages], "chosen": text,
    "rejected": text}` a line: the conversation so far (ending with the user's turn), the
    better reply and the worse. A line that is not one stops with its file, line and why."""
    for n, (where, record) in _json_records(path):
        prompt = record.get("prompt") if isinstance(record, dict) else None
        turns = _turns(where, {"messages": prompt}, "openai") if isinstance(prompt, list) else []
        replies = [
            record.get(k) if isinstance(record, dict) else None for k in ("chosen", "rejected")
        ]
        why = None
        if not turns or not all(isinstance(r, str) and r.strip() for r in replies):
            why = 'expected {"prompt": [{"role": ..., "content": ...}], "chosen": text, "rejected": text}'
        elif turns[-1]["role"] != "user" or problem(
            [*turns, {"role": "assistant", "content": "x"}]
        ):
            why = "the prompt must be a conversation that ends with the user's turn"
        elif replies[0] == replies[1]:
            why = "chosen and rejected are the same text: nothing to prefer"
        if why:
            raise DataFileError(f"{where}: {why}")
        yield {
            "id": f"{path.name}#{n}",
            "prompt": turns,
            "chosen": replies[0],
            "rejected": replies[1],
        }
