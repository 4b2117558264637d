"""Stage `shard`: token ids into Parquet shards, one row per document or conversation.

pretrain/: Tiny Shakespeare, one row per speech (text between blank lines), plain tokens.
sft/: OASST1 conversations rendered with the chat template, tokens plus loss mask.
"""

import json
import re
from collections.abc import Iterator

from bardlet.config import load_params
from bardlet.data.chat_template import render
from bardlet.data.report import data_report
from bardlet.data.shards import Row, write_split
from bardlet.files import new_folder, write_json_atomic
from bardlet.tokenizer import Tokenizer
from stages.paths import OASST, REPORTS, SHAKESPEARE, SHARDS, TOKENIZER


def text_rows(tokenizer: Tokenizer, split: str) -> Iterator[Row]:
    text = (SHAKESPEARE / f"{split}.txt").read_text(encoding="utf-8")
    # Split after each blank line: the pieces concatenate back to exactly the original text.
    documents = [d for d in re.split(r"(?<=\n\n)", text) if d]
    for i, ids in enumerate(tokenizer.encode_batch(documents)):
        yield Row(source_id=f"shakespeare/{split}/{i}", tokens=ids)


def chat_rows(tokenizer: Tokenizer, split: str) -> Iterator[Row]:
    for line in (OASST / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
        conversation = json.loads(line)
        ids, mask = render(tokenizer, conversation["messages"])
        yield Row(source_id=f"oasst/{conversation['id']}", tokens=ids, loss_mask=mask)


def main() -> None:
    params = load_params().shard
    tokenizer = Tokenizer.load(TOKENIZER)
    # Built beside data/shards and swapped in whole: a failure leaves the previous shards.
    with new_folder(SHARDS) as folder:
        for name, make_rows in (("pretrain", text_rows), ("sft", chat_rows)):
            for split in ("train", "val"):
                manifest = write_split(
                    make_rows(tokenizer, split),
                    folder / name / split,
                    tokenizer_hash=tokenizer.hash,
                    vocab_size=tokenizer.vocab_size,
                    rows_per_file=params.rows_per_file,
                    row_group_size=params.row_group_size,
                )
                print(f"{name}/{split}: {manifest['rows']:,} rows, {manifest['tokens']:,} tokens")
        report = data_report(folder, tokenizer)
    write_json_atomic(REPORTS / "data.json", report)


if __name__ == "__main__":
    main()
