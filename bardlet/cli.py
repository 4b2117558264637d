"""The `bardlet` command: talk to the model the pipeline exported, inspect the tokenizer."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer

from bardlet.defaults import (
    BASE_MODEL,
    CHAT_MODEL,
    DOCS_INDEX,
    HF_DIR,
    ONNX_MODEL,
    READ_TIMEOUT,
    REPORTS,
    TOKENIZER_DIR,
)
from bardlet.tokenizer.cli import app as tokenizer_app

if TYPE_CHECKING:
    from bardlet.retrieval.index import Index
    from bardlet.retrieval.memory import Memory
    from bardlet.runtime.sampling import Style
    from bardlet.runtime.session import OnnxLM

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
StyleOption = Annotated[
    str,
    typer.Option(
        "--style",
        help="A preset of system prompt + sampling (params.yaml `chat.styles`, saved beside "
        "the model: default, shakespeare, helpful, terse, ...); options given explicitly win.",
    ),
]
FromStyle = "from --style"
Temperature = Annotated[float | None, typer.Option("--temperature", "-t", show_default=FromStyle)]
TopK = Annotated[int | None, typer.Option("--top-k", show_default=FromStyle)]
TopP = Annotated[float | None, typer.Option("--top-p", show_default=FromStyle)]
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", "-n", min=1)]
DocsOption = Annotated[
    Path | None,
    typer.Option(
        "--docs",
        help=f"A document index (`bardlet index`; the pipeline builds {DOCS_INDEX}): the "
        "passages that best match each message go into the prompt, cited under the reply.",
        show_default=False,
    ),
]


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text for the model to continue.")],
    max_new_tokens: MaxNewTokens = 100,
    seed: Annotated[int, typer.Option("--seed", "-s", min=0, help="Same seed, same text.")] = 0,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    style: StyleOption = "default",
    as_chat: Annotated[
        bool,
        typer.Option(
            "--chat",
            help="Answer PROMPT as a user message (the chat template, the style's "
            "system prompt) instead of continuing it as plain text.",
        ),
    ] = False,
    ignore_end: Annotated[
        bool,
        typer.Option(
            "--ignore-end",
            help="Plain text: keep going past <|end|> (where a chat model ends its turn) up "
            "to --max-new-tokens; special tokens are never printed either way.",
        ),
    ] = False,
    num_beams: Annotated[
        int,
        typer.Option(
            "--beams",
            min=1,
            max=16,
            help="Beam search with this many beams (deterministic: the sampling options do "
            "not apply); 1 = sample as the style says.",
        ),
    ] = 1,
    length_penalty: Annotated[
        float,
        typer.Option(
            "--length-penalty",
            help="With --beams: score = log-prob / length ** this (0 favours short text, "
            "above 1 longer).",
        ),
    ] = 1.0,
    model: ModelOption = ONNX_MODEL,
) -> None:
    """Continue PROMPT (or, with --chat, answer it) and print only the generated text."""
    from bardlet.data.chat_template import render_prompt
    from bardlet.runtime.beams import beams
    from bardlet.runtime.conversation import reply
    from bardlet.runtime.generation import continue_text

    if not math.isfinite(length_penalty):
        _fail(f"--length-penalty must be a number, not {length_penalty}")
    lm = _load(model)
    chosen = _style(lm, style, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    source = beams(lm, num_beams, length_penalty) if num_beams > 1 else None
    try:
        if as_chat:
            messages = [{"role": "user", "content": prompt}]
            ids = render_prompt(lm.tokenizer, messages, chosen.system)
            generation = reply(lm, ids, max_new_tokens, chosen.sampling(), stream=source)
        else:
            settings = chosen.sampling()
            generation = continue_text(lm, prompt, max_new_tokens, settings, not ignore_end, source)
    except ValueError as error:  # a prompt longer than the context
        _fail(error)
    sys.stdout.write(generation.text() + "\n")


@app.command()
def chat(
    model: ModelOption = ONNX_MODEL,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt.")] = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    seed: Annotated[int | None, typer.Option("--seed", "-s", min=0)] = None,
    max_new_tokens: MaxNewTokens = 128,
    style: StyleOption = "default",
    docs: DocsOption = None,
    memory: Annotated[
        Path | None,
        typer.Option(
            "--memory",
            help="A SQLite file (created if missing) that keeps every turn of every chat; "
            "turns that match a new message come back into the prompt. /memory, /forget.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Chat with the model in the terminal (multi-turn; /help for commands)."""
    from bardlet.chat import Chat, repl

    lm = _load(model)
    chosen = _style(
        lm, style, system=system, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    session = Chat(
        lm, chosen.sampling(), chosen.system, max_new_tokens, _docs(docs), _memory(memory)
    )
    session.style = style
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    repl(session)


@app.command()
def serve(
    model: ModelOption = ONNX_MODEL,
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
    read_timeout: Annotated[
        float,
        typer.Option(
            "--read-timeout",
            min=0.1,
            help="Seconds a client may take to send a request's head, and then its body; "
            "slower connections are closed (a slow client cannot hold a socket forever).",
        ),
    ] = READ_TIMEOUT,
    log_level: Annotated[
        Literal["critical", "error", "warning", "info", "debug", "trace"],
        typer.Option("--log-level", case_sensitive=False),
    ] = "info",
    batch: Annotated[
        int,
        typer.Option("--batch", min=1, help="Replies decoded together (continuous batching)."),
    ] = 32,
    queue: Annotated[
        int,
        typer.Option(
            "--queue", min=0, help="Requests that may wait for a batch slot; past that, 429."
        ),
    ] = 64,
    docs: DocsOption = None,
    memory: Annotated[
        Path | None,
        typer.Option(
            "--memory",
            help="A SQLite file that keeps the turns of requests sent with a `conversation_id` "
            "(API extension); matching turns of that conversation come back into its prompts.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the model: OpenAI-compatible HTTP API under /v1 and a chat page at /."""
    import uvicorn

    from bardlet.server.app import LOOPBACK_HOSTS, DeadlineH11Protocol, create_app

    lm = _load(model, threads=threads)
    loopback = (f"[{host}]" if ":" in host else host) in LOOPBACK_HOSTS
    if not loopback and not api_key:
        warning = f"serving on {host} without an API key: anyone who can reach it can use it"
        typer.echo(f"warning: {warning}", err=True)
    # On loopback only local names are served: a web page elsewhere cannot reach the API
    # through a DNS name that resolves to 127.0.0.1 (DNS rebinding).
    hosts = LOOPBACK_HOSTS if loopback else ()
    try:
        app_ = create_app(
            lm,
            api_key,
            allowed_hosts=hosts,
            read_timeout=read_timeout,
            docs=_docs(docs),
            memory=_memory(memory),
            max_batch=batch,
            max_waiting=queue,
        )
    except ValueError as error:  # a broken styles.json
        _fail(error)
    protocol = type("Protocol", (DeadlineH11Protocol,), {"read_timeout": read_timeout})
    typer.echo(f"bardlet: http://{host}:{port}/  (API at /v1, schema at /openapi.json)", err=True)
    uvicorn.run(app_, host=host, port=port, log_level=log_level.lower(), http=protocol)


@app.command()
def index(
    paths: Annotated[
        list[Path], typer.Argument(help="Files and folders: .txt .md .csv .pdf .html")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The index file (SQLite).")] = DOCS_INDEX,
    model: Annotated[
        Path, typer.Option("--model", "-m", help="Passages are counted in this model's tokens.")
    ] = ONNX_MODEL.parent,
    passage_tokens: Annotated[int, typer.Option("--passage-tokens", min=8)] = 48,
    overlap: Annotated[int, typer.Option("--overlap", min=0)] = 8,
    max_mb: Annotated[float, typer.Option("--max-mb", min=0.01, help="Skip bigger files.")] = 20,
) -> None:
    """Index documents for `chat --docs` and `serve --docs`: passages in SQLite full-text
    search (BM25). Run it again after editing: only changed files are read again."""
    from bardlet.retrieval.index import build_index
    from bardlet.tokenizer import load_tokenizer

    if not model.exists():
        _fail(f"no model at {model}: give --model the exported model's folder (models/onnx)")
    folder = model if model.is_dir() else model.parent
    try:
        tokenizer = load_tokenizer(folder)
        report = build_index(
            out,
            paths,
            lambda text: len(tokenizer.encode(text)),
            tokenizer.hash,
            passage_tokens,
            overlap,
            int(max_mb * 1e6),
        )
    except (FileNotFoundError, ValueError) as error:
        _fail(error)
    except sqlite3.DatabaseError as error:  # --out is some other file, or a folder
        _fail(f"cannot keep the index in {out} ({error}): give --out a new file or an index")
    typer.echo(f"{out}: {report.summary()}")


@app.command("export-hf")
def export_hf(
    model: Annotated[Path, typer.Option("--model", help="A training checkpoint.")] = CHAT_MODEL,
    tokenizer: Annotated[Path, typer.Option("--tokenizer")] = TOKENIZER_DIR,
    out: Annotated[Path, typer.Option("--out")] = HF_DIR,
    reports: Annotated[
        Path, typer.Option("--reports", help="metrics.json, export.json for the model card.")
    ] = REPORTS,
    base: Annotated[
        Path,
        typer.Option(
            "--base",
            help="The base model a LoRA adapter in --model was trained on; exported as "
            "OUT-base/ beside the adapter as OUT-lora/ (PEFT). Unused without an adapter.",
        ),
    ] = BASE_MODEL,
) -> None:
    """Write a Hugging Face folder (Llama config, safetensors, tokenizer, model card); for a
    LoRA fine-tune also the base model and the adapter as a PEFT folder."""
    from bardlet import hf_export, model_card  # imports torch: only for this command
    from bardlet.training import lora

    try:
        hf_export.export_hf(
            model,
            tokenizer,
            out,
            metrics=model_card.read_report(reports / "metrics.json"),
            export_report=model_card.read_report(reports / "export.json"),
        )
        typer.echo(f"wrote {out}/ (load it with transformers' AutoModelForCausalLM)")
        if lora.has_adapter(model):
            base_out, lora_out = hf_export.export_hf_adapter(model, base, tokenizer, out)
            typer.echo(
                f"wrote {base_out}/ and {lora_out}/ (the base model and the LoRA adapter: "
                f'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_out}"), '
                f'"{lora_out}"))'
            )
    except (FileNotFoundError, ValueError) as error:
        _fail(error)


@app.command()
def push(
    repo_id: Annotated[str, typer.Option("--repo-id", help="USER/NAME on the Hub.")],
    folder: Annotated[Path, typer.Option("--folder")] = HF_DIR,
    private: Annotated[bool, typer.Option("--private", help="Create a private repo.")] = False,
) -> None:
    """Upload the `export-hf` folder to the Hugging Face Hub (token: HF_TOKEN or hf auth login)."""
    from bardlet.hf_export import PushError, push_to_hub

    try:
        url = push_to_hub(folder, repo_id, private=private)
    except PushError as error:
        _fail(error)
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


def _fail(message: object) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2) from None


def _load(model: Path, threads: int = 0) -> OnnxLM:
    # Imported here so that `bardlet --help` and the tokenizer commands start fast.
    from bardlet.runtime.session import OnnxLM

    try:
        if (model / "model.safetensors").exists():  # a training checkpoint, not an export
            model = _export_checkpoint(model)
        return OnnxLM(model, threads=threads)
    except (FileNotFoundError, ValueError) as error:
        _fail(error)


def _docs(path: Path | None) -> Index | None:
    from bardlet.retrieval.index import Index

    try:
        return Index(path) if path else None
    except (FileNotFoundError, ValueError) as error:
        _fail(error)


def _memory(path: Path | None) -> Memory | None:
    from bardlet.retrieval.memory import Memory

    try:
        return Memory(path) if path else None
    except ValueError as error:
        _fail(error)


def _style(lm: OnnxLM, name: str, **explicit: Any) -> Style:
    """The preset `name` beside the model, with the options given explicitly (None = the
    preset's value), checked by type and range."""
    from pydantic import ValidationError

    from bardlet.runtime.conversation import STYLES_FILE, load_styles, with_settings

    try:
        styles = load_styles(lm.path)
    except ValueError as error:  # a broken styles.json
        _fail(error)
    if name not in styles:
        choices = ", ".join(styles)
        if not (lm.path.parent / STYLES_FILE).exists():
            choices += f" (no {STYLES_FILE} beside the model: `dvc repro export` writes it)"
        _fail(f"unknown style {name!r}; choose one of {choices}")
    try:
        return with_settings(styles[name], **explicit)
    except ValidationError as error:
        first = error.errors()[0]
        _fail(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}")


def _export_checkpoint(folder: Path) -> Path:
    """A training checkpoint (models/base, models/chat, ...) exported to a temporary ONNX folder
    with the project's tokenizer and params.yaml (`export.opset`, `chat.styles`), so chat and
    serve can try any checkpoint without the export stage. Only this path needs PyTorch."""
    import atexit
    import shutil
    import tempfile

    from bardlet.config import load_params
    from bardlet.export import write_model_folder
    from bardlet.tokenizer import load_tokenizer
    from bardlet.training import checkpoint

    params = load_params()
    network, info = checkpoint.load(folder)
    tokenizer = load_tokenizer(TOKENIZER_DIR)  # what `dvc repro tokenizer` writes
    if tokenizer.hash != info.get("tokenizer_hash"):
        raise ValueError(
            f"{TOKENIZER_DIR} is not the tokenizer {folder} was trained with: "
            "run from the project that trained it (`dvc repro tokenizer` restores it)"
        )
    out = Path(tempfile.mkdtemp(prefix="bardlet-onnx-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    typer.echo(f"(exporting {folder} to ONNX for this session)", err=True)
    return write_model_folder(network, tokenizer, out, params.export.opset, params.chat.styles)


if __name__ == "__main__":
    app()
