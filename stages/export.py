"""Stage `export`: the chat model as one ONNX graph with a KV cache -> models/onnx/

The folder is self-contained: model.onnx (config, tokenizer hash and special ids inside
as metadata), the tokenizer files, the chat style presets (styles.json, from params.yaml
`chat.styles`), all that `bardlet chat` or the runtime needs, and a model card (README.md,
with the numbers of reports/metrics.json).

The whole folder is built beside models/onnx and swapped in only when every check passed:
onnxruntime reproduces PyTorch's logits within the tolerance on a prompt plus
`parity_steps` incremental steps, and the int8 variant costs at most the allowed bits per
byte. A failed check (NaN counts as failed) leaves the previous models/onnx untouched.
"""

import math
from pathlib import Path
from typing import Any

import numpy as np

from bardlet import tracking
from bardlet.config import ExportParams, load_params
from bardlet.data.chat_template import render_prompt
from bardlet.data.loaders import TokenWindows
from bardlet.data.shards import read_tokens
from bardlet.export import cache_names, check_parity, quantize_int8, write_model_folder
from bardlet.files import new_folder, write_json_atomic, write_text_atomic
from bardlet.model import GPT
from bardlet.model_card import read_report, render_model_card
from bardlet.runtime.evaluate import measure_onnx_bpb
from bardlet.runtime.sampling import Style
from bardlet.runtime.session import OnnxLM
from bardlet.tokenizer import AnyTokenizer, load_tokenizer
from bardlet.training import checkpoint
from stages.paths import (
    CHAT_MODEL,
    DPO_MODEL,
    LOCAL_REPORTS,
    ONNX_DIR,
    REPORTS,
    SHARDS,
    TOKENIZER_DIR,
)

ONNXRUNTIME_MEASURED = ("parity_max_abs_diff", "fp32_bpb", "int8_bpb", "int8_bpb_delta_percent")


def build(
    staging_dir: Path,
    params: ExportParams,
    styles: dict[str, Style],
    tokenizer: AnyTokenizer,
    model: GPT,
    info: dict[str, Any],
) -> dict[str, float]:
    """Export into `staging_dir` and check it; returns the export report, or raises
    SystemExit naming the check that failed."""
    onnx_path = write_model_folder(model, tokenizer, staging_dir, params.opset, styles)
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Who are you?"}])
    worst = check_parity(model, onnx_path, prompt, params.parity_steps)
    print(f"parity: max |logit difference| = {worst:.2e} over {params.parity_steps} steps")
    if not worst <= params.parity_tolerance:  # NaN fails too
        raise SystemExit(
            f"ONNX parity failed: max |logit difference| {worst:.2e} > "
            f"{params.parity_tolerance:.0e}; the exported graph does not match PyTorch"
            + (" (its logits are not finite numbers: did training diverge?)" * math.isnan(worst))
        )
    report: dict[str, float] = {
        "parity_max_abs_diff": worst,
        "parity_tolerance": params.parity_tolerance,
        "onnx_bytes": onnx_path.stat().st_size,
    }
    if params.int8:
        # Smaller and faster; measured against fp32 on the same Shakespeare validation tokens.
        int8_path = staging_dir / "model.int8.onnx"
        quantize_int8(onnx_path, int8_path)
        val = read_tokens(SHARDS / "pretrain/val", tokenizer.hash)[0]
        lengths = np.array(tokenizer.byte_lengths())
        fp32, int8 = (
            measure_onnx_bpb(
                path,
                TokenWindows(val, model.config.block_size, 16, 0).sequential(),
                lengths,
                max_batches=params.bpb_batches,
            )
            for path in (onnx_path, int8_path)
        )
        delta = 100 * (int8["bpb"] / fp32["bpb"] - 1)
        report.update(
            fp32_bpb=fp32["bpb"],
            int8_bpb=int8["bpb"],
            int8_bpb_delta_percent=delta,
            int8_max_bpb_delta_percent=params.int8_max_bpb_delta_percent,
            int8_bytes=int8_path.stat().st_size,
        )
        if not delta <= params.int8_max_bpb_delta_percent:
            raise SystemExit(
                f"int8 bits per byte are {delta:+.2f}% off fp32 "
                f"(allowed {params.int8_max_bpb_delta_percent}%): set export.int8: false"
            )
    return report


def main() -> None:
    all_params = load_params()
    params = all_params.export
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    # The chat model, or with dpo.enabled the one tuned on preferences.
    model, info = checkpoint.load(DPO_MODEL if all_params.dpo.enabled else CHAT_MODEL)
    # Built beside models/onnx, swapped in when complete: a failure leaves the old one.
    with new_folder(ONNX_DIR) as folder:
        report = build(folder, params, all_params.chat.styles, tokenizer, model, info)
        metrics = read_report(REPORTS / "metrics.json")  # None: the card says "not measured"
        unmeasured = {k: v for k, v in report.items() if k not in ONNXRUNTIME_MEASURED}
        card = render_model_card(
            model.config.to_dict(), model.num_params(), metrics, unmeasured, library_name="onnx"
        )
        write_text_atomic(folder / "README.md", card)
    # onnxruntime picks its kernels by the processor (AVX2, AVX-512 VNNI, ...) and nothing pins
    # them, so what it computed (parity, bits per byte) differs per machine: reports/local/.
    measured = {k: v for k, v in report.items() if k in ONNXRUNTIME_MEASURED}
    write_json_atomic(LOCAL_REPORTS / "export.json", measured)
    write_json_atomic(
        REPORTS / "export.json", {k: v for k, v in report.items() if k not in measured}
    )

    onnx_path = ONNX_DIR / "model.onnx"
    with tracking.run("export", run_id=info.get("run_id")) as run_id:
        tracking.log_metrics({f"export/{k}": v for k, v in report.items()})
        # A real decoding step as MLflow's input example: the prompt's last token, with the
        # cache the graph made for the tokens before it.
        prompt = render_prompt(tokenizer, [{"role": "user", "content": "Who are you?"}])
        lm = OnnxLM(onnx_path)
        _, past = lm.forward(np.array([prompt[:-1]]), lm.empty_cache())
        example = {
            "input_ids": np.array([prompt[-1:]], dtype=np.int64),
            "attention_mask": np.ones((1, len(prompt)), dtype=np.int64),
        }
        example.update(zip(cache_names(model.config.n_layer, "past"), past, strict=True))
        score = metrics["oasst"]["bpb"] if metrics else info["metrics"]["val_bpb"]
        description = (
            f"{model.num_params():,} parameters, {model.config.n_layer} layers x "
            f"{model.config.n_embd} wide, context {model.config.block_size}; "
            f"{tracking.CHAMPION_METRIC} = {score:.4f}; MLflow run {run_id}."
        )
        version, champion = tracking.log_onnx_model(onnx_path, example, score, description)
    print(
        f"registered as {tracking.REGISTERED_MODEL} v{version}"
        + (" (champion)" if champion else "")
    )
    experiment_id = tracking.get_run(run_id).info.experiment_id
    print(f"MLflow: `mlflow ui`, then {tracking.ui_url(experiment_id)}")


if __name__ == "__main__":
    main()
