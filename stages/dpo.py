"""Stage `dpo` (optional: `dpo.enabled`): tune the chat model on preference pairs -> models/dpo.

Off (the default), it writes only models/dpo/README.md saying so, and export takes
models/chat. On, a frozen copy of models/chat is the reference and DPO (bardlet/training/dpo.py)
trains on data/prepared/prefs/train.jsonl; before and after, it measures on the held-out pairs
(preference accuracy of the implicit reward, mean reward margin) and on the chats' validation
split (bits per byte: how far the model drifts from plain next-token prediction), into
reports/dpo.json. The MLflow run nests under the sft run.
"""

import json

from bardlet.config import load_params
from bardlet.defaults import UserError
from bardlet.files import sha256_file, write_json_atomic
from bardlet.tokenizer import load_tokenizer
from stages.optional import switched_off
from stages.paths import CHAT_MODEL, DPO_MODEL, PREFS, REPORTS, SHARDS, TOKENIZER_DIR

OFF = """# models/dpo

`dpo.enabled` is false in params.yaml, so nothing was tuned on preferences: `export` takes
models/chat. Set `dpo.enabled: true` (or `dvc exp run -S dpo.enabled=true`) to run it.
"""


def main() -> None:
    params = load_params()
    settings = params.dpo
    if not settings.enabled:
        switched_off("dpo", DPO_MODEL, OFF, curves=False)
        return
    # torch and MLflow: imported only when the stage is on (an off stage takes no time)
    import numpy as np

    from bardlet import tracking
    from bardlet.data.loaders import PackedConversations
    from bardlet.evaluation import measure
    from bardlet.training import checkpoint
    from bardlet.training.dpo import encode_pair, preference_metrics, train_dpo
    from stages.outputs import training_device

    device = training_device(params)
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    model, info = checkpoint.load(CHAT_MODEL, device)
    reference, _ = checkpoint.load(CHAT_MODEL, device)
    block = model.config.block_size
    pairs, dropped = {}, 0
    for split in ("train", "val"):
        lines = (PREFS / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        encoded = [encode_pair(tokenizer, json.loads(line), block) for line in lines]
        pairs[split] = [p for p in encoded if p is not None]
        dropped += len(encoded) - len(pairs[split])
    if not pairs["train"] or not pairs["val"]:
        raise UserError(
            f"dpo: {len(pairs['train'])} training and {len(pairs['val'])} held-out preference "
            "pairs fit the context: add pairs (prepare.prefs) or set dpo.enabled: false"
        )
    chats = PackedConversations.from_split(SHARDS / "sft/val", tokenizer, block, 16, 0)
    lengths = np.array(tokenizer.byte_lengths())

    def scores() -> dict[str, float]:
        drift = measure(model, chats.sequential(), lengths, device, max_batches=20)
        ranked = preference_metrics(model, reference, pairs["val"], settings.beta, device)
        return {**ranked, "oasst_bpb": drift["bpb"]}

    before = scores()
    print(f"dpo: {len(pairs['train'])} pairs to train on, {len(pairs['val'])} held out; "
          f"before: {before}")  # fmt: skip
    sft_run = info.get("run_id") or ""
    with tracking.run(
        "dpo", {"dpo": settings.model_dump()}, {"stage": "dpo"}, parent_run_id=sft_run,
        tokenizer_hash=tokenizer.hash,
    ) as run_id:  # fmt: skip
        tracking.log_metrics({f"before/{k}": v for k, v in before.items()})
        train_dpo(model, reference, pairs["train"], settings, report=tracking.log_metrics)
        after = scores()
        tracking.log_metrics({f"after/{k}": v for k, v in after.items()})
        numbers = {"before": before, "after": after, "train_pairs": len(pairs["train"])}
        numbers |= {"val_pairs": len(pairs["val"]), "dropped_too_long": dropped}
        identity = {
            "tokenizer_hash": tokenizer.hash,
            "chat_model": sha256_file(CHAT_MODEL / checkpoint.WEIGHTS),
        }
        checkpoint.save(model, DPO_MODEL, {**identity, "dpo": numbers}, {"run_id": run_id})
    write_json_atomic(REPORTS / "dpo.json", numbers)
    print(f"after: {after}")


if __name__ == "__main__":
    main()
