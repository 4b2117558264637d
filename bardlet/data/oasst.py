"""Turn OpenAssistant OASST1 message trees into chat conversations.

OASST1 ships as flat messages, one JSON object per line. Each message names its parent, so
the messages of one `message_tree_id` form a tree: a prompter asks (the root), several
assistants answer, a prompter replies to one of the answers, and so on. Volunteers ranked the
sibling answers (rank 0 is the best) and reviewers flagged bad messages.

This module rebuilds those trees and reads conversations off them:

- a message that is deleted or failed review (`review_result == False`) is dropped together
  with everything below it, since the replies answer a text we no longer show;
- a conversation is a path from the root down the tree: it starts with the user, alternates
  user/assistant, and ends with an assistant turn (a trailing user turn has no answer to learn
  from, so it is trimmed);
- mode "best" follows the best-ranked answer at every step: one conversation per tree;
  mode "all" takes every root-to-leaf path: more data, with shared prefixes.

Roles are renamed to the chat template's: "prompter" -> "user", "assistant" -> "assistant".
Every message that is skipped is counted in `OasstStats`, which the prepare stage reports.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# {"id": message_tree_id, "messages": [{"role": "user" | "assistant", "content": str}, ...]}
Conversation = dict[str, Any]

ROLES = {"prompter": "user", "assistant": "assistant"}  # OASST1 role -> chat template role
MODES = ("best", "all")


@dataclass
class OasstStats:
    """What happened to the input, message by message. All counts, reported by prepare."""

    lines: int = 0  # non-blank lines read
    messages: int = 0  # well-formed messages kept by read_messages (right language, unique id)
    malformed_lines: int = 0  # not JSON, not an object, or a required field missing/ill-typed
    wrong_lang: int = 0  # well-formed, but another language than asked for
    duplicate_ids: int = 0  # a message_id seen before in the file (the first one wins)
    deleted: int = 0  # messages flagged deleted
    rejected: int = 0  # messages with review_result false (and not deleted)
    broken_alternation: int = 0  # a root that is not a prompter, or same role as its parent
    dropped_below_removed: int = 0  # fine themselves, but below a removed message
    orphans: int = 0  # cut off from any root: parent not in the file (and their replies)
    trees: int = 0  # trees whose prompter root survived
    conversations: int = 0  # conversations produced

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# --- reading ---------------------------------------------------------------------------------


def read_messages(path: Path, lang: str | None = "en") -> tuple[list[dict], OasstStats]:
    """Read OASST1 messages from a file in the official flat format: JSON lines (.jsonl, or
    .jsonl.gz) or the Hugging Face Parquet release (.parquet).

    Keeps messages in language `lang` (all languages when None). Malformed lines (or Parquet
    rows) are counted and skipped, never fatal; an empty file gives no messages (the caller
    decides if that is an error). Each message is returned with just the fields the trees need:
    message_id, parent_id, message_tree_id, role, text, lang, deleted, review_result, rank.
    Raises ValueError naming the file if it is not UTF-8 text (JSON lines) or not a readable
    Parquet file with the OASST1 columns.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return _collect(_parquet_records(path), lang)
    if path.suffix != ".gz":
        with open(path, "rb") as f:
            return _collect(_jsonl_records(f, path), lang)
    try:
        with gzip.open(path, "rb") as f:
            return _collect(_jsonl_records(f, path), lang)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(
            f"{path}: not a complete gzip file ({err or 'cut short'}); "
            "delete it and re-run `dvc repro download`"
        ) from None


def read_all_messages(
    paths: Iterable[Path], lang: str | None = "en"
) -> tuple[list[dict], OasstStats]:
    """`read_messages` over several files (say the full release's train and validation files),
    as one list: a message_id seen in an earlier file counts as a duplicate; counts add up."""
    stats = OasstStats()
    messages: list[dict] = []
    seen: set[str] = set()
    for path in paths:
        file_messages, file_stats = read_messages(path, lang)
        for name, value in file_stats.as_dict().items():
            setattr(stats, name, getattr(stats, name) + value)
        for message in file_messages:
            if message["message_id"] in seen:
                stats.duplicate_ids += 1
            else:
                seen.add(message["message_id"])
                messages.append(message)
    stats.messages = len(messages)
    return messages, stats


def _collect(records: Iterable[object], lang: str | None) -> tuple[list[dict], OasstStats]:
    """Check, filter and de-duplicate raw records (decoded JSON objects, or None for a line that
    is not JSON) the same way whatever file format they came from."""
    stats = OasstStats()
    messages: list[dict] = []
    seen: set[str] = set()
    for obj in records:
        stats.lines += 1
        message = _message_from(obj)
        if message is None:
            stats.malformed_lines += 1
        elif lang is not None and message["lang"] != lang:
            stats.wrong_lang += 1
        elif message["message_id"] in seen:
            stats.duplicate_ids += 1
        else:
            seen.add(message["message_id"])
            messages.append(message)
    stats.messages = len(messages)
    return messages, stats


def _jsonl_records(f: Iterable[bytes], path: Path) -> Iterator[object]:
    """One decoded JSON value per non-blank line (None where the line is not JSON)."""
    for line_no, line in enumerate(_decoded_lines(f, path), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line.lstrip("\ufeff") if line_no == 1 else line)
        except json.JSONDecodeError:
            yield None


# The columns of the Hugging Face Parquet release that the trees need (it has 18 in all).
_REQUIRED_COLUMNS = ("message_id", "parent_id", "message_tree_id", "role", "text")
_OPTIONAL_COLUMNS = ("lang", "deleted", "review_result", "rank")


def _parquet_records(path: Path) -> Iterator[dict]:
    """Rows of an OASST1 Parquet file as dicts of the columns we use, a batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(
            f"{path}: not a readable Parquet file ({err}); "
            "delete it and re-run `dvc repro download`"
        ) from None
    names = set(parquet.schema_arrow.names)
    missing = [c for c in _REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"{path}: not OASST1 messages: the Parquet file has no column {', '.join(missing)}"
        )
    columns = [*_REQUIRED_COLUMNS, *(c for c in _OPTIONAL_COLUMNS if c in names)]
    try:
        for batch in parquet.iter_batches(batch_size=8192, columns=columns):
            for row in batch.to_pylist():
                # Parquet has nulls where JSON lines leave a key out: drop them, so optional
                # flags get the same defaults either way (parent_id stays: null marks a root).
                yield {k: v for k, v in row.items() if v is not None or k == "parent_id"}
    except (pa.ArrowException, OSError) as err:
        raise ValueError(
            f"{path}: the Parquet file is damaged ({err}); delete it and re-run "
            "`dvc repro download`"
        ) from None


def _decoded_lines(f: Iterable[bytes], path: Path) -> Iterator[str]:
    # Decode line by line so the error can say where the file stops being text.
    for line_no, raw in enumerate(f, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{path}: line {line_no} is not valid UTF-8 ({err.reason} at byte {err.start}); "
                "expected OASST1 messages as JSON lines"
            ) from None


def _message_from(obj: object) -> dict | None:
    """One message with checked field types, or None if the record is malformed."""
    if not isinstance(obj, dict) or "parent_id" not in obj:
        return None
    message = {
        "message_id": obj.get("message_id"),
        "parent_id": obj["parent_id"],
        "message_tree_id": obj.get("message_tree_id"),
        "role": obj.get("role"),
        "text": obj.get("text"),
        # Optional flags, with the values that mean "nothing to say".
        "lang": obj.get("lang"),
        "deleted": obj.get("deleted", False),
        "review_result": obj.get("review_result"),
        "rank": obj.get("rank"),
    }
    rank = message["rank"]
    well_formed = (
        isinstance(message["message_id"], str)
        and message["message_id"] != ""
        and (message["parent_id"] is None or isinstance(message["parent_id"], str))
        and isinstance(message["message_tree_id"], str)
        and message["role"] in ROLES
        and isinstance(message["text"], str)
        and (message["lang"] is None or isinstance(message["lang"], str))
        and isinstance(message["deleted"], bool)
        and (message["review_result"] is None or isinstance(message["review_result"], bool))
        # bool is an int in Python, but a rank of `true` is nonsense
        and (rank is None or (isinstance(rank, int | float) and not isinstance(rank, bool)))
    )
    return message if well_formed else None


# --- trees to conversations ------------------------------------------------------------------


def build_conversations(
    messages: list[dict], mode: str = "best", stats: OasstStats | None = None
) -> list[Conversation]:
    """Rebuild the message trees and read conversations off them (see the module docstring).

    Messages need message_id, parent_id, message_tree_id, role and text; deleted,
    review_result and rank are optional. Counts go into `stats` if given. The output order is
    deterministic: by tree id, then by the message ids along the path.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if stats is None:
        stats = OasstStats()
    by_id, kept_roots, kept_children = _trees(messages, stats)

    paths: set[tuple[str, ...]] = set()
    for root in kept_roots:
        if mode == "best":
            candidates = [_best_path(root, kept_children)]
        else:
            candidates = _all_paths(root, kept_children)
        for path in candidates:
            while path and path[-1]["role"] != "assistant":
                path = path[:-1]  # trim the trailing user turn: it has no answer
            if path:
                paths.add(tuple(m["message_id"] for m in path))

    conversations = []
    for ids in sorted(paths, key=lambda ids: (by_id[ids[0]]["message_tree_id"], ids)):
        conversations.append(
            {
                "id": by_id[ids[0]]["message_tree_id"],
                "messages": [
                    {"role": ROLES[by_id[i]["role"]], "content": by_id[i]["text"]} for i in ids
                ],
            }
        )
    stats.conversations += len(conversations)
    return conversations


def preference_pairs(messages: list[dict]) -> list[dict[str, Any]]:
    """What the rankers preferred: for every user message with two or more ranked answers, the
    conversation up to it, the best-ranked answer (`chosen`) and the worst-ranked (`rejected`).
    `id`: the user message's id; `tree`: its tree, for the split. Same pruning as above."""
    _, kept_roots, kept_children = _trees(messages, OasstStats())
    pairs = []
    stack = [[root] for root in kept_roots]
    while stack:
        path = stack.pop()
        replies = kept_children.get(path[-1]["message_id"], [])
        ranked = [m for m in replies if m.get("rank") is not None]
        if (
            path[-1]["role"] == "prompter"
            and len(ranked) >= 2
            and ranked[0]["text"] != ranked[-1]["text"]
        ):
            pairs.append(
                {
                    "id": path[-1]["message_id"],
                    "tree": path[0]["message_tree_id"],
                    "prompt": [{"role": ROLES[m["role"]], "content": m["text"]} for m in path],
                    "chosen": ranked[0]["text"],  # sorted best first (_prune)
                    "rejected": ranked[-1]["text"],
                }
            )
        stack.extend([*path, reply] for reply in replies)
    return sorted(pairs, key=lambda p: (p["tree"], p["id"]))


def _trees(
    messages: list[dict], stats: OasstStats
) -> tuple[dict[str, dict], list[dict], dict[str, list[dict]]]:
    """Every message by id, the surviving roots, and each surviving message's surviving
    replies (best-ranked first); counts go into `stats`."""
    by_id: dict[str, dict] = {}
    for m in messages:
        by_id.setdefault(m["message_id"], m)  # first one wins, as in read_messages
    for m in by_id.values():
        if m.get("deleted"):
            stats.deleted += 1
        elif m.get("review_result") is False:
            stats.rejected += 1

    children: dict[str, list[dict]] = defaultdict(list)
    roots = []
    for m in by_id.values():
        if m["parent_id"] is None:
            roots.append(m)
        elif m["parent_id"] in by_id:
            children[m["parent_id"]].append(m)

    kept_roots, kept_children, reached = _prune(roots, children, stats)
    stats.orphans += len(by_id) - reached  # never reached from a root: parent missing, or a cycle
    stats.trees += len(kept_roots)
    return by_id, kept_roots, kept_children


def _prune(
    roots: list[dict], children: dict[str, list[dict]], stats: OasstStats
) -> tuple[list[dict], dict[str, list[dict]], int]:
    """Walk down from the roots, dropping removed messages and all their replies.

    Returns the surviving roots, each surviving message's surviving children (best-ranked
    first), and how many messages the walk reached.
    """
    kept_roots: list[dict] = []
    kept_children: dict[str, list[dict]] = defaultdict(list)
    reached = 0
    # (message, its surviving parent or None, the role it must have, below a removed message?)
    stack: list[tuple[dict, dict | None, str, bool]] = [(r, None, "prompter", False) for r in roots]
    while stack:  # a loop, not recursion: a long thread cannot overflow the stack
        m, parent, expected_role, below_removed = stack.pop()
        reached += 1
        flagged = bool(m.get("deleted")) or m.get("review_result") is False
        if below_removed:
            if not flagged:  # flagged ones are already counted as deleted or rejected
                stats.dropped_below_removed += 1
            removed = True
        elif flagged:
            removed = True
        elif m["role"] != expected_role:
            stats.broken_alternation += 1
            removed = True
        else:
            removed = False
            if parent is None:
                kept_roots.append(m)
            else:
                kept_children[parent["message_id"]].append(m)
        next_role = "assistant" if m["role"] == "prompter" else "prompter"
        for child in children.get(m["message_id"], []):
            stack.append((child, None if removed else m, next_role, removed))

    for siblings in kept_children.values():
        siblings.sort(key=_rank_key)
    return kept_roots, kept_children, reached


def _rank_key(m: dict) -> tuple[bool, float, str]:
    # Lowest rank first; unranked after ranked; ties broken by id so the result never varies.
    rank = m.get("rank")
    return (rank is None, 0.0 if rank is None else float(rank), m["message_id"])


def _best_path(root: dict, kept_children: dict[str, list[dict]]) -> list[dict]:
    path = [root]
    while kept_children.get(path[-1]["message_id"]):
        path.append(kept_children[path[-1]["message_id"]][0])
    return path


def _all_paths(root: dict, kept_children: dict[str, list[dict]]) -> list[list[dict]]:
    paths = []
    stack = [[root]]
    while stack:
        path = stack.pop()
        replies = kept_children.get(path[-1]["message_id"])
        if not replies:
            paths.append(path)
        for reply in replies or []:
            stack.append([*path, reply])
    return paths


# --- splitting -------------------------------------------------------------------------------


def tree_split(tree_id: str, val_percent: float) -> str:
    """ "train" or "val" for a whole tree, from a stable hash of its id.

    sha256, not Python's hash(): that one changes from run to run, and the split must not.
    Splitting by tree (never by message) keeps every reply to a val prompt out of train.
    """
    if not 0 <= val_percent <= 100:
        raise ValueError(f"val_percent must be between 0 and 100, got {val_percent}")
    digest = hashlib.sha256(tree_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64 * 100  # uniform in [0, 100)
    return "val" if position < val_percent else "train"
