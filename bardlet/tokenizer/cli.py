"""``bardlet tokenizer ...``: train a tokenizer and look at what it does.

bardlet tokenizer train data/input.txt --vocab-size 4096 --out models/tokenizer
echo "Hello there" | bardlet tokenizer encode --tokenizer models/tokenizer
echo "[15496, 612]" | bardlet tokenizer decode --tokenizer models/tokenizer
bardlet tokenizer show --tokenizer models/tokenizer "Hello there"
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from bardlet.tokenizer.bpe import DEFAULT_SPECIAL_TOKENS, GPT4_PATTERN, Tokenizer
from bardlet.tokenizer.hf import export_hf

app = typer.Typer(help="Train, inspect and use the byte-level BPE tokenizer.", no_args_is_help=True)

TokenizerOption = Annotated[
    Path,
    typer.Option(
        "--tokenizer", "-t", help="Tokenizer directory (holding bpe.json) or a bpe.json file."
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _load(path: Path) -> Tokenizer:
    try:
        return Tokenizer.load(path)
    except ValueError as err:
        raise _fail(str(err)) from None


def _encode(tok: Tokenizer, text: str) -> list[int]:
    try:
        return tok.encode(text)
    except ValueError as err:
        raise _fail(str(err)) from None


def _read_stdin() -> str:
    data = typer.get_binary_stream("stdin").read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _fail(f"stdin is not valid UTF-8 ({err})") from None


def _read_texts(path: Path) -> list[str]:
    """A .jsonl file gives the "text" field of each line; any other file is one UTF-8 text."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(f"cannot read {path} as UTF-8 text: {err}") from None
    if path.suffix != ".jsonl":
        return [raw]
    texts = []
    for line_no, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            texts.append(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise _fail(f'{path}:{line_no}: expected a JSON object with a "text" field') from None
    return texts


@app.command()
def train(
    files: Annotated[list[Path], typer.Argument(help="UTF-8 text files (.jsonl: the text field).")],
    vocab_size: Annotated[int, typer.Option(help="Bytes + merges + special tokens.")] = 4096,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("models/tokenizer"),
) -> None:
    """Train on FILES; write OUT/bpe.json and the Hugging Face OUT/tokenizer.json."""
    texts = [text for path in files for text in _read_texts(path)]
    start = time.perf_counter()
    try:
        tok = Tokenizer.train(texts, vocab_size, GPT4_PATTERN, DEFAULT_SPECIAL_TOKENS)
    except ValueError as err:
        raise _fail(str(err)) from None
    seconds = time.perf_counter() - start
    tok.save(out / "bpe.json")
    export_hf(tok, out / "tokenizer.json")
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    typer.echo(
        f"trained vocab {tok.vocab_size} on {n_bytes:,} bytes in {seconds:.2f} s; "
        f"wrote {out / 'bpe.json'} and {out / 'tokenizer.json'} (hash {tok.hash[:12]})"
    )


@app.command()
def encode(tokenizer: TokenizerOption) -> None:
    """Read UTF-8 text on stdin; print its token ids as one JSON list."""
    tok = _load(tokenizer)
    typer.echo(json.dumps(_encode(tok, _read_stdin())))


@app.command()
def decode(tokenizer: TokenizerOption) -> None:
    """Read a JSON list of token ids on stdin; print the text."""
    tok = _load(tokenizer)
    try:
        ids = json.loads(_read_stdin())
    except json.JSONDecodeError as err:
        raise _fail(f"stdin is not a JSON list of ids: {err}") from None
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise _fail("stdin must be a JSON list of integer ids, like [15, 2047, 11]")
    try:
        text = tok.decode(ids)
    except ValueError as err:
        raise _fail(str(err)) from None
    typer.echo(text, nl=False)


@app.command()
def show(
    tokenizer: TokenizerOption,
    text: Annotated[str, typer.Argument(help="Text to split into tokens.")],
) -> None:
    """Show how TEXT is cut into tokens, one token per line."""
    tok = _load(tokenizer)
    ids = _encode(tok, text)
    for token_id in ids:
        piece = tok.token_bytes(token_id)
        # repr() makes spaces, newlines and partial UTF-8 characters visible.
        shown = piece.decode("utf-8", errors="backslashreplace")
        typer.echo(f"{token_id:>6}  {shown!r}")
    n_bytes = len(text.encode("utf-8"))
    ratio = n_bytes / len(ids) if ids else 0.0
    typer.echo(f"{len(ids)} tokens for {n_bytes} bytes ({ratio:.2f} bytes/token)")
