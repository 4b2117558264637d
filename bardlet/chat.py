"""The terminal chat: `bardlet chat`, a multi-turn conversation with an exported model, on
the ONNX runtime (no torch here): `runtime.conversation` fits the prompt to the context and
ends the reply; the style presets are the ones saved beside the model."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bardlet.data.chat_template import Message
from bardlet.files import write_text_atomic
from bardlet.retrieval.index import Index, Passage
from bardlet.retrieval.memory import Memory
from bardlet.runtime.beams import MAX_BEAMS, beams
from bardlet.runtime.conversation import (
    MEMORY_SHARE,
    fit_conversation,
    load_styles,
    pick_recalled,
    pick_sources,
    reply,
    system_with,
)
from bardlet.runtime.sampling import Sampling
from bardlet.runtime.session import OnnxLM

TRANSCRIPT_FORMAT = "bardlet-chat"
TRANSCRIPT_VERSION = 1
MAX_TRANSCRIPT_MESSAGES = 1000  # a saved chat longer than this is refused, not slowly loaded
MAX_NEW_TOKENS = 128  # a reply's length when neither `bardlet chat -n` nor a transcript says

HELP = """commands:
  /help            this list
  /temp X          sampling temperature (0 = greedy)
  /topk N          keep the N most likely tokens (0 = all)
  /topp P          nucleus sampling: keep tokens up to probability P (1 = all)
  /greedy          always pick the most likely token (same as /temp 0)
  /beams N         beam search with N beams (deterministic); /beams 1 samples again
  /seed N          fixed random seed (/seed off for a fresh one each reply)
  /system TEXT     set the system prompt (/system alone removes it)
  /style NAME      a preset of system prompt + sampling (/style alone lists them)
  /settings        show the current settings
  /clear           forget the conversation (a --memory file keeps it)
  /memory          list the conversations stored in the --memory file
  /forget [ID|all] delete this conversation (or that one, or all) from the --memory file
  /save FILE       write the conversation to a JSON file
  /load FILE       read a conversation saved with /save
  /exit            leave (or Ctrl-D); Ctrl-C stops a reply"""

# The commands that set a number: (setting, type, low, high). The low and high only word the
# error message: Sampling itself checks every value it is given.
NUMBERS: dict[str, tuple[str, Callable[[str], Any], float, float]] = {
    "/temp": ("temperature", float, 0.0, 2.0),
    "/topk": ("top_k", int, 0, 1_000_000),
    "/topp": ("top_p", float, 0.0, 1.0),
    "/seed": ("seed", int, 0, 2**63 - 1),
}


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
    max_new_tokens: Annotated[int, Field(ge=1)] = MAX_NEW_TOKENS
    messages: list[TranscriptMessage] = Field(max_length=MAX_TRANSCRIPT_MESSAGES)


class Chat:
    """A multi-turn conversation with an exported model: the prompt is the whole conversation
    in the chat template. When it no longer fits the context beside room for a reply, the
    oldest turns go (the system prompt stays); a single message that cannot fit is refused.

    With `docs` (an index), the passages that best match each message go into the prompt and
    `sources` holds them for citing. With `memory`, every turn is stored as it is said, and
    remembered turns that match a new message come back into the prompt.
    """

    def __init__(
        self,
        lm: OnnxLM,
        settings: Sampling | None = None,
        system: str | None = None,
        max_new_tokens: int = MAX_NEW_TOKENS,
        docs: Index | None = None,
        memory: Memory | None = None,
    ) -> None:
        """Starts in the `default` style unless `settings` (and `system`) are given."""
        self.lm = lm
        self.styles = load_styles(lm.path)
        default = self.styles["default"]
        self.settings = settings if settings is not None else default.sampling()
        self.system = system if settings is not None else default.system
        self.max_new_tokens = max_new_tokens
        self.messages: list[Message] = []
        self.style: str | None = None if settings is not None else "default"
        self.docs, self.memory = docs, memory
        self.sources: list[Passage] = []  # what the last reply was given to read
        self.num_beams = 1  # /beams N: beam search instead of sampling

    def _prompt(self) -> list[int]:
        """The prompt ids; drops the oldest exchanges (never the newest message) to fit, after
        the sources and remembered turns (runtime/conversation.py shares out the context)."""
        tokenizer, block = self.lm.tokenizer, self.lm.block_size
        reply_room = min(self.max_new_tokens, block // 4)
        question = self.messages[-1]["content"]
        found = self.docs.search(question, k=4) if self.docs else []
        self.sources = pick_sources(tokenizer, found, block)
        system = system_with(self.system, self.sources)
        if self.memory is not None:
            try:  # what stays in the prompt with room kept for memories; the rest may return
                room = reply_room + int(block * MEMORY_SHARE)
                kept, _ = fit_conversation(tokenizer, self.messages, system, block, room)
                in_prompt = {(m["role"], m["content"]) for m in kept}
                recalled = self.memory.recall(question, k=4, leave_out=in_prompt)
                system = system_with(
                    self.system, self.sources, pick_recalled(tokenizer, recalled, block)
                )
            except ValueError:  # no room to spare: nothing recalled
                pass
        self.messages, ids = fit_conversation(tokenizer, self.messages, system, block, reply_room)
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
        if self.memory is not None:
            self.memory.add("user", user_text)  # stored (committed) before the reply starts
        shown: list[str] = []
        try:
            source = beams(self.lm, self.num_beams) if self.num_beams > 1 else None
            answer = reply(self.lm, prompt, self.max_new_tokens, self.settings, stream=source)
            for piece in answer.pieces():
                shown.append(piece)
                yield piece
        finally:
            said = "".join(shown)
            self.messages.append({"role": "assistant", "content": said})
            if self.memory is not None:
                self.memory.add("assistant", said)

    def footnotes(self) -> str:
        """The last reply's sources, numbered as in the prompt: [1] docs/walkthrough.md:12-20."""
        return "\n".join(f"[{i}] {p.place()}" for i, p in enumerate(self.sources, 1))

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
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{path} is a folder: name a file in it, e.g. {path / 'chat.json'}")
        try:
            write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n")
        except OSError as error:
            raise ValueError(f"cannot write {path}: {error.strerror or error}") from None

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
    return (
        f"style={chat.style or '-'} temperature={s.temperature:g} top_k={s.top_k} "
        f"top_p={s.top_p:g} seed={'off' if s.seed is None else s.seed} "
        f"max_new_tokens={chat.max_new_tokens} beams={chat.num_beams}\nsystem={chat.system!r}"
    )


def command(chat: Chat, line: str) -> str | None:
    """Run one slash command; returns the text to show, or None to leave the chat."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return None
    if name == "/seed" and arg.lower() in ("", "off", "none"):
        chat.settings.seed = None
        return "(seed off)"
    if name in NUMBERS:
        setting, kind, low, high = NUMBERS[name]
        try:
            value = kind(arg)
        except ValueError:
            raise ValueError(f"{name} needs a number, e.g. {name} {low:g}") from None
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low:g} and {high:g}")
        if name == "/topp" and value == 0:
            raise ValueError("/topp must be above 0")
        setattr(chat.settings, setting, value)
        return f"({setting} {value:g})" if kind is float else f"({setting} {value})"
    if name == "/beams":
        if not arg.isdigit() or not 1 <= int(arg) <= MAX_BEAMS:
            raise ValueError(f"/beams needs a number from 1 to {MAX_BEAMS}, e.g. /beams 4")
        chat.num_beams = int(arg)
        return f"(beam search, {arg} beams)" if chat.num_beams > 1 else "(sampling, no beams)"
    if name == "/greedy":
        chat.settings.temperature = 0.0
        return "(greedy: temperature 0)"
    if name == "/system":
        chat.system = arg or None
        return f"(system prompt: {chat.system!r})"
    if name == "/style" and not arg:
        return "styles: " + ", ".join(chat.styles) + f" (current: {chat.style or '-'})"
    if name == "/style":
        if arg not in chat.styles:
            raise ValueError(f"unknown style {arg!r}; choose one of {', '.join(chat.styles)}")
        chat.system = chat.styles[arg].system
        chat.settings = chat.styles[arg].sampling().model_copy(update={"seed": chat.settings.seed})
        chat.style = arg
        return f"(style {arg})\n{_describe(chat)}"
    if name in ("/save", "/load") and not arg:
        raise ValueError(f"usage: {name} FILE")
    if name == "/save":
        chat.save(Path(arg).expanduser())
        return f"(saved {len(chat.messages)} messages to {arg})"
    if name == "/load":
        chat.load(Path(arg).expanduser())
        return f"(loaded {len(chat.messages)} messages from {arg})"
    if name == "/clear":
        chat.messages = []
        return "(conversation cleared)"
    if name in ("/memory", "/forget") and chat.memory is None:
        raise ValueError(f"{name}: no memory file; start with `bardlet chat --memory FILE`")
    if name == "/memory" and chat.memory is not None:
        rows = [
            f"{'*' if session == chat.memory.session else ' '} {session}  {count:>4} turns  "
            f"{first[:50]!r}"
            for session, count, first in chat.memory.sessions()
        ]
        return "\n".join([f"{chat.memory.path} (* = this conversation):", *rows])
    if name == "/forget" and chat.memory is not None:
        gone = chat.memory.forget(arg or None)
        return f"(forgot {gone} turns of {arg or 'this conversation'})"
    if name == "/settings":
        return _describe(chat)
    if name == "/help":
        return HELP
    raise ValueError(f"unknown command {name}: /help lists them")


def repl(
    chat: Chat, read: Callable[[str], str] = input, write: Callable[[str], None] | None = None
) -> None:
    """The read-eval-print loop behind `bardlet chat`."""
    emit = write or (lambda text: print(text, end="", flush=True))
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
        if line.startswith("/"):
            try:
                shown = command(chat, line)
            except (ValueError, OSError) as error:
                shown = f"[{error}]"
            if shown is None:
                return
            emit(shown + "\n")
        elif line:
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
            if chat.docs is not None and chat.sources:
                emit(chat.footnotes() + "\n")
