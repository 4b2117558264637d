"""Stage `export`: the chat model as one ONNX graph with a KV cache -> models/onnx/

The folder is self-contained: model.onnx (config, tokenizer hash and special ids inside
as metadata), the tokenizer files, the chat style presets (styles.json, from params.yaml
`chat.styles`), all that `bardlet chat` or the runtime needs, and a model card (README.md,
with the numbers of reports/metrics.json when the evaluate stage has written it). The
stage fails unless onnxruntime reproduces PyTorch's logits within the tolerance on a
prompt plus `parity_steps` incremental steps.
"""

import shutil

import numpy as np

from bardlet import tracking
from bardlet.chat import STYLES_FILE
from bardlet.config import load_params
from bardlet.data.chat_template import render_prompt
from bardlet.data.loaders import TokenWindows
from bardlet.data.shards import concat_tokens, read_split
from bardlet.evaluation import token_byte_lengths
from bardlet.export import cache_names, check_parity, export_onnx, quantize_int8
from bardlet.files import write_json_atomic
from bardlet.model_card import read_report, render_model_card, write_text_atomic
from bardlet.runtime import OnnxLM, measure_onnx_bpb
from bardlet.tokenizer import Tokenizer
from bardlet.training import checkpoint
from stages.paths import CHAT_MODEL, ONNX_DIR, REPORTS, SHARDS, TOKENIZER, TOKENIZER_DIR


def main() -> None:
    all_params = load_params()
    params = all_params.export
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
    styles = {name: style.model_dump() for name, style in all_params.chat.styles.items()}
    write_json_atomic(ONNX_DIR / STYLES_FILE, styles)

    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Who are you?"}])
    worst = check_parity(model, onnx_path, prompt, params.parity_steps)
    report = {"parity_max_abs_diff": worst, "onnx_bytes": onnx_path.stat().st_size}
    if params.int8:
        # Smaller and faster; measured against fp32 on the same Shakespeare validation tokens.
        int8_path = ONNX_DIR / "model.int8.onnx"
        quantize_int8(onnx_path, int8_path)
        val = concat_tokens(read_split(SHARDS / "pretrain/val", tokenizer.hash))
        lengths = token_byte_lengths(tokenizer)
        fp32, int8 = (
            measure_onnx_bpb(
                path,
                TokenWindows(val, model.config.block_size, 16, 0).sequential(),
                lengths,
                max_batches=params.bpb_batches,
            )
            for path in (onnx_path, int8_path)
        )
        report.update(
            {
                "fp32_bpb": fp32["bpb"],
                "int8_bpb": int8["bpb"],
                "int8_bpb_delta_percent": 100 * (int8["bpb"] / fp32["bpb"] - 1),
                "int8_bytes": int8_path.stat().st_size,
            }
        )
    REPORTS.mkdir(exist_ok=True)
    write_json_atomic(REPORTS / "export.json", report)
    print(f"parity: max |logit difference| = {worst:.2e} over {params.parity_steps} steps")
    if worst > params.parity_tolerance:
        shutil.rmtree(ONNX_DIR)  # never leave a model that disagrees with its source behind
        raise SystemExit(
            f"ONNX parity failed: max |logit difference| {worst:.2e} > "
            f"{params.parity_tolerance:.0e}; the exported graph does not match PyTorch"
        )
    if params.int8 and report["int8_bpb_delta_percent"] > params.int8_max_bpb_delta_percent:
        (ONNX_DIR / "model.int8.onnx").unlink()
        raise SystemExit(
            f"int8 bits per byte are {report['int8_bpb_delta_percent']:+.2f}% off fp32 "
            f"(allowed {params.int8_max_bpb_delta_percent}%): set export.int8: false"
        )
    metrics = read_report(REPORTS / "metrics.json")  # None (card says "not measured") if missing
    card = render_model_card(
        model.config.to_dict(), model.num_params(), metrics, report, library_name="onnx"
    )
    write_text_atomic(ONNX_DIR / "README.md", card)
    with tracking.run("export", run_id=info["run_id"]):
        tracking.log_metrics({f"export/{k}": v for k, v in report.items()})
        # A real decoding step as MLflow's input example: the prompt's last token, with the
        # cache the graph made for the tokens before it.
        lm = OnnxLM(onnx_path)
        _, past = lm.forward(np.array([prompt[:-1]]), lm.empty_cache())
        example = {"input_ids": np.array([prompt[-1:]], dtype=np.int64)}
        example.update(zip(cache_names(model.config.n_layer, "past"), past, strict=True))
        score = metrics["oasst"]["bpb"] if metrics else info["metrics"]["val_bpb"]
        description = (
            f"{model.num_params():,} parameters, {model.config.n_layer} layers x "
            f"{model.config.n_embd} wide, context {model.config.block_size}; "
            f"{tracking.CHAMPION_METRIC} = {score:.4f}; MLflow run {info['run_id']}."
        )
        version, champion = tracking.log_onnx_model(onnx_path, example, score, description)
    print(
        f"registered as {tracking.REGISTERED_MODEL} v{version}"
        + (" (champion)" if champion else "")
    )
    experiment_id = tracking.get_run(info["run_id"]).info.experiment_id
    print(f"MLflow: `mlflow ui`, then {tracking.ui_url(experiment_id)}")


if __name__ == "__main__":
    main()
