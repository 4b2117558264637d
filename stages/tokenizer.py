"""Stage `tokenizer`: train our byte-level BPE on the training text (never on validation).

With a pretrained `init`, the model's own tokenizer.json instead, with bardlet's chat tokens
added if it lacks them (the rule: bardlet/tokenizer/hf.py).
"""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from bardlet.config import init_folder, load_params
from bardlet.data.corpus import paragraphs
from bardlet.files import new_folder
from bardlet.model import PretrainedError, config_from_hf, read_hf_config
from bardlet.tokenizer import HFTokenizer, Tokenizer
from bardlet.tokenizer.hf import export_hf
from stages.paths import CHATS, CORPUS, TOKENIZER, TOKENIZER_DIR


def training_texts(sample_chars: int) -> list[str]:
    """Every corpus source's training text and every message of the training conversations;
    when that is more than `sample_chars`, an even sample of it: paragraphs and conversations
    kept by a stable hash, so the same data gives the same sample."""
    corpus = sorted(CORPUS.glob("*/train.txt"))
    chats = CHATS / "train.jsonl"
    size = sum(path.stat().st_size for path in [*corpus, chats])
    share = min(1.0, sample_chars / size)
    texts = []
    for path in corpus:
        if share == 1.0:
            texts.append(path.read_text(encoding="utf-8"))  # whole: it is within the budget
        else:
            pieces = enumerate(paragraphs(path))
            texts.extend(piece for i, piece in pieces if kept(f"{path}#{i}", share))
    for i, line in enumerate(lines(chats)):
        if kept(f"{chats}#{i}", share):
            texts.extend(message["content"] for message in json.loads(line)["messages"])
    return texts


def lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        yield from f


def kept(key: str, share: float) -> bool:
    """Whether the piece named `key` is in a sample of `share` (stable across runs)."""
    if share >= 1.0:
        return True
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def pretrained_tokenizer(folder: Path) -> HFTokenizer:
    """The folder's tokenizer.json with the chat tokens, checked against its embeddings."""
    rows = config_from_hf(read_hf_config(folder), folder).vocab_size
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise PretrainedError(
            f"{folder} has no tokenizer.json: copy it from the model's Hugging Face folder "
            "(bardlet reads the fast-tokenizer file, not vocab.json/merges.txt or .model)"
        )
    own = HFTokenizer.load(path)
    if own.vocab_size > rows:
        raise PretrainedError(
            f"{path} has {own.vocab_size} tokens but the model's embedding has {rows} rows: "
            "the tokenizer is not this model's; use the tokenizer.json from the same folder"
        )
    return own.with_chat_tokens()


def main() -> None:
    all_params = load_params()
    params, folder = all_params.tokenizer, init_folder(all_params.init)
    if folder is not None:
        tokenizer = pretrained_tokenizer(folder)
        with new_folder(TOKENIZER_DIR) as out:
            tokenizer.save(out / "tokenizer.json")
        print(
            f"{folder}: vocab {tokenizer.vocab_size} with the chat tokens, hash {tokenizer.hash[:12]}"
        )
        return
    tokenizer = Tokenizer.train(
        training_texts(params.sample_chars),
        vocab_size=params.vocab_size,
        special_tokens=params.special_tokens,
    )
    with new_folder(TOKENIZER_DIR) as folder:  # swapped in whole when both files are written
        tokenizer.save(folder / TOKENIZER.name)
        export_hf(tokenizer, folder / "tokenizer.json")
    print(
        f"vocab {tokenizer.vocab_size}, {len(tokenizer.merges)} merges, hash {tokenizer.hash[:12]}"
    )


if __name__ == "__main__":
    main()
