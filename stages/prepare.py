"""Stage `prepare`: the text to pretrain on and the conversations to fine-tune on, split.

prepare.corpus (default: Tiny Shakespeare) -> data/prepared/corpus/<source>/{train,val}.txt:
the last `corpus_val_fraction` of each source's bytes validates (nanoGPT's split).
prepare.chats (default: OASST1) -> data/prepared/chats/{train,val}.jsonl, one checked
conversation a line, assigned by a stable hash of its id (for OASST, of its message tree), so
no reply of a validation conversation is ever trained on. Your own files live in data/own/.
prepare.prefs (default: OASST1's rankings) -> data/prepared/prefs/{train,val}.jsonl, one
preference pair a line for the dpo stage, split the same way.
"""

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from bardlet.config import ChatSource, PrepareParams, load_params
from bardlet.data.chats import Message, checked, read_chats, read_pairs
from bardlet.data.corpus import DataFileError, source_files, write_split_text
from bardlet.data.oasst import (
    build_conversations,
    preference_pairs,
    read_all_messages,
    tree_split,
)
from bardlet.data.sources import TINYSHAKESPEARE, oasst1_sources
from bardlet.files import new_folder, write_json_atomic, write_text_atomic
from stages.paths import CHATS, CORPUS, PREFS, PREPARED, RAW, REPORTS

Conversations = Iterable[tuple[str, list[Message]]]


class Conversation(NamedTuple):
    split: str
    source: str
    id: str
    messages: list[Message]

    def json_line(self) -> str:
        row = {"source": self.source, "id": self.id, "messages": self.messages}
        return json.dumps(row, ensure_ascii=False) + "\n"


def oasst1(params: PrepareParams, full: bool, counts: dict[str, Any]) -> Conversations:
    """The downloaded OASST1 trees as conversations; what happened to its messages goes to
    `counts`."""
    files = [RAW / s.path for s in oasst1_sources(full)]
    messages, stats = read_all_messages(files, lang=params.oasst_lang)
    found = build_conversations(messages, mode=params.oasst_mode, stats=stats)
    counts.update(stats.as_dict())
    return ((c["id"], c["messages"]) for c in found)


def own_chats(source: ChatSource, params: PrepareParams, counts: dict[str, Any]) -> Conversations:
    files = source_files(source.path)
    counts["files"] = len(files)
    for path in files:
        for conversation_id, messages in read_chats(
            path, source.format, params.oasst_lang, params.oasst_mode
        ):
            yield f"{source.label}/{conversation_id}", messages


def write_pairs(params: PrepareParams, full: bool, folder: Path) -> dict[str, Any]:
    """The preference pairs of every prepare.prefs source, split like the conversations (OASST1
    by tree), written a JSON line each; their counts per source."""
    counts: dict[str, Any] = {}
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for source in params.prefs:
        if isinstance(source, str):  # oasst1: the rankers' preferences
            files = [RAW / s.path for s in oasst1_sources(full)]
            messages, _ = read_all_messages(files, lang=params.oasst_lang)
            name, pairs = source, [(p["tree"], p) for p in preference_pairs(messages)]
        else:  # split by the same rule as your conversations: source/id
            name, files = source.label, source_files(source.path)
            pairs = [(f"{name}/{p['id']}", p) for path in files for p in read_pairs(path)]
        found = {"train": 0, "val": 0}
        for key, pair in pairs:
            split = tree_split(key, params.chats_val_percent)
            row = {k: pair[k] for k in ("prompt", "chosen", "rejected")}
            lines[split].append(json.dumps({"source": name, "id": pair["id"], **row}) + "\n")
            found[split] += 1
        counts[name] = {"train_pairs": found["train"], "val_pairs": found["val"]}
    for split, rows in lines.items():
        write_text_atomic(folder / PREFS.name / f"{split}.jsonl", "".join(rows))
    return counts


def chats_text(conversations: list[Conversation], folder: Path) -> dict[str, int]:
    """The corpus source `oasst1`: the message text of the OASST1 conversations, train from
    train and val from val (so pretraining never sees a validation reply)."""
    sizes = {}
    for split in ("train", "val"):
        texts = [m["content"] for c in conversations if c.split == split for m in c.messages]
        text = "\n\n".join(texts)
        write_text_atomic(folder / f"{split}.txt", text)
        sizes[f"{split}_bytes"] = len(text.encode("utf-8"))
    documents = sum(len(c.messages) for c in conversations)
    return {"files": 0, "documents": documents, **sizes}


def main() -> None:
    all_params = load_params()
    params = all_params.prepare
    report: dict[str, Any] = {"corpus": {}, "chats": {}, "prefs": {}}
    kept: list[Conversation] = []
    # Built beside data/prepared and swapped in whole: a failure leaves the previous data.
    with new_folder(PREPARED) as folder:
        wanted = [*params.chats, *(["oasst1"] if "oasst1" in params.corpus else [])]
        for chats in dict.fromkeys(wanted):  # oasst1 once, also when only the corpus wants it
            counts: dict[str, Any] = {}
            if isinstance(chats, str):  # oasst1, downloaded
                name, found = chats, oasst1(params, all_params.download.oasst1_full, counts)
            else:
                name, found = chats.label, own_chats(chats, params, counts)
            dropped: Counter[str] = Counter()
            splits: Counter[str] = Counter()
            for conversation_id, messages in checked(found, dropped):
                split = tree_split(conversation_id, params.chats_val_percent)
                kept.append(Conversation(split, name, conversation_id, messages))
                splits[split] += 1
            if not splits:
                raise DataFileError(
                    f"prepare.chats: {name} has no conversation to train on "
                    f"(left out: {dict(dropped) or 'none found'})"
                )
            counts.update(
                dropped=dict(sorted(dropped.items())),
                train_conversations=splits["train"],
                val_conversations=splits["val"],
            )
            if chats in params.chats:
                report["chats"][name] = counts
        for split in ("train", "val"):
            lines = [
                c.json_line() for c in kept if c.split == split and c.source in report["chats"]
            ]
            if not lines:
                raise DataFileError(
                    f"prepare.chats: no conversation landed in {split}: add conversations, or "
                    "change prepare.chats_val_percent"
                )
            write_text_atomic(folder / CHATS.name / f"{split}.jsonl", "".join(lines))

        for text in params.corpus:
            if text == "oasst1":  # the OASST1 conversations' text
                oasst = [c for c in kept if c.source == "oasst1"]
                report["corpus"][text] = chats_text(oasst, folder / CORPUS.name / text)
                continue
            if isinstance(text, str):  # tinyshakespeare, downloaded
                name, files, fmt, column = text, [RAW / TINYSHAKESPEARE.path], "text", ""
            else:
                name, files = text.label, source_files(text.path)
                fmt, column = text.format, text.column
            report["corpus"][name] = write_split_text(
                files, fmt, column, params.corpus_val_fraction, folder / CORPUS.name / name
            )
        report["prefs"] = write_pairs(params, all_params.download.oasst1_full, folder)

    write_json_atomic(REPORTS / "prepare.json", report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    try:
        main()
    except (DataFileError, FileNotFoundError) as error:
        raise SystemExit(f"prepare: {error}") from None
