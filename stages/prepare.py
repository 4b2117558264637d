"""Stage `prepare`: Tiny Shakespeare train/val text, and OASST1 conversations split by tree.

Shakespeare: the first 90% of the file's bytes train, the last 10% validate (nanoGPT's
split, so bits per byte compare with its published numbers). OASST1: message trees rebuilt
into conversations, assigned to train or val by a stable hash of the tree id, so no reply
of a validation conversation is ever trained on.
"""

import json

from bardlet.config import load_params
from bardlet.data.oasst import build_conversations, read_all_messages, tree_split
from bardlet.data.sources import oasst1_sources
from bardlet.files import new_folder, write_json_atomic, write_text_atomic
from stages.paths import OASST, PREPARED, RAW, REPORTS, SHAKESPEARE


def split_text(data: bytes, val_fraction: float) -> tuple[str, str]:
    cut = int(len(data) * (1 - val_fraction))
    while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # never cut inside a character
        cut += 1
    return data[:cut].decode("utf-8"), data[cut:].decode("utf-8")


def main() -> None:
    all_params = load_params()
    params = all_params.prepare
    train, val = split_text(
        (RAW / "tinyshakespeare/input.txt").read_bytes(), params.shakespeare_val_fraction
    )
    files = [RAW / s.path for s in oasst1_sources(all_params.download.oasst1_full)]
    messages, stats = read_all_messages(files, lang=params.oasst_lang)
    conversations = build_conversations(messages, mode=params.oasst_mode, stats=stats)
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for conversation in conversations:
        splits[tree_split(conversation["id"], params.oasst_val_percent)].append(conversation)

    # Built beside data/prepared and swapped in whole: a failure leaves the previous data.
    with new_folder(PREPARED) as folder:
        write_text_atomic(folder / SHAKESPEARE.name / "train.txt", train)
        write_text_atomic(folder / SHAKESPEARE.name / "val.txt", val)
        for name, rows in splits.items():
            lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
            write_text_atomic(folder / OASST.name / f"{name}.jsonl", "".join(lines))

    report = {
        "shakespeare": {"train_chars": len(train), "val_chars": len(val)},
        "oasst": {
            **stats.as_dict(),
            "train_conversations": len(splits["train"]),
            "val_conversations": len(splits["val"]),
        },
    }
    write_json_atomic(REPORTS / "prepare.json", report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
