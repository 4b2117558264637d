"""Stage `pretrain`: a GPT learns the corpus (Tiny Shakespeare) by next-token prediction ->
models/base. With several corpus sources, `prepare.corpus` weights say how often each is drawn.

With a pretrained `init`, models/base is that checkpoint instead (its vocabulary grown by the
chat tokens, its context capped at model.block_size), measured on the same validation text.
"""

from pathlib import Path

import numpy as np
import torch

from bardlet import tracking
from bardlet.config import Params, init_folder, load_params
from bardlet.data.loaders import TokenWindows
from bardlet.data.shards import read_tokens
from bardlet.evaluation import measure
from bardlet.files import write_csv_atomic, write_json_atomic
from bardlet.model import GPT, GPTConfig
from bardlet.tokenizer import AnyTokenizer, load_tokenizer
from bardlet.training import checkpoint, distributed
from stages.outputs import train_and_save
from stages.paths import BASE_MODEL, PLOTS, REPORTS, SHARDS, TOKENIZER_DIR


def start_from(folder: Path, params: Params, tokenizer: AnyTokenizer) -> None:
    """models/base from a pretrained checkpoint, with its validation numbers as step 0."""
    model = GPT.from_pretrained(folder, params.model.block_size)
    if tokenizer.vocab_size > model.config.vocab_size:
        model.resize_vocab(tokenizer.vocab_size)
    val_tokens, _ = read_tokens(SHARDS / "pretrain/val", tokenizer.hash)
    windows = TokenWindows(val_tokens, model.config.block_size, params.pretrain.batch_size, 0)
    lengths = np.array(tokenizer.byte_lengths())
    with torch.no_grad():
        metrics = measure(
            model.eval(),
            windows.sequential(),
            lengths,
            torch.device("cpu"),
            params.pretrain.eval_batches,
        )
    final = {
        "val_loss": metrics["loss"],
        "val_bpb": metrics["bpb"],
        "step": 0.0,
        "steps": 0.0,
        "tokens": 0.0,
    }
    print(f"{folder}: {model.num_params():,} parameters, val bpb {metrics['bpb']:.4f}")
    with tracking.run(
        "pretrain",
        {"model": model.config.to_dict(), "init": params.init},
        {"stage": "pretrain"},
        tokenizer_hash=tokenizer.hash,
    ) as run_id:
        tracking.log_metrics(
            {
                "model/params": model.num_params(),
                "val/loss": metrics["loss"],
                "val/bpb": metrics["bpb"],
            },
            0,
        )
        info = {"tokenizer_hash": tokenizer.hash, "init": params.init, "metrics": final}
        checkpoint.save(model, BASE_MODEL, info, {"run_id": run_id})
    write_json_atomic(REPORTS / "pretrain.json", {**final, "params": model.num_params()})
    row = {"step": 0, "train_loss": "", "val_loss": metrics["loss"], "val_bpb": metrics["bpb"]}
    write_csv_atomic(PLOTS / "pretrain.csv", [row])


def main() -> None:
    params = load_params()
    settings = params.pretrain
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    if (folder := init_folder(params.init)) is not None:
        start_from(folder, params, tokenizer)
        return
    block = params.model.block_size
    train_tokens, sources = read_tokens(SHARDS / "pretrain/train", tokenizer.hash)
    val_tokens, _ = read_tokens(SHARDS / "pretrain/val", tokenizer.hash)
    weights = {s if isinstance(s, str) else s.label: 1.0 for s in params.prepare.corpus}
    weights.update({s.label: s.weight for s in params.prepare.corpus if not isinstance(s, str)})
    mix = {name: (span, weights[name]) for name, span in sources.items()}
    train_data = TokenWindows(train_tokens, block, settings.batch_size, settings.seed, mix)
    val_data = TokenWindows(val_tokens, block, settings.batch_size, settings.seed + 1)
    val_batches = [val_data.batch(i) for i in range(settings.eval_batches)]

    torch.manual_seed(settings.seed)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, **params.model.model_dump())
    model = GPT(config).to(distributed.init())
    print(f"model: {model.num_params():,} parameters; {len(train_tokens):,} training tokens")
    run_params = {"model": config.to_dict(), "pretrain": settings.model_dump()}
    # The parent run of every fine-tune of this base model (see bardlet/tracking.py).
    with tracking.run(
        "pretrain",
        run_params,
        {"stage": "pretrain"},
        enabled=distributed.is_main(),  # under torchrun only rank 0 tracks
        tokenizer_hash=tokenizer.hash,
    ) as run_id:
        tracking.log_metrics({"model/params": model.num_params()})
        for name in ("bpe.json", "tokenizer.json"):
            tracking.log_artifact(TOKENIZER_DIR / name, "tokenizer")
        data = (train_data, val_batches)
        identity: dict = {"train_tokens": len(train_tokens)}
        if len(set(weights.values())) > 1:  # what the windows were drawn from
            identity["corpus_weights"] = weights
        runs = {"run_id": run_id}
        train_and_save("pretrain", model, data, settings, tokenizer, BASE_MODEL, identity, runs)

    distributed.shutdown()


if __name__ == "__main__":
    main()
