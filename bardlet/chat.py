"""Conversation memory and the terminal chat, on top of the ONNX runtime (no torch here)."""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bardlet.data.chat_template import Message, render_prompt
from bardlet.runtime import OnnxLM, Sampling
from bardlet.tokenizer import Tokenizer

# Named presets of a system prompt plus sampling settings: `/style NAME` in the terminal chat,
# `GET /v1/styles` on the server, the style menu of the web page. They are set in params.yaml
# (`chat.styles`); the export stage writes them to styles.json beside the model, so a copied
# model folder keeps them. A model without that file offers only the sampling defaults.
STYLES_FILE = "styles.json"
DEFAULT_STYLE: dict[str, Any] = {"system": None, "temperature": 0.7, "top_k": 40, "top_p": 0.95}


def load_styles(model_path: str | Path) -> dict[str, dict[str, Any]]:
    """The style presets saved beside an exported model, or only `default` without them."""
    path = Path(model_path)
    path = (path if path.is_dir() else path.parent) / STYLES_FILE
    if not path.exists():
        return {"default": dict(DEFAULT_STYLE)}
    try:
        styles = json.loads(path.read_text(encoding="utf-8"))
        for name, preset in styles.items():
            unknown = set(preset) - set(DEFAULT_STYLE)
            if unknown:
                raise ValueError(f"style {name!r} has unknown keys {sorted(unknown)}")
    except (ValueError, AttributeError) as error:
        raise ValueError(
            f"{path} is not a styles file ({error}): re-run `dvc repro export`"
        ) from None
    styles = {"default": {}, **styles}  # `default` is what a chat starts with
    return {name: {**DEFAULT_STYLE, **preset} for name, preset in styles.items()}


TRANSCRIPT_FORMAT = "bardlet-chat"
TRANSCRIPT_VERSION = 1

HELP = """commands:
  /help            this list
  /temp X          sampling temperature (0 = greedy)
  /topk N          keep the N most likely tokens (0 = all)
  /topp P          nucleus sampling: keep tokens up to probability P (1 = all)
  /greedy          always pick the most likely token (same as /temp 0)
  /seed N          fixed random seed (/seed off for a fresh one each reply)
  /system TEXT     set the system prompt (/system alone removes it)
  /style NAME      a preset of system prompt + sampling (/style alone lists them)
  /settings        show the current settings
  /clear           forget the conversation
  /save FILE       write the conversation to a JSON file
  /load FILE       read a conversation saved with /save
  /exit            leave (or Ctrl-D); Ctrl-C stops a reply"""


def special_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """Every special token id: the model emitting one ends a reply."""
    return tuple(sorted(tokenizer.special_tokens.values()))


def decode_pieces(tokenizer: Tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """Text pieces for a stream of token ids, never splitting a UTF-8 character."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in ids:
        piece = decoder.decode(tokenizer.token_bytes(token))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fit_conversation(
    tokenizer: Tokenizer,
    messages: list[Message],
    system: str | None,
    block_size: int,
    reply_room: int,
) -> tuple[list[Message], list[int]]:
    """The newest turns whose prompt leaves `reply_room` tokens of the context for a reply.

    Drops the oldest exchange (user + assistant) until it fits; system messages and the
    newest message always stay. Returns the kept messages and their prompt ids, or raises
    ValueError when the newest message alone cannot fit.
    """
    turns = [i for i, m in enumerate(messages) if m["role"] != "system"]
    start = 0  # how many of the oldest turns are dropped
    while True:
        dropped = set(turns[:start])
        kept = [m for i, m in enumerate(messages) if i not in dropped]
        ids = render_prompt(tokenizer, kept, system)
        if len(ids) + reply_room <= block_size:
            return kept, ids
        if len(turns) - start <= 1:
            raise ValueError(
                f"that message is {len(ids)} tokens with the template; the model's context "
                f"is {block_size} tokens including the reply: please shorten it"
            )
        start += 2 if len(turns) - start > 2 else 1


class Chat:
    """A multi-turn conversation with an exported model.

    The prompt is the whole conversation rendered with the chat template. When it no longer
    fits the model's context next to room for a reply, the oldest turns are dropped (the
    system prompt stays); a single message that cannot fit is refused with a clear error.
    """

    def __init__(
        self,
        lm: OnnxLM,
        settings: Sampling,
        system: str | None = None,
        max_new_tokens: int = 128,
        styles: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.lm = lm
        self.styles = styles if styles is not None else load_styles(lm.path)
        self.settings = settings
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.messages: list[Message] = []
        self.style: str | None = None

    def clear(self) -> None:
        self.messages = []

    def apply_style(self, name: str) -> None:
        """Use one of the style presets: its system prompt and sampling settings."""
        if name not in self.styles:
            raise ValueError(f"unknown style {name!r}; choose one of {', '.join(self.styles)}")
        preset = self.styles[name]
        self.system = preset.get("system")
        self.settings = Sampling(
            temperature=float(preset.get("temperature", self.settings.temperature)),
            top_k=int(preset.get("top_k", self.settings.top_k)),
            top_p=float(preset.get("top_p", self.settings.top_p)),
            seed=self.settings.seed,
        )
        self.style = name

    def _prompt(self) -> list[int]:
        """The prompt ids; drops the oldest exchanges (never the newest message) to fit."""
        reply_room = min(self.max_new_tokens, self.lm.block_size // 4)
        self.messages, ids = fit_conversation(
            self.lm.tokenizer, self.messages, self.system, self.lm.block_size, reply_room
        )
        return ids

    def reply(self, user_text: str) -> Generator[str, None, None]:
        """Stream the assistant's reply as text pieces; it joins the memory when it ends
        (also when it is stopped early: the part shown is what the assistant said)."""
        self.messages.append({"role": "user", "content": user_text})
        try:
            prompt = self._prompt()
        except ValueError:
            self.messages.pop()
            raise
        tokenizer = self.lm.tokenizer
        tokens = self.lm.stream(prompt, self.max_new_tokens, self.settings, special_ids(tokenizer))
        shown: list[str] = []
        try:
            for piece in decode_pieces(tokenizer, tokens):
                shown.append(piece)
                yield piece
        finally:
            self.messages.append({"role": "assistant", "content": "".join(shown)})

    # ------------------------------------------------------------------ transcripts

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TRANSCRIPT_FORMAT,
            "version": TRANSCRIPT_VERSION,
            "style": self.style,
            "system": self.system,
            "settings": asdict(self.settings),
            "max_new_tokens": self.max_new_tokens,
            "messages": list(self.messages),
        }

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.to_dict())

    def load(self, path: str | Path) -> None:
        """Replace the conversation with a saved one; on any error nothing changes."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not a JSON transcript: {error}") from None
        if not isinstance(data, dict) or data.get("format") != TRANSCRIPT_FORMAT:
            raise ValueError(f"{path} is not a bardlet chat transcript (saved with /save)")
        messages = data.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict)
            and m.get("role") in ("user", "assistant")
            and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValueError(
                f"{path}: 'messages' must be a list of {{role: user|assistant, content: str}}"
            )
        system = data.get("system")
        if system is not None and not isinstance(system, str):
            raise ValueError(f"{path}: 'system' must be a string or null")
        settings = self.settings
        raw = data.get("settings")
        if isinstance(raw, dict):
            try:
                settings = Sampling(
                    temperature=float(raw.get("temperature", settings.temperature)),
                    top_k=int(raw.get("top_k", settings.top_k)),
                    top_p=float(raw.get("top_p", settings.top_p)),
                    seed=None if raw.get("seed") is None else int(raw["seed"]),
                )
            except (TypeError, ValueError):
                raise ValueError(f"{path}: 'settings' has a value of the wrong type") from None
        self.messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        self.system = system
        self.settings = settings
        style = data.get("style")
        self.style = style if isinstance(style, str) else None


def _describe(chat: Chat) -> str:
    s = chat.settings
    seed = "off" if s.seed is None else str(s.seed)
    return (
        f"style={chat.style or '-'} temperature={s.temperature:g} top_k={s.top_k} "
        f"top_p={s.top_p:g} seed={seed} max_new_tokens={chat.max_new_tokens}\n"
        f"system={chat.system!r}"
    )


def _number(kind: Callable[[str], Any], text: str, name: str, low: float, high: float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name} needs a number, e.g. {name} {low:g}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}")
    return value


def command(chat: Chat, line: str) -> str | None:
    """Run one slash command; returns the text to show, or None to leave the chat."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    s = chat.settings
    if name in ("/exit", "/quit"):
        return None
    if name == "/help":
        return HELP
    if name == "/clear":
        chat.clear()
        return "(conversation cleared)"
    if name == "/settings":
        return _describe(chat)
    if name == "/temp":
        s.temperature = _number(float, arg, "/temp", 0.0, 10.0)
        return f"(temperature {s.temperature:g})"
    if name == "/topk":
        s.top_k = _number(int, arg, "/topk", 0, 1_000_000)
        return f"(top_k {s.top_k})"
    if name == "/topp":
        s.top_p = _number(float, arg, "/topp", 0.0, 1.0)
        if s.top_p == 0:
            raise ValueError("/topp must be above 0")
        return f"(top_p {s.top_p:g})"
    if name == "/greedy":
        s.temperature = 0.0
        return "(greedy: temperature 0)"
    if name == "/seed":
        if arg.lower() in ("", "off", "none"):
            s.seed = None
            return "(seed off)"
        s.seed = _number(int, arg, "/seed", 0, 2**63 - 1)
        return f"(seed {s.seed})"
    if name == "/system":
        chat.system = arg or None
        return f"(system prompt: {chat.system!r})"
    if name == "/style":
        if not arg:
            return "styles: " + ", ".join(chat.styles) + f" (current: {chat.style or '-'})"
        chat.apply_style(arg)
        return f"(style {arg})\n{_describe(chat)}"
    if name == "/save":
        if not arg:
            raise ValueError("usage: /save FILE")
        chat.save(Path(arg).expanduser())
        return f"(saved {len(chat.messages)} messages to {arg})"
    if name == "/load":
        if not arg:
            raise ValueError("usage: /load FILE")
        chat.load(Path(arg).expanduser())
        return f"(loaded {len(chat.messages)} messages from {arg})"
    raise ValueError(f"unknown command {name}: /help lists them")


def repl(
    chat: Chat, read: Callable[[str], str] = input, write: Callable[[str], None] | None = None
) -> None:
    """The read-eval-print loop behind `bardlet chat`."""

    def emit(text: str) -> None:
        if write is not None:
            write(text)
        else:
            print(text, end="", flush=True)

    layers = chat.lm.info.get("model", {}).get("n_layer", "?")
    emit(f"bardlet chat ({layers} layers). /help for commands, /exit to leave.\n")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            emit("\n")
            return
        except KeyboardInterrupt:
            emit("\n(Ctrl-D or /exit to leave)\n")
            continue
        if not line:
            continue
        if line.startswith("/"):
            try:
                shown = command(chat, line)
            except (ValueError, OSError) as error:
                emit(f"[{error}]\n")
                continue
            if shown is None:
                return
            emit(shown + "\n")
            continue
        emit("bot> ")
        pieces = chat.reply(line)
        try:
            for piece in pieces:
                emit(piece)
        except ValueError as error:
            emit(f"[{error}]")
        except KeyboardInterrupt:
            emit(" [stopped]")
        finally:
            pieces.close()
        emit("\n")
