"""Pretrained shapes on a CPU: what `init:` a GPT-2 small or a SmolLM2-135M costs here.

Random weights at the real shapes (nothing is downloaded): per shape, in a fresh process
each, the ONNX export (time, file size; int8 quantization time and size), the runtime's
greedy decoding speed with the KV cache and the peak memory of a process that runs only
onnxruntime (fp32 and int8), and SFT
milliseconds per optimizer step (AdamW, batch 1, the default context of 256 tokens).

    python bench/pretrained.py --json bench/results/pretrained.json
"""

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHAPES = {  # the checkpoints' config.json, as GPT.from_pretrained reads them
    "gpt2 (124M)": dict(
        vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, mlp_ratio=4.0,
        dropout=0.0, tie_embeddings=True, norm="layernorm", positions="learned", mlp="gelu",
        bias=True,
    ),
    "SmolLM2-135M": dict(
        vocab_size=49152, block_size=1024, n_layer=30, n_head=9, n_embd=576,
        mlp_ratio=1536 / 576, dropout=0.0, tie_embeddings=True, n_kv_head=3, mlp_width=1536,
        rope_theta=100000.0,
    ),
}  # fmt: skip
CONTEXT = 256  # SFT rows, as model.block_size caps a pretrained context by default
PROMPT = 16


def decode_speed(path: Path, new_tokens: int, threads: int) -> dict[str, float]:
    """Greedy tokens/s after a PROMPT-token prompt, the cache fed back (as the runtime does),
    and this process's peak memory so far."""
    import numpy as np

    from bardlet.runtime.session import cache_shape, open_session

    session, info = open_session(path, threads)
    heads, head_dim = cache_shape(info["model"])
    names = [i.name for i in session.get_inputs() if i.name.startswith("past.")]
    feeds = {name: np.zeros((1, heads, 0, head_dim), np.float32) for name in names}
    feeds["input_ids"] = np.arange(1, PROMPT + 1, dtype=np.int64)[None]
    first = time.perf_counter()
    for step in range(new_tokens + 1):
        if step == 1:
            started = time.perf_counter()  # decoding only, after the prompt
        feeds["attention_mask"] = np.ones((1, PROMPT + step), dtype=np.int64)
        logits, *present = session.run(None, feeds)
        feeds = dict(zip(names, present, strict=True))
        feeds["input_ids"] = logits[:, -1:].argmax(-1).astype(np.int64)
    seconds = time.perf_counter() - started
    return {"prompt_s": started - first, "tokens_per_s": new_tokens / seconds}


def worker(job: dict[str, Any]) -> dict[str, Any]:
    folder = Path(job["folder"])  # "export" writes both files there, for the "run" workers
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    if job["what"] in ("fp32", "int8"):  # a fresh process that loads only onnxruntime
        path = int8 if job["what"] == "int8" else fp32
        return {**decode_speed(path, job["tokens"], job["threads"]), **peak()}
    import torch

    from bardlet.export import export_onnx, quantize_int8
    from bardlet.model import GPT, GPTConfig

    torch.manual_seed(0)
    torch.set_num_threads(job["threads"])
    config = GPTConfig(**SHAPES[job["shape"]])
    if job["what"] == "sft":
        from bardlet.config import load_params
        from bardlet.training.loop import make_optimizer

        config.block_size = CONTEXT
        model = GPT(config).train()
        sft = load_params(common.REPO / "params.yaml").sft
        optimizer = make_optimizer(model, sft, torch.device("cpu"))
        ids = torch.randint(0, config.vocab_size, (1, CONTEXT + 1))
        times = []
        for _ in range(job["steps"] + 1):  # the first step allocates: not counted
            started = time.perf_counter()
            _, loss, _ = model(ids[:, :-1], ids[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - started)
        return {"ms_per_step": 1000 * sorted(times[1:])[len(times[1:]) // 2], **peak()}
    model = GPT(config).eval()
    started = time.perf_counter()
    export_onnx(model, fp32, 23, {})
    result: dict[str, Any] = {"export_s": time.perf_counter() - started}
    del model
    started = time.perf_counter()
    quantize_int8(fp32, int8)
    result |= {"int8_s": time.perf_counter() - started}
    return result | {"onnx_mb": fp32.stat().st_size / 1e6, "int8_mb": int8.stat().st_size / 1e6}


def peak() -> dict[str, float]:
    return {"peak_mb": common.peak_rss_bytes() / 1e6}


def main() -> None:
    args = common.parse(common.parser(__doc__, "fewer tokens and steps (about 3 minutes)"), worker)
    tokens, steps = (16, 2) if args.quick else (64, 5)
    rows = []
    for shape in SHAPES:
        with tempfile.TemporaryDirectory() as folder:
            exported: dict[str, Any] = {}
            for what in ("export", "fp32", "int8", "sft"):
                job = {"shape": shape, "what": what, "threads": 2, "folder": folder}
                print(f"{shape} {what} ...", file=sys.stderr, flush=True)
                result = common.run_worker(__file__, job | {"tokens": tokens, "steps": steps})
                if what == "export":
                    exported = result
                else:
                    rows.append({"shape": shape, "what": what, **exported, **result})
    runtime = [r for r in rows if r["what"] != "sft" and "error" not in r]
    sft = [r for r in rows if r["what"] == "sft" and "error" not in r]
    print(
        common.rows_table(
            runtime,
            [
                ("shape", "{shape}"),
                ("model", "{what}"),
                ("export s", "{export_s:.1f}"),
                ("int8 quantize s", "{int8_s:.1f}"),
                ("file MB", lambda r: f"{r['onnx_mb' if r['what'] == 'fp32' else 'int8_mb']:.0f}"),
                ("prompt s", "{prompt_s:.2f}"),
                ("tokens/s", "{tokens_per_s:.1f}"),
                ("runtime peak MB", "{peak_mb:.0f}"),
            ],
            "llr",
        )
    )
    print()
    columns = [("shape", "{shape}"), ("SFT ms/step", "{ms_per_step:.0f}")]
    print(common.rows_table(sft, [*columns, ("peak MB", "{peak_mb:.0f}")], "lr"))
    for row in rows:
        if "error" in row:
            print(f"- {row['shape']} {row['what']}: {row['error']}")
    settings = {"threads": 2, "new_tokens": tokens, "sft_steps": steps, "context": CONTEXT}
    common.save(args.json, {**common.run_info(), "settings": settings, "rows": rows})


if __name__ == "__main__":
    main()
