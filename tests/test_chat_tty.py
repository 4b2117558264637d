"""`bardlet chat` driven through a pseudo terminal (pexpect), plus its conversation memory."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pexpect
import pytest
from conftest_server import PYTHON, REPO, STYLES, build_tiny_model, child_env, tiny_gpt

from bardlet.chat import Chat, command, repl
from bardlet.data.chat_template import render_prompt
from bardlet.runtime.conversation import fit_conversation, load_styles
from bardlet.runtime.sampling import Sampling, Style
from bardlet.runtime.session import OnnxLM

TIMEOUT = 20  # for each interaction; starting a chat (imports, model load) gets STARTUP
STARTUP = 120


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, small_tokenizer) -> Path:
    # A long context so that a reply can run for seconds (long enough to stop it with Ctrl-C).
    return build_tiny_model(tmp_path_factory.mktemp("tty"), small_tokenizer, block_size=2048)


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory, small_tokenizer) -> Path:
    # Wide, so a 2,000-token reply takes seconds even on a fast machine: Ctrl-C lands mid-reply.
    folder = tmp_path_factory.mktemp("slow")
    return build_tiny_model(folder, small_tokenizer, 2048, n_embd=192, logit_scale=50)


@pytest.fixture(scope="module")
def short_model(tmp_path_factory, small_tokenizer) -> OnnxLM:
    return OnnxLM(build_tiny_model(tmp_path_factory.mktemp("short"), small_tokenizer, 64))


def spawn(model: Path, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        PYTHON,
        ["-m", "bardlet.cli", "chat", "--model", str(model), *args],
        cwd=str(REPO),
        env=child_env(TERM="dumb"),
        encoding="utf-8",
        codec_errors="replace",
        timeout=TIMEOUT,
        dimensions=(40, 200),
        # A pytest-xdist worker ignores SIGINT, and children inherit that: give the chat the
        # default, as a terminal's shell does, so Ctrl-C raises KeyboardInterrupt in it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    child.expect_exact("you> ", timeout=STARTUP)
    return child


def run(child: pexpect.spawn, line: str, answer: str) -> str:
    """Send a line, wait for `answer` and the next prompt; the text in between."""
    child.sendline(line)
    child.expect_exact(answer)
    before = child.before
    child.expect_exact("you> ")
    return before + answer + child.before


def close(child: pexpect.spawn) -> None:
    if child.isalive():
        child.terminate(force=True)


def reply_of(child: pexpect.spawn, line: str) -> str:
    child.sendline(line)
    child.expect_exact("bot> ")
    child.expect(r"\r\n(\x1b\[[?0-9;]*[a-zA-Z])*you> ")
    return child.before.replace("\r\n", "\n")


def test_commands_change_settings_and_transcripts_round_trip(model_dir, tmp_path):
    child = spawn(model_dir, "--max-new-tokens", "12", "--style", "terse", "--top-k", "3")
    try:
        # --style sets the preset; options given explicitly win over it.
        terse = STYLES["terse"]
        shown = run(child, "/settings", "max_new_tokens=12")
        assert f"style=terse temperature={terse['temperature']:g} top_k=3" in shown
        assert f"top_p={terse['top_p']:g}" in shown and repr(terse["system"]) in shown
        assert "/style NAME" in run(child, "/help", "/load FILE")
        run(child, "/temp 0.5", "(temperature 0.5)")
        run(child, "/topk 7", "(top_k 7)")
        run(child, "/topp 0.9", "(top_p 0.9)")
        run(child, "/seed 3", "(seed 3)")
        run(child, "/settings", "temperature=0.5 top_k=7 top_p=0.9 seed=3 max_new_tokens=12")
        run(child, "/temp warm", "[/temp needs a number")
        run(child, "/topp 1.5", "[/topp must be between 0 and 1]")
        run(child, "/greedy", "(greedy: temperature 0)")
        run(child, "/style", "styles: default, shakespeare, helpful, terse")
        shakespeare = STYLES["shakespeare"]
        run(child, "/style shakespeare", f"temperature={shakespeare['temperature']:g}")
        run(child, "/style klingon", "[unknown style 'klingon'")
        run(child, "/system Speak briefly.", "(system prompt: 'Speak briefly.')")
        run(child, "/frobnicate", "[unknown command /frobnicate")

        first = reply_of(child, "Good morrow, friend")
        second = reply_of(child, "What news?")
        transcript = tmp_path / "talk" / "chat.json"
        run(child, f"/save {transcript}", "(saved 4 messages")
        saved = json.loads(transcript.read_text(encoding="utf-8"))
        assert saved["system"] == "Speak briefly."
        assert saved["style"] == "shakespeare"
        assert saved["settings"]["seed"] == 3
        assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 2
        assert saved["messages"][0]["content"] == "Good morrow, friend"
        assert saved["messages"][1]["content"] == first
        assert saved["messages"][3]["content"] == second
        assert os.listdir(transcript.parent) == ["chat.json"]  # no temporary file left

        run(child, "/clear", "(conversation cleared)")
        run(child, "/save " + str(tmp_path / "empty.json"), "(saved 0 messages")
        run(child, f"/load {transcript}", "(loaded 4 messages")
        run(child, "/load " + str(tmp_path / "missing.json"), "[cannot read")
        (tmp_path / "junk.json").write_text("{]")
        run(child, "/load " + str(tmp_path / "junk.json"), "is not a JSON transcript")
        run(child, "/settings", "system='Speak briefly.'")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        close(child)
    child.close()
    assert child.exitstatus == 0


def test_replies_stream_the_models_words_and_remember_the_conversation(model_dir):
    child = spawn(model_dir, "--temperature", "0", "--max-new-tokens", "16", "--system", "Hi.")
    try:
        got = [reply_of(child, "Good morrow"), reply_of(child, "And then?")]
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        close(child)
    chat = Chat(OnnxLM(model_dir), Sampling(temperature=0), system="Hi.", max_new_tokens=16)
    want = ["".join(chat.reply("Good morrow")), "".join(chat.reply("And then?"))]
    assert got == want
    # The second answer depends on the first exchange: a fresh chat answers differently.
    fresh = Chat(OnnxLM(model_dir), Sampling(temperature=0), system="Hi.", max_new_tokens=16)
    assert "".join(fresh.reply("And then?")) != want[1]


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(slow_model_dir, tmp_path):
    child = spawn(slow_model_dir, "--temperature", "0", "--max-new-tokens", "2000")
    try:
        child.sendline("Speak until I stop thee")
        child.expect_exact("bot> ")
        child.expect(r"\S")  # some of the reply has been printed
        child.sendintr()
        child.expect_exact("[stopped]")
        child.expect_exact("you> ")
        saved = tmp_path / "stopped.json"
        run(child, f"/save {saved}", "(saved 2 messages")
        messages = json.loads(saved.read_text(encoding="utf-8"))["messages"]
        assert messages[0] == {"role": "user", "content": "Speak until I stop thee"}
        assert messages[1]["role"] == "assistant"
        # Ctrl-C at the prompt does not leave either.
        child.sendintr()
        child.expect_exact("(Ctrl-D or /exit to leave)")
        run(child, "/greedy", "(greedy")
        child.sendeof()
        child.expect(pexpect.EOF, timeout=TIMEOUT)
    finally:
        close(child)
    child.close()
    assert child.exitstatus == 0


def test_unknown_style_exits_with_a_message(model_dir):
    child = pexpect.spawn(
        PYTHON,
        ["-m", "bardlet.cli", "chat", "--style", "nope", "--model", str(model_dir)],
        cwd=str(REPO),
        env=child_env(TERM="dumb"),
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    child.expect_exact("unknown style 'nope'", timeout=STARTUP)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2


# ------------------------------------------------------------------ memory, in process


def test_memory_keeps_the_system_prompt_and_drops_the_oldest_turns(short_model):
    chat = Chat(short_model, Sampling(temperature=0), system="Be kind.", max_new_tokens=8)
    "".join(chat.reply("Hello"))
    for i in range(10):
        "".join(chat.reply(f"Tell me more, {i}"))
        prompt = render_prompt(short_model.tokenizer, chat.messages[:-1], chat.system)
        assert len(prompt) + 8 <= short_model.block_size
    assert chat.messages[0]["role"] == "user" and chat.messages[0]["content"] != "Hello"
    assert chat.messages[-2] == {"role": "user", "content": "Tell me more, 9"}
    assert chat.system == "Be kind."
    assert len(chat.messages) >= 2


def test_a_message_too_long_is_refused_whole_and_history_stays(short_model):
    chat = Chat(short_model, Sampling(temperature=0), max_new_tokens=8)
    "".join(chat.reply("Hello"))
    before = list(chat.messages)
    with pytest.raises(ValueError, match="please shorten it"):
        list(chat.reply("word " * 60))
    assert chat.messages == before


def test_a_stopped_reply_joins_the_memory_as_far_as_it_got(short_model):
    chat = Chat(short_model, Sampling(temperature=0), max_new_tokens=20)
    out: list[str] = []
    pieces = iter(["hello", "/exit"])

    def write(text: str) -> None:
        out.append(text)
        if sum(1 for t in out if t.strip()) == 3 and "bot> " in out:
            raise KeyboardInterrupt

    repl(chat, read=lambda _prompt: next(pieces), write=write)
    text = "".join(out)
    assert "[stopped]" in text
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]
    full = Chat(short_model, Sampling(temperature=0), max_new_tokens=20)
    assert chat.messages[1]["content"] != "".join(full.reply("hello"))


def test_commands_validate_their_arguments(short_model):
    chat = Chat(short_model, Sampling())
    for bad in ("/temp -1", "/topk x", "/topp 0", "/seed y", "/save", "/load", "/style zz"):
        with pytest.raises(ValueError):
            command(chat, bad)
    assert command(chat, "/seed off") == "(seed off)" and chat.settings.seed is None
    assert command(chat, "/exit") is None
    assert re.search(r"top_k=\d+", command(chat, "/settings") or "")


def test_save_to_a_folder_names_it_and_leaves_nothing(short_model, tmp_path):
    chat = Chat(short_model, Sampling())
    with pytest.raises(ValueError, match=r"is a folder: name a file in it, e\.g\. .*chat\.json"):
        command(chat, f"/save {tmp_path}")
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_fit_conversation_keeps_order_and_system_messages(short_model):
    tokenizer, size = short_model.tokenizer, short_model.block_size
    messages = [
        {"role": "user", "content": "first " * 8},
        {"role": "assistant", "content": "reply " * 8},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "second"},
    ]
    assert fit_conversation(tokenizer, messages, None, 10_000, 8)[0] == messages  # all fit
    kept, ids = fit_conversation(tokenizer, messages, None, size, 8)
    assert kept == messages[2:]  # the oldest exchange went; the system message kept its place
    assert ids == render_prompt(tokenizer, kept) and len(ids) + 8 <= size


def test_styles_come_from_beside_the_model(model_dir, tmp_path):
    saved = {name: s.model_dump(mode="json") for name, s in load_styles(model_dir).items()}
    assert saved == STYLES and load_styles(model_dir / "model.onnx") == load_styles(model_dir)
    bare = tmp_path / "bare"
    bare.mkdir()
    assert load_styles(bare / "model.onnx") == {"default": Style()}  # no styles.json
    (bare / "styles.json").write_text(json.dumps({"pirate": {"system": "Arr.", "top_k": 5}}))
    styles = load_styles(bare)
    assert list(styles) == ["default", "pirate"]  # a chat always has a default to start from
    assert styles["pirate"] == Style(system="Arr.", top_k=5)
    # Each value is checked by type and range, and the error names the key and the fix.
    for bad, where in (
        ({"pirate": {"colour": "red"}}, "pirate.colour"),
        ({"pirate": {"temperature": "hot"}}, "pirate.temperature"),
        ({"pirate": {"top_k": -1}}, "pirate.top_k"),
        ([1, 2], "is not a styles file"),
    ):
        (bare / "styles.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=rf"{re.escape(where)}.*dvc repro export"):
            load_styles(bare)


def test_a_transcript_is_checked_by_type_and_range_before_anything_changes(short_model, tmp_path):
    chat = Chat(short_model, Sampling(temperature=0), max_new_tokens=8)
    "".join(chat.reply("Hello"))
    before = (list(chat.messages), chat.settings, chat.system)
    good = chat.to_dict()
    for change, named in (
        ({"settings": {**good["settings"], "top_k": 1e400}}, "settings.top_k"),
        ({"settings": {**good["settings"], "seed": -5}}, "settings.seed"),
        ({"settings": {**good["settings"], "temperature": "hot"}}, "settings.temperature"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x"}] * 20_000}, "messages"),
    ):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({**good, **change}).replace("Infinity", "1e400"))
        with pytest.raises(ValueError, match=re.escape(named)):
            chat.load(path)
        assert (chat.messages, chat.settings, chat.system) == before


def test_a_training_checkpoint_folder_is_exported_on_the_fly(tmp_path, small_tokenizer):
    from bardlet.training import checkpoint

    network = tiny_gpt(small_tokenizer)
    checkpoint.save(network, tmp_path / "models/chat", {"tokenizer_hash": small_tokenizer.hash})
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # the project's settings
    (tmp_path / "models/tokenizer").mkdir(parents=True)
    small_tokenizer.save(tmp_path / "models/tokenizer/bpe.json")

    def chat_in_project(*args: str) -> pexpect.spawn:
        return pexpect.spawn(
            PYTHON,
            ["-m", "bardlet.cli", "chat", "--model", "models/chat", *args],
            cwd=str(tmp_path),
            env=child_env(TERM="dumb"),
            encoding="utf-8",
            timeout=TIMEOUT,
        )

    child = chat_in_project("--temperature", "0", "--max-new-tokens", "8")
    try:
        child.expect_exact("(exporting models/chat to ONNX for this session)", timeout=STARTUP)
        child.expect_exact("you> ", timeout=STARTUP)
        got = reply_of(child, "Good morrow")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        close(child)
    reference = build_tiny_model(tmp_path / "reference", small_tokenizer)  # the same weights
    want = "".join(
        Chat(OnnxLM(reference), Sampling(temperature=0), max_new_tokens=8).reply("Good morrow")
    )
    assert want and got == want

    # Another tokenizer than the one the checkpoint was trained with: a clear refusal.
    other = type(small_tokenizer).train(["a completely different text " * 50], vocab_size=270)
    other.save(tmp_path / "models/tokenizer/bpe.json")
    child = chat_in_project()
    child.expect_exact("is not the tokenizer models/chat was trained with")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
