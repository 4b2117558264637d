"""The terminal chat: `bardlet chat`, a multi-turn conversation with an exported model.

It runs on the ONNX runtime (no torch here): the prompt is fitted to the context by
`runtime.conversation`, the reply streams through `runtime.generation`, and style presets
are the ones saved beside the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bardlet.data.chat_template import Message
from bardlet.files import write_text_atomic
from bardlet.runtime.conversation import fit_conversation, load_styles
from bardlet.runtime.generation import Generation
from bardlet.runtime.sampling import Sampling, Style
from bardlet.runtime.session import OnnxLM

TRANSCRIPT_FORMAT = "bardlet-chat"
TRANSCRIPT_VERSION = 1
MAX_TRANSCRIPT_MESSAGES = 1000  # a saved chat longer than this is refused, not slowly loaded

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


class TranscriptMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class Transcript(BaseModel):
    """A conversation saved with /save: checked by type and range when loaded."""

    model_config = ConfigDict(extra="ignore")

    format: Literal["bardlet-chat"]
    version: int = TRANSCRIPT_VERSION
    style: str | None = None
    system: str | None = None
    settings: Sampling = Field(default_factory=lambda: Sampling())
    max_new_tokens: Annotated[int, Field(ge=1)] = 128
    messages: list[TranscriptMessage] = Field(max_length=MAX_TRANSCRIPT_MESSAGES)


class Chat:
    """A multi-turn conversation with an exported model.

    The prompt is the whole conversation rendered with the chat template. When it no longer
    fits the model's context next to room for a reply, the oldest turns are dropped (the
    system prompt stays); a single message that cannot fit is refused with a clear error.
    """

    def __init__(
        self,
        lm: OnnxLM,
        settings: Sampling | None = None,
        system: str | None = None,
        max_new_tokens: int = 128,
        styles: dict[str, Style] | None = None,
    ) -> None:
        """Starts in the `default` style unless `settings` (and `system`) are given."""
        self.lm = lm
        self.styles = styles if styles is not None else load_styles(lm.path)
        default = self.styles["default"]
        self.settings = settings if settings is not None else default.sampling()
        self.system = system if settings is not None else default.system
        self.max_new_tokens = max_new_tokens
        self.messages: list[Message] = []
        self.style: str | None = None if settings is not None else "default"

    def clear(self) -> None:
        self.messages = []

    def apply_style(self, name: str) -> None:
        """Use one of the style presets: its system prompt and sampling settings."""
        if name not in self.styles:
            raise ValueError(f"unknown style {name!r}; choose one of {', '.join(self.styles)}")
        style = self.styles[name]
        self.system = style.system
        self.settings = style.sampling().model_copy(update={"seed": self.settings.seed})
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
        stop_ids = sorted(self.lm.tokenizer.special_tokens.values())  # any marker ends a turn
        generation = Generation(self.lm, prompt, self.max_new_tokens, self.settings, stop_ids)
        shown: list[str] = []
        try:
            for piece in generation.pieces():
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
            "settings": self.settings.model_dump(),
            "max_new_tokens": self.max_new_tokens,
            "messages": list(self.messages),
        }

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n")

    def load(self, path: str | Path) -> None:
        """Replace the conversation with a saved one; on any error nothing changes."""
        path = Path(path)
        try:
            data = json.loads(path.read_bytes())
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
        except ValueError as error:  # not JSON, or not UTF-8
            raise ValueError(f"{path} is not a JSON transcript: {error}") from None
        if not isinstance(data, dict) or data.get("format") != TRANSCRIPT_FORMAT:
            raise ValueError(f"{path} is not a bardlet chat transcript (saved with /save)")
        try:
            transcript = Transcript.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(
                f"{path}: {where}: {first['msg']} (got {str(first.get('input'))[:80]!r})"
            ) from None
        self.messages = [m.model_dump() for m in transcript.messages]
        self.system = transcript.system
        self.settings = transcript.settings
        self.style = transcript.style


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
        s.temperature = _number(float, arg, "/temp", 0.0, 2.0)
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
