"""Stage `sft`: fine-tune the base model on OASST1 conversations -> models/chat.

Same training loop as pretraining; the difference is the data: conversations packed into
rows, with the loss taken only on the assistant's tokens (the loss mask from the template).
"""

from bardlet import tracking
from bardlet.config import load_params
from bardlet.data.loaders import PackedConversations
from bardlet.files import sha256_file
from bardlet.tokenizer import Tokenizer
from bardlet.training import checkpoint, distributed
from stages.outputs import train_and_save
from stages.paths import BASE_MODEL, CHAT_MODEL, SHARDS, TOKENIZER


def main() -> None:
    settings = load_params().sft
    tokenizer = Tokenizer.load(TOKENIZER)
    model, base_info = checkpoint.load(BASE_MODEL, distributed.init())
    if base_info["tokenizer_hash"] != tokenizer.hash:
        raise SystemExit("models/base was trained with another tokenizer: run `dvc repro`")
    block = model.config.block_size
    train_data, val_data = (
        PackedConversations.from_split(
            SHARDS / "sft" / split, tokenizer, block, settings.batch_size, settings.seed
        )
        for split in ("train", "val")
    )
    val_batches = list(val_data.sequential())[: settings.eval_batches]
    print(f"sft: {len(train_data.rows):,} packed rows of {block} tokens")
    base_run_id = base_info.get("run_id") or ""
    tags = {"stage": "sft", "base_run_id": base_run_id}
    # A child run of the pretrain run that made models/base: fine-tunes of one base model
    # group under it in MLflow.
    with tracking.run(
        "sft",
        {"model": model.config.to_dict(), "sft": settings.model_dump()},
        tags,
        enabled=distributed.is_main(),  # under torchrun only rank 0 tracks
        parent_run_id=base_run_id,
        tokenizer_hash=tokenizer.hash,
    ) as run_id:
        data = (train_data, val_batches)
        identity = {"base_model": sha256_file(BASE_MODEL / checkpoint.WEIGHTS)}
        runs = {"run_id": run_id, "base_run_id": base_run_id}
        train_and_save("sft", model, data, settings, tokenizer, CHAT_MODEL, identity, runs)

    distributed.shutdown()


if __name__ == "__main__":
    main()
