"""Stage `sft`: fine-tune the base model on OASST1 conversations -> models/chat.
(The base model is models/base, or models/distill when distill.enabled.)

Same training loop as pretraining; the difference is the data: conversations packed into
rows, with the loss taken only on the assistant's tokens (the loss mask from the template).

With `sft.lora.rank > 0` the base stays frozen and only LoRA adapters train
(bardlet/training/lora.py). models/chat then holds the merged weights (model.safetensors: an
ordinary model for evaluate, export, chat and serve) and the adapter beside them
(adapter.safetensors, adapter_config.json); models/base is only read.
"""

from collections.abc import Callable

from bardlet import tracking
from bardlet.config import LoraParams, load_params
from bardlet.data.loaders import PackedConversations
from bardlet.files import sha256_file
from bardlet.model import GPT
from bardlet.tokenizer import load_tokenizer
from bardlet.training import checkpoint, distributed, lora
from stages.outputs import Saved, train_and_save, training_device
from stages.paths import BASE_MODEL, CHAT_MODEL, DISTILL_MODEL, SHARDS, TOKENIZER_DIR


def merged_with_adapter(settings: LoraParams, base_sha256: str) -> Callable[[GPT], Saved]:
    """What a LoRA run saves: the merged model, the adapter's files, and its size."""

    def to_save(model: GPT) -> Saved:
        files = lora.adapter_files(model, settings, base_sha256)
        numbers = {
            "trainable_params": float(lora.trainable_params(model)),
            "adapter_bytes": float(len(files[lora.ADAPTER])),
        }
        return Saved(lora.merge(model), files, numbers)

    return to_save


def main() -> None:
    params = load_params()
    settings = params.sft
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    base = DISTILL_MODEL if params.distill.enabled else BASE_MODEL  # the distilled, if made
    model, base_info = checkpoint.load(base, training_device(params))
    if base_info["tokenizer_hash"] != tokenizer.hash:
        raise SystemExit(f"{base} was trained with another tokenizer: run `dvc repro`")
    block = model.config.block_size
    train_data, val_data = (
        PackedConversations.from_split(
            SHARDS / "sft" / split, tokenizer, block, settings.batch_size, settings.seed
        )
        for split in ("train", "val")
    )
    val_batches = list(val_data.sequential())[: settings.eval_batches]
    print(f"sft: {len(train_data.rows):,} packed rows of {block} tokens")

    identity: dict[str, object] = {"base_model": sha256_file(base / checkpoint.WEIGHTS)}
    to_save = None
    if settings.lora.rank:
        total = model.num_params()
        lora.add_adapters(model, settings.lora, settings.seed)
        # In config.json and the resume fingerprint: a LoRA checkpoint never resumes a full
        # fine-tune, nor one of another rank (full fine-tuning leaves config.json as it was).
        identity["lora"] = settings.lora.model_dump()
        to_save = merged_with_adapter(settings.lora, str(identity["base_model"]))
        trainable = lora.trainable_params(model)
        print(
            f"LoRA rank {settings.lora.rank} on {', '.join(settings.lora.targets)}: "
            f"{trainable:,} trainable parameters ({100 * trainable / total:.2f}% of {total:,}); "
            "the base model stays frozen"
        )

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
        if settings.lora.rank:
            tracking.log_metrics({"lora/trainable_params": lora.trainable_params(model)})
        data = (train_data, val_batches)
        runs = {"run_id": run_id, "base_run_id": base_run_id}
        train_and_save(
            "sft", model, data, settings, tokenizer, CHAT_MODEL, identity, runs, to_save=to_save
        )
        if settings.lora.rank and distributed.is_main():
            size = (CHAT_MODEL / lora.ADAPTER).stat().st_size
            full = (CHAT_MODEL / checkpoint.WEIGHTS).stat().st_size
            print(
                f"adapter: {CHAT_MODEL / lora.ADAPTER} {size / 1024:,.1f} KiB "
                f"({100 * size / full:.1f}% of the merged {checkpoint.WEIGHTS}, "
                f"{full / 1024:,.0f} KiB)"
            )
            tracking.log_metrics({"lora/adapter_bytes": size})
            for name in (lora.ADAPTER, lora.ADAPTER_CONFIG):
                tracking.log_artifact(CHAT_MODEL / name, "adapter")

    distributed.shutdown()


if __name__ == "__main__":
    main()
