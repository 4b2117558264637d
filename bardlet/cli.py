"""The `bardlet` command: talk to the model the pipeline exported, inspect the tokenizer."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bardlet.tokenizer.cli import app as tokenizer_app

if TYPE_CHECKING:
    from bardlet.runtime import OnnxLM

app = typer.Typer(
    help="bardlet: train your own small GPT chatbot from scratch (see README.md).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(tokenizer_app, name="tokenizer")

ModelOption = Annotated[
    Path,
    typer.Option(
        "--model",
        "-m",
        help="The exported model.onnx (bpe.json must sit beside it) or its folder; or a "
        "training checkpoint folder such as models/chat (exported on the fly; needs PyTorch).",
    ),
]
DEFAULT_MODEL = Path("models/onnx/model.onnx")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text for the model to continue.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1)] = 100,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Same seed, same text.")] = 0,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0)] = 0.8,
    top_k: Annotated[int, typer.Option("--top-k", min=0)] = 50,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    ignore_end: Annotated[
        bool,
        typer.Option(
            "--ignore-end",
            help="Keep going past <|end|> (where a chat model ends its turn) up to "
            "--max-new-tokens; special tokens are never printed either way.",
        ),
    ] = False,
    model: ModelOption = DEFAULT_MODEL,
) -> None:
    """Continue PROMPT and print only the generated text (it ends at <|end|>)."""
    from bardlet.runtime import Sampling

    lm = _load(model)
    settings = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    text = lm.generate_text(prompt, max_new_tokens, settings, stop_at_end=not ignore_end)
    sys.stdout.write(text + "\n")


@app.command()
def chat(
    model: ModelOption = DEFAULT_MODEL,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt.")] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", "-t", min=0.0, show_default="from --style")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", min=0, show_default="from --style")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option("--top-p", min=0.0, max=1.0, show_default="from --style")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", "-s")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1)] = 128,
    style: Annotated[
        str,
        typer.Option(
            "--style",
            help="A preset of system prompt + sampling (params.yaml `chat.styles`, saved "
            "beside the model: shakespeare, helpful, terse, ...); options given explicitly win.",
        ),
    ] = "default",
) -> None:
    """Chat with the model in the terminal (multi-turn; /help for commands)."""
    from bardlet.chat import STYLES_FILE, Chat, repl
    from bardlet.runtime import Sampling

    lm = _load(model)
    try:
        session = Chat(lm, Sampling(seed=seed), max_new_tokens=max_new_tokens)
    except ValueError as error:  # a broken styles.json
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    if style not in session.styles:
        choices = ", ".join(session.styles)
        if not (lm.path.parent / STYLES_FILE).exists():
            choices += f" (no {STYLES_FILE} beside the model: `dvc repro export` writes it)"
        typer.echo(f"error: unknown style {style!r}; choose one of {choices}", err=True)
        raise typer.Exit(code=2)
    session.apply_style(style)
    explicit = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    for name, value in explicit.items():
        if value is not None:
            setattr(session.settings, name, value)
    if system is not None:
        session.system = system
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    repl(session)


@app.command()
def serve(
    model: ModelOption = Path("models/onnx/model.onnx"),
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="BARDLET_API_KEY",
            help="Require `Authorization: Bearer KEY` on /v1 (env BARDLET_API_KEY).",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[
        int, typer.Option("--threads", min=0, help="ONNX Runtime threads (0 = all cores).")
    ] = 0,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Serve the model: OpenAI-compatible HTTP API under /v1 and a chat page at /."""
    import uvicorn

    from bardlet.server import create_app

    lm = _load(model, threads=threads)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        typer.echo(
            f"warning: serving on {host} without an API key: anyone who can reach it can use it",
            err=True,
        )
    try:
        app_ = create_app(lm, api_key=api_key or None)
    except ValueError as error:  # a broken styles.json
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"bardlet: http://{host}:{port}/  (API at /v1, schema at /openapi.json)", err=True)
    uvicorn.run(app_, host=host, port=port, log_level=log_level.lower())


@app.command("export-hf")
def export_hf(
    model: Annotated[Path, typer.Option("--model", help="A training checkpoint.")] = Path(
        "models/chat"
    ),
    tokenizer: Annotated[Path, typer.Option("--tokenizer")] = Path("models/tokenizer"),
    out: Annotated[Path, typer.Option("--out")] = Path("models/hf"),
    reports: Annotated[
        Path, typer.Option("--reports", help="metrics.json, export.json for the model card.")
    ] = Path("reports"),
) -> None:
    """Write a Hugging Face folder (Llama config, safetensors, tokenizer, model card)."""
    from bardlet import hf_export, model_card  # imports torch: only for this command

    try:
        hf_export.export_hf(
            model,
            tokenizer,
            out,
            metrics=model_card.read_report(reports / "metrics.json"),
            export_report=model_card.read_report(reports / "export.json"),
        )
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"wrote {out}/ (load it with transformers' AutoModelForCausalLM)")


@app.command()
def push(
    repo_id: Annotated[str, typer.Option("--repo-id", help="USER/NAME on the Hub.")],
    folder: Annotated[Path, typer.Option("--folder")] = Path("models/hf"),
    private: Annotated[bool, typer.Option("--private", help="Create a private repo.")] = False,
) -> None:
    """Upload the `export-hf` folder to the Hugging Face Hub (token: HF_TOKEN or hf auth login)."""
    from bardlet.hf_export import PushError, push_to_hub

    try:
        url = push_to_hub(folder, repo_id, private=private)
    except PushError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"pushed {folder}/ to {url}")


@app.command()
def report(
    root: Annotated[
        Path, typer.Option("--root", help="Project folder: its reports/, models/, params.yaml.")
    ] = Path("."),
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write (figures/ and local/ beside it).", show_default=False
        ),
    ] = None,
    speed: Annotated[
        bool, typer.Option("--speed/--no-speed", help="Time 64 greedy ONNX tokens.")
    ] = True,
    peak_flops: Annotated[
        float | None, typer.Option("--peak-flops", help="Hardware peak FLOP/s, for MFU.")
    ] = None,
    mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Log to the chat model's MLflow run.")
    ] = False,
) -> None:
    """Write the report card (default reports/report.md + figures/, the same on every machine)
    and this machine's page: speed and environment (reports/local/report.md)."""
    from bardlet.report import ReportPaths, make_report

    for path in make_report(ReportPaths.under(root, out), speed, peak_flops, mlflow):
        typer.echo(f"wrote {path}")


def _load(model: Path, threads: int = 0) -> OnnxLM:
    # Imported here so that `bardlet --help` and the tokenizer commands start fast.
    from bardlet.runtime import OnnxLM

    try:
        if (model / "model.safetensors").exists():  # a training checkpoint, not an export
            model = _export_checkpoint(model)
        return OnnxLM(model, threads=threads)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None


def _export_checkpoint(folder: Path, tokenizer_dir: Path = Path("models/tokenizer")) -> Path:
    """Export a training checkpoint (models/base, models/chat, ...) to a temporary ONNX folder,
    so chat and serve can try any checkpoint without the export stage. This path needs
    PyTorch; the exported model in models/onnx does not."""
    import atexit
    import shutil
    import tempfile

    from bardlet.config import load_params
    from bardlet.export import export_onnx
    from bardlet.tokenizer import Tokenizer
    from bardlet.training import checkpoint

    network, info = checkpoint.load(folder)
    tokenizer = Tokenizer.load(tokenizer_dir / "bpe.json")
    if tokenizer.hash != info.get("tokenizer_hash"):
        raise ValueError(
            f"{tokenizer_dir} is not the tokenizer {folder} was trained with: "
            "run from the project that trained it (`dvc repro tokenizer` restores it)"
        )
    out = Path(tempfile.mkdtemp(prefix="bardlet-onnx-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    typer.echo(f"(exporting {folder} to ONNX for this session)", err=True)
    metadata = {"tokenizer_hash": tokenizer.hash, "special_tokens": tokenizer.special_tokens}
    export_onnx(network, out / "model.onnx", 17, metadata)
    tokenizer.save(out / "bpe.json")
    with contextlib.suppress(ValueError):  # the style presets, if a valid params.yaml is here
        styles = load_params().chat.styles
        (out / "styles.json").write_text(json.dumps({k: v.model_dump() for k, v in styles.items()}))
    return out


if __name__ == "__main__":
    app()
