"""The `bardlet` command: talk to the model the pipeline exported, inspect the tokenizer."""

from __future__ import annotations

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
        help="The exported model.onnx (bpe.json must sit beside it), or its folder.",
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
    model: ModelOption = DEFAULT_MODEL,
) -> None:
    """Continue PROMPT and print only the generated text."""
    from bardlet.runtime import Sampling

    lm = _load(model)
    settings = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    sys.stdout.write(lm.generate_text(prompt, max_new_tokens, settings) + "\n")


@app.command()
def chat(
    model: ModelOption = DEFAULT_MODEL,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0)] = 0.7,
    top_k: Annotated[int, typer.Option("--top-k", min=0)] = 40,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 0.95,
    seed: Annotated[int | None, typer.Option("--seed", "-s")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1)] = 128,
) -> None:
    """Chat with the model in the terminal (multi-turn; /help for commands)."""
    from bardlet.chat import Chat, repl
    from bardlet.runtime import Sampling

    lm = _load(model)
    settings = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    repl(Chat(lm, settings, system=system, max_new_tokens=max_new_tokens))


def _load(model: Path) -> OnnxLM:
    # Imported here so that `bardlet --help` and the tokenizer commands start fast.
    from bardlet.runtime import OnnxLM

    try:
        return OnnxLM(model)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None


if __name__ == "__main__":
    app()
