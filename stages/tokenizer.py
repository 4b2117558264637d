"""Stage `tokenizer`: train our byte-level BPE on the training text (never on validation)."""

import json

from bardlet.config import load_params
from bardlet.files import new_folder
from bardlet.tokenizer import Tokenizer
from bardlet.tokenizer.hf import export_hf
from stages.paths import OASST, SHAKESPEARE, TOKENIZER, TOKENIZER_DIR


def training_texts() -> list[str]:
    texts = [(SHAKESPEARE / "train.txt").read_text(encoding="utf-8")]
    for line in (OASST / "train.jsonl").read_text(encoding="utf-8").splitlines():
        texts.extend(message["content"] for message in json.loads(line)["messages"])
    return texts


def main() -> None:
    params = load_params().tokenizer
    tokenizer = Tokenizer.train(
        training_texts(), vocab_size=params.vocab_size, special_tokens=params.special_tokens
    )
    with new_folder(TOKENIZER_DIR) as folder:  # swapped in whole when both files are written
        tokenizer.save(folder / TOKENIZER.name)
        export_hf(tokenizer, folder / "tokenizer.json")
    print(
        f"vocab {tokenizer.vocab_size}, {len(tokenizer.merges)} merges, hash {tokenizer.hash[:12]}"
    )


if __name__ == "__main__":
    main()
