"""Stage `export`: the chat model as one ONNX graph with a KV cache -> models/onnx/

The folder is self-contained: model.onnx (config, tokenizer hash and special ids inside
as metadata) and the tokenizer files, all that `bardlet chat` or the runtime needs. The
stage fails unless onnxruntime reproduces PyTorch's logits within the tolerance on a
prompt plus `parity_steps` incremental steps.
"""

import shutil

import numpy as np

from bardlet import tracking
from bardlet.config import load_params
from bardlet.data.chat_template import render_prompt
from bardlet.data.shards import write_json_atomic
from bardlet.export import cache_names, check_parity, export_onnx
from bardlet.tokenizer import Tokenizer
from bardlet.training import checkpoint
from stages.paths import CHAT_MODEL, ONNX_DIR, REPORTS, TOKENIZER, TOKENIZER_DIR


def main() -> None:
    params = load_params().export
    tokenizer = Tokenizer.load(TOKENIZER)
    model, info = checkpoint.load(CHAT_MODEL)
    ONNX_DIR.mkdir(parents=True, exist_ok=True)
    metadata = {
        "tokenizer_hash": tokenizer.hash,
        "special_tokens": tokenizer.special_tokens,
        "run_id": info["run_id"],
    }
    onnx_path = ONNX_DIR / "model.onnx"
    export_onnx(model, onnx_path, params.opset, metadata)
    for name in ("bpe.json", "tokenizer.json"):
        shutil.copyfile(TOKENIZER_DIR / name, ONNX_DIR / name)

    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Who are you?"}])
    worst = check_parity(model, onnx_path, prompt, params.parity_steps)
    report = {"parity_max_abs_diff": worst, "onnx_bytes": onnx_path.stat().st_size}
    REPORTS.mkdir(exist_ok=True)
    write_json_atomic(REPORTS / "export.json", report)
    print(f"parity: max |logit difference| = {worst:.2e} over {params.parity_steps} steps")
    if worst > params.parity_tolerance:
        shutil.rmtree(ONNX_DIR)  # never leave a model that disagrees with its source behind
        raise SystemExit(
            f"ONNX parity failed: max |logit difference| {worst:.2e} > "
            f"{params.parity_tolerance:.0e}; the exported graph does not match PyTorch"
        )
    with tracking.run("export", run_id=info["run_id"]):
        tracking.log_metrics({f"export_{k}": v for k, v in report.items()})
        example = {"input_ids": np.array([prompt], dtype=np.int64)}
        example.update(
            {
                name: np.zeros((1, model.config.n_head, 0, model.config.head_dim), np.float32)
                for name in cache_names(model.config.n_layer, "past")
            }
        )
        version, champion = tracking.log_onnx_model(onnx_path, example, info["metrics"]["val_bpb"])
    print(
        f"registered as {tracking.REGISTERED_MODEL} v{version}"
        + (" (champion)" if champion else "")
    )


if __name__ == "__main__":
    main()
