"""Stage `pretrain`: a GPT learns the corpus (Tiny Shakespeare) by next-token prediction ->
models/base. With several corpus sources, `prepare.corpus` weights say how often each is drawn.

With a pretrained `init`, models/base is that checkpoint instead (its vocabulary grown by the
chat tokens, its context capped at model.block_size), measured on the same validation text.
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bardlet import tracking
from bardlet.config import ModelParams, Params, TrainParams, init_folder, load_params
from bardlet.data.loaders import Batch, TokenWindows
from bardlet.data.shards import read_tokens
from bardlet.evaluation import measure
from bardlet.files import write_csv_atomic, write_json_atomic
from bardlet.model import GPT, GPTConfig
from bardlet.tokenizer import AnyTokenizer, load_tokenizer
from bardlet.training import checkpoint, distributed
from bardlet.training.distill import Teacher
from stages.outputs import train_and_save, training_device
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


def corpus_batches(
    params: Params, tokenizer: AnyTokenizer, settings: TrainParams, block: int
) -> tuple[TokenWindows, list[Batch], dict[str, Any]]:
    """Training windows of `block` tokens drawn by the sources' weights, the validation
    batches, and what the resume fingerprint and config.json record about the data.
    pretrain, teacher and distill all train on these."""
    train_tokens, sources = read_tokens(SHARDS / "pretrain/train", tokenizer.hash)
    val_tokens, _ = read_tokens(SHARDS / "pretrain/val", tokenizer.hash)
    weights = {s if isinstance(s, str) else s.label: 1.0 for s in params.prepare.corpus}
    weights.update({s.label: s.weight for s in params.prepare.corpus if not isinstance(s, str)})
    mix = {name: (span, weights[name]) for name, span in sources.items()}
    train_data = TokenWindows(train_tokens, block, settings.batch_size, settings.seed, mix)
    val_data = TokenWindows(val_tokens, block, settings.batch_size, settings.seed + 1)
    val_batches = [val_data.batch(i) for i in range(settings.eval_batches)]
    identity: dict[str, Any] = {"train_tokens": len(train_tokens)}
    if len(set(weights.values())) > 1:  # what the windows were drawn from
        identity["corpus_weights"] = weights
    return train_data, val_batches, identity


def train_on_corpus(
    name: str,
    shape: ModelParams,
    settings: TrainParams,
    model_dir: Path,
    *,
    teacher: Teacher | None = None,
    teacher_info: dict[str, Any] | None = None,
) -> None:
    """A new model of `shape`, trained on the corpus with `settings` (and a teacher, if one is
    given) -> model_dir, reports/<name>.json and the curves. Resumable, tracked in MLflow
    (a distilled model's run nests under its teacher's)."""
    params = load_params()
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    train_data, val_batches, identity = corpus_batches(
        params, tokenizer, settings, shape.block_size
    )
    torch.manual_seed(settings.seed)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, **shape.model_dump())
    model = GPT(config).to(training_device(params))
    print(
        f"{name}: {model.num_params():,} parameters; {identity['train_tokens']:,} training tokens"
    )
    run_params: dict[str, Any] = {"model": config.to_dict(), name: settings.model_dump()}
    tags, runs = {"stage": name}, {}
    if teacher is not None and teacher_info is not None:
        run_params["distill"] = params.distill.model_dump()
        # In the resume fingerprint and config.json: another teacher is another training.
        identity["teacher"] = {
            "model": teacher_info["sha256"],
            "alpha": teacher.alpha,
            "temperature": teacher.temperature,
        }
        tags["teacher_run_id"] = runs["teacher_run_id"] = teacher_info.get("run_id") or ""
    # pretrain's run is the parent of every fine-tune of models/base (bardlet/tracking.py).
    with tracking.run(
        name,
        run_params,
        tags,
        enabled=distributed.is_main(),  # under torchrun only rank 0 tracks
        parent_run_id=tags.get("teacher_run_id"),
        tokenizer_hash=tokenizer.hash,
    ) as run_id:
        tracking.log_metrics({"model/params": model.num_params()})
        for file in ("bpe.json", "tokenizer.json"):
            tracking.log_artifact(TOKENIZER_DIR / file, "tokenizer")
        train_and_save(
            name,
            model,
            (train_data, val_batches),
            settings,
            tokenizer,
            model_dir,
            identity,
            {"run_id": run_id, **runs},
            teacher=teacher,
        )
    distributed.shutdown()


def main() -> None:
    params = load_params()
    if (folder := init_folder(params.init)) is not None:
        start_from(folder, params, load_tokenizer(TOKENIZER_DIR))
        return
    train_on_corpus("pretrain", params.model, params.pretrain, BASE_MODEL)


if __name__ == "__main__":
    main()
