"""The `bardlet` command: talk to the model the pipeline exported."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from bardlet.runtime import OnnxLM

app = typer.Typer(
    help="bardlet: train your own small GPT chatbot from scratch (see README.md).",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_MODEL = Path("models/onnx/model.onnx")
MODEL_HELP = "The exported model.onnx (bpe.json must sit beside it), or its folder."


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="Text for the model to continue."),
    max_new_tokens: int = typer.Option(100, "--max-new-tokens", "-n", min=1),
    seed: int = typer.Option(0, "--seed", "-s", help="Sampling seed: same seed, same text."),
    temperature: float = typer.Option(0.8, "--temperature", "-t", min=0.0),
    top_k: int = typer.Option(50, "--top-k", min=0),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    model: Path = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Continue PROMPT and print only the generated text."""
    from bardlet.runtime import Sampling

    lm = _load(model)
    settings = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    sys.stdout.write(lm.generate_text(prompt, max_new_tokens, settings) + "\n")


@app.command()
def chat(
    model: Path = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    system: str | None = typer.Option(None, "--system", help="A system prompt."),
    temperature: float = typer.Option(0.7, "--temperature", "-t", min=0.0),
    top_k: int = typer.Option(40, "--top-k", min=0),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0),
    seed: int | None = typer.Option(None, "--seed", "-s"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", min=1),
) -> None:
    """Chat with the model in the terminal (multi-turn; /help for commands)."""
    from bardlet.chat import Chat, repl
    from bardlet.runtime import Sampling

    lm = _load(model)
    settings = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    repl(Chat(lm, settings, system=system, max_new_tokens=max_new_tokens))


def _load(model: Path) -> OnnxLM:
    # Imported here so `bardlet --help` stays fast.
    from bardlet.runtime import OnnxLM

    try:
        return OnnxLM(model)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None


if __name__ == "__main__":
    app()
