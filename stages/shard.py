"""Stage `shard`: token ids into Parquet shards, one row per paragraph or conversation.

pretrain/: each corpus source's text, one row per paragraph (text up to a blank line), plain
tokens, read and encoded a batch of paragraphs at a time. Row ids start with the source's name.
sft/: the conversations rendered with the chat template, tokens plus loss mask.
"""

import json
from collections.abc import Iterator
from itertools import islice

import numpy as np

from bardlet.config import load_params
from bardlet.data.chat_template import render
from bardlet.data.corpus import paragraphs
from bardlet.data.report import data_report
from bardlet.data.shards import Row, write_split
from bardlet.files import new_folder, write_json_atomic
from bardlet.tokenizer import AnyTokenizer, load_tokenizer
from stages.paths import CHATS, CORPUS, REPORTS, SHARDS, TOKENIZER_DIR

ENCODE_BATCH = 4096  # paragraphs encoded together: fast, and memory stays small


def text_rows(tokenizer: AnyTokenizer, split: str) -> Iterator[Row]:
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32
    for source in sorted(path for path in CORPUS.iterdir() if path.is_dir()):
        pieces, first = paragraphs(source / f"{split}.txt"), 0
        while batch := list(islice(pieces, ENCODE_BATCH)):
            for i, ids in enumerate(tokenizer.encode_batch(batch), first):
                yield Row(source_id=f"{source.name}/{split}/{i}", tokens=np.array(ids, dtype))
            first += len(batch)


def chat_rows(tokenizer: AnyTokenizer, split: str) -> Iterator[Row]:
    with open(CHATS / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            conversation = json.loads(line)
            ids, mask = render(tokenizer, conversation["messages"])
            source_id = f"{conversation['source']}/{conversation['id']}"
            yield Row(source_id=source_id, tokens=ids, loss_mask=mask)


def main() -> None:
    params = load_params().shard
    tokenizer = load_tokenizer(TOKENIZER_DIR)
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
