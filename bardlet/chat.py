"""Conversation memory and the terminal chat, on top of the ONNX runtime (no torch here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from bardlet.data.chat_template import Message, render_prompt
from bardlet.runtime import OnnxLM, Sampling

HELP = """commands: /help  /clear (forget the conversation)  /exit (or Ctrl-D)"""


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
    ) -> None:
        self.lm = lm
        self.settings = settings
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.messages: list[Message] = []

    def clear(self) -> None:
        self.messages = []

    def _prompt(self) -> list[int]:
        tokenizer = self.lm.tokenizer
        reply_room = min(self.max_new_tokens, self.lm.block_size // 4)
        while True:
            ids = render_prompt(tokenizer, self.messages, self.system)
            if len(ids) + reply_room <= self.lm.block_size:
                return ids
            if len(self.messages) <= 1:
                raise ValueError(
                    f"that message is {len(ids)} tokens with the template; the model's context "
                    f"is {self.lm.block_size} tokens including the reply: please shorten it"
                )
            # Drop the oldest exchange (user + assistant) and try again.
            self.messages = self.messages[2:]

    def reply(self, user_text: str) -> Iterator[str]:
        """Stream the assistant's reply as text pieces; it joins the memory when complete."""
        self.messages.append({"role": "user", "content": user_text})
        try:
            prompt = self._prompt()
        except ValueError:
            self.messages.pop()
            raise
        tokenizer = self.lm.tokenizer
        stops = (tokenizer.special_id("<|end|>"), tokenizer.special_id("<|bos|>"))
        ids: list[int] = []
        shown = ""
        for token in self.lm.stream(prompt, self.max_new_tokens, self.settings, stops):
            ids.append(token)
            text = tokenizer.decode(ids)
            # A character can span several tokens: wait until it is complete.
            if not text.endswith("\ufffd"):
                yield text[len(shown) :]
                shown = text
        text = tokenizer.decode(ids)
        if len(text) > len(shown):
            yield text[len(shown) :]
        self.messages.append({"role": "assistant", "content": text})


def repl(
    chat: Chat, read: Callable[[str], str] = input, write: Callable[[str], None] | None = None
) -> None:
    """The read-eval-print loop behind `bardlet chat`."""

    def emit(text: str) -> None:
        if write is not None:
            write(text)
        else:
            print(text, end="", flush=True)

    emit(f"bardlet chat ({chat.lm.info.get('model', {}).get('n_layer', '?')} layers). {HELP}\n")
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            emit("\n")
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/help":
            emit(HELP + "\n")
            continue
        if line == "/clear":
            chat.clear()
            emit("(conversation cleared)\n")
            continue
        emit("bot> ")
        try:
            for piece in chat.reply(line):
                emit(piece)
        except ValueError as error:
            emit(f"[{error}]")
        emit("\n")
