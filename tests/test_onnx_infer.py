"""scripts/onnx_infer.py: a copied script + model.onnx + bpe.json, no bardlet, no torch."""

import importlib.util
import os
import random
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import regex
import torch
from conftest_server import build_marker_model

from bardlet.chat import Chat
from bardlet.export import export_onnx
from bardlet.model import GPT, GPTConfig
from bardlet.runtime.generation import continue_text
from bardlet.runtime.sampling import Sampling, sample
from bardlet.runtime.session import OnnxLM
from bardlet.tokenizer import GPT4_PATTERN

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "onnx_infer.py"
TEXTS = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "It's 12345 o'clock -- isn't it?  \n\n\tTabs\t and  spaces   ",
    "Ça va? Über naïve café, 日本語のテキスト, Ελληνικά, русский 🎉🎉 👍🏽",
    "½ ² Ⅻ ٣٤٥ ſ K \u00a0nbsp\u2003em\u2028line \x1c\x1d",
    "<|assistant|> typed by a user <|end|>",
    "x" * 300,
    "Sweet belle, eee lll ----- eeeee\n\n\n",  # runs: the leftmost pair merges first
    "",
]


def load_script():
    spec = importlib.util.spec_from_file_location("onnx_infer_under_test", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, small_tokenizer) -> Path:
    """A folder holding only what a user copies: the script, model.onnx and bpe.json."""
    folder = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(2)
    config = GPTConfig(
        vocab_size=small_tokenizer.vocab_size,
        block_size=64,
        n_layer=2,
        n_head=2,
        n_embd=32,
        mlp_ratio=8 / 3,
        dropout=0.0,
        tie_embeddings=True,
    )
    export_onnx(
        GPT(config).eval(), folder / "model.onnx", 23, {"tokenizer_hash": small_tokenizer.hash}
    )
    small_tokenizer.save(folder / "bpe.json")
    shutil.copy(SCRIPT, folder / "onnx_infer.py")
    return folder


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    """Packages that fail on import, put first on sys.path: torch and bardlet are off limits."""
    root = tmp_path_factory.mktemp("stubs")
    for name in ("torch", "bardlet"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(
            f"raise ImportError('{name} must not be imported by the standalone script')\n"
        )
    no_regex = root / "no_regex"
    (no_regex / "regex").mkdir(parents=True)
    (no_regex / "regex" / "__init__.py").write_text("raise ImportError('no regex here')\n")
    return root


def run(bundle: Path, stubs: Path, *args: str, no_regex: bool = False, stdin: str = "", check=True):
    paths = [str(stubs / "no_regex")] if no_regex else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(stubs)])}
    done = subprocess.run(
        [sys.executable, "onnx_infer.py", *args],
        cwd=bundle,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_the_stubs_really_block_torch_and_bardlet(bundle, stubs):
    env = {**os.environ, "PYTHONPATH": str(stubs)}
    for name in ("torch", "bardlet"):
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"], cwd=bundle, env=env, capture_output=True
        )
        assert done.returncode != 0


@pytest.mark.parametrize("use_regex", [True, False])
def test_encode_and_decode_match_bardlet(script, small_tokenizer, tmp_path, use_regex):
    small_tokenizer.save(tmp_path / "bpe.json")
    bpe = script.BPE(tmp_path / "bpe.json", use_regex=use_regex)
    assert bpe.hash == small_tokenizer.hash
    for text in TEXTS:
        ids = bpe.encode(text)
        assert ids == small_tokenizer.encode(text), text
        assert bpe.decode(ids) == text
    specials = list(small_tokenizer.special_tokens.values())
    assert bpe.decode(specials) == small_tokenizer.decode(specials)


def test_stdlib_pattern_splits_like_regex_on_every_known_character(script):
    """Without `regex`, the translated pattern cuts the same chunks for any character Python's
    Unicode tables know (random strings over the first three planes)."""
    reference = regex.compile(GPT4_PATTERN)
    ours = script.compile_pattern(GPT4_PATTERN, use_regex=False)
    known = [
        chr(c)
        for c in range(0x30000)
        if not 0xD800 <= c < 0xE000 and unicodedata.category(chr(c)) != "Cn"
    ]
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(
            rng.choice(known)
            if rng.random() < 0.4
            else rng.choice(" \n\r\t'sLlVe1.,!\x1c\x1f\x85\xa0\u2028\u3000")
            for _ in range(30)
        )
        assert ours.findall(text) == reference.findall(text), repr(text)


def test_greedy_generation_equals_the_bardlet_runtime(bundle, stubs):
    lm = OnnxLM(bundle)
    for prompt in ("ROMEO:", "Ça va? 日本"):
        expected = continue_text(lm, prompt, 20, Sampling(temperature=0)).text()
        args = ["--model", "model.onnx", "--prompt", prompt, "--max-new-tokens", "20"]
        done = run(bundle, stubs, *args, "--temperature", "0", "--seed", "1")
        assert done.stdout == expected + "\n"
    fallback = run(bundle, stubs, *args, "--temperature", "0", no_regex=True)
    assert fallback.stdout == expected + "\n"


def test_seeded_sampling_and_stop_strings_equal_the_bardlet_runtime(bundle, stubs):
    lm = OnnxLM(bundle)
    settings = Sampling(
        temperature=0.9, top_k=30, top_p=0.9, min_p=0.02, repetition_penalty=1.2, seed=7
    )
    expected = continue_text(lm, "KING:", 30, settings).text()
    args = [
        "--model", "model.onnx", "--prompt", "KING:", "-n", "30", "--temperature", "0.9",
        "--top-k", "30", "--top-p", "0.9", "--min-p", "0.02", "--repetition-penalty", "1.2",
        "--seed", "7",
    ]  # fmt: skip
    assert run(bundle, stubs, *args).stdout == expected + "\n"
    stop = expected[8:10]
    settings.stop = (stop,)
    cut = continue_text(lm, "KING:", 30, settings).text()
    assert cut == expected[: expected.find(stop)]
    assert run(bundle, stubs, *args, "--stop", stop).stdout == cut + "\n"
    other = run(bundle, stubs, *args[:-1], "8").stdout
    assert other != expected + "\n"


def test_plain_text_stops_at_end_and_hides_special_tokens_like_the_runtime(
    tmp_path, small_tokenizer, stubs
):
    folder = build_marker_model(tmp_path, small_tokenizer)  # writes markers and <|end|>
    shutil.copy(SCRIPT, folder / "onnx_infer.py")
    lm = OnnxLM(folder)
    settings = Sampling(temperature=1.0, top_k=0, seed=0)
    args = ["--prompt", "KING:", "-n", "40", "--temperature", "1", "--top-k", "0", "--seed", "0"]
    stopped = run(folder, stubs, *args).stdout
    assert stopped == continue_text(lm, "KING:", 40, settings).text() + "\n"
    everything = run(folder, stubs, *args, "--ignore-end").stdout
    assert everything == continue_text(lm, "KING:", 40, settings, stop_at_end=False).text() + "\n"
    assert len(everything) > len(stopped)
    assert "<|" not in everything


def test_sampling_rules_equal_the_runtime(script):
    """The script's copy of `sample` draws what bardlet's draws, knob by knob."""
    rng = np.random.default_rng(0)
    for knobs in (
        {"temperature": 0.0},
        {"temperature": 0.0, "repetition_penalty": 3.0},
        {"temperature": 1.0, "top_k": 0},
        {"temperature": 0.7, "top_k": 5},
        {"temperature": 2.0, "top_k": 3},
        {"temperature": 1.3, "top_k": 0, "top_p": 0.5},
        {"temperature": 1.0, "top_k": 0, "min_p": 0.3},
        {"temperature": 1.0, "top_k": 0, "repetition_penalty": 2.0},
        {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.1, "repetition_penalty": 1.3},
    ):
        ours, theirs = script.Sampling(**knobs), Sampling(**knobs)
        for trial in range(30):
            # Odd trials: every logit negative, where the penalty multiplies instead of divides.
            logits = (rng.normal(size=64) * 3 - 8 * (trial % 2)).astype(np.float32)
            previous = [*np.argsort(logits)[-2:].tolist(), 3, 5, 5]  # the likeliest were seen
            a = script.sample(logits, ours, np.random.default_rng(trial), previous)
            b = sample(logits, theirs, np.random.default_rng(trial), previous)
            assert a == b, (knobs, trial)


def test_chat_forgets_old_turns_like_bardlet_chat(script, bundle):
    """Same rule as bardlet.chat.Chat: drop the oldest exchange until prompt + room fit."""
    lm = OnnxLM(bundle)
    bpe = script.BPE(bundle / "bpe.json")
    words = ["a b c d", "e f", "g h i j k l", "m", "n o p q r s t u v w x y z", "the king"]
    for n in range(1, 7):
        for system in (None, "Be brief."):
            messages = [
                {"role": "user" if i % 2 == 0 else "assistant", "content": words[i] * 2}
                for i in range(n)
            ]
            if messages[-1]["role"] != "user":
                continue
            chat = Chat(lm, Sampling(), system=system, max_new_tokens=12)
            chat.messages = [dict(m) for m in messages]
            try:
                expected = chat._prompt()
            except ValueError:
                expected = None
            kept, prompt = script.fit_chat(bpe, messages, system, lm.block_size, 12)
            assert prompt == expected, (n, system)
            if expected is not None:
                assert kept == chat.messages


def test_chat_replies_equal_bardlet_chat(bundle, stubs):
    """Same template, same stop tokens, same forgetting of old turns when the 64-token
    context fills up, same seeded samples."""
    lm = OnnxLM(bundle)
    turns = ["Hello there", "And then?", "Tell me more about the king", "Why?", "Ça va?"]
    chat = Chat(
        lm, Sampling(temperature=1.0, top_k=0, seed=5), system="Be brief.", max_new_tokens=12
    )
    replies = ["".join(chat.reply(turn)) for turn in turns]
    assert sum(map(len, replies)) > 10
    assert chat.messages[0]["content"] != turns[0]  # the oldest turns were dropped
    common = ["--model", "model.onnx", "--chat", "-t", "1", "--top-k", "0", "--seed", "5"]
    common += ["-n", "12", "--system", "Be brief."]
    one = run(bundle, stubs, *common, "--prompt", turns[0])
    assert one.stdout == replies[0] + "\n"
    stdin = "\n".join([turns[0], "", *turns[1:], "/exit", "never"]) + "\n"
    talk = run(bundle, stubs, *common, stdin=stdin)
    assert talk.stdout == "".join(reply + "\n" for reply in replies)
    assert "you> " in talk.stderr and "you> " not in talk.stdout
    cleared = run(bundle, stubs, *common, stdin=f"{turns[0]}\n/clear\n{turns[0]}\n")
    assert cleared.stdout == f"{replies[0]}\n{replies[0]}\n"


def test_help_explains_every_option_and_errors_are_clear(bundle, stubs):
    done = run(bundle, stubs, "--help")
    for option in (
        "--model", "--tokenizer", "--prompt", "--chat", "--system", "--max-new-tokens",
        "--temperature", "--top-k", "--top-p", "--min-p", "--repetition-penalty", "--stop",
        "--seed", "--threads", "--no-regex", "regex",
    ):  # fmt: skip
        assert option in done.stdout
    missing = run(bundle, stubs, "--model", "nope.onnx", "--prompt", "x", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = run(bundle, stubs, "--model", "model.onnx", "--prompt", "x", "--top-p", "2", check=False)
    assert bad.returncode == 2 and "--top-p" in bad.stderr
    none = run(bundle, stubs, "--model", "model.onnx", check=False)
    assert none.returncode == 2 and "--prompt" in none.stderr
