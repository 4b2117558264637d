"""Stage `pretrain`: a GPT learns the corpus (Tiny Shakespeare) by next-token prediction ->
models/base. With several corpus sources, `prepare.corpus` weights say how often each is drawn."""

import torch

from bardlet import tracking
from bardlet.config import load_params
from bardlet.data.loaders import TokenWindows
from bardlet.data.shards import read_tokens
from bardlet.model import GPT, GPTConfig
from bardlet.tokenizer import Tokenizer
from bardlet.training import distributed
from stages.outputs import train_and_save
from stages.paths import BASE_MODEL, SHARDS, TOKENIZER, TOKENIZER_DIR


def main() -> None:
    params = load_params()
    settings = params.pretrain
    tokenizer = Tokenizer.load(TOKENIZER)
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
