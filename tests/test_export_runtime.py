"""ONNX export, parity with PyTorch, and the torch-free runtime, chat and CLI on top of it."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bardlet.chat import Chat, repl
from bardlet.data.chat_template import render_prompt
from bardlet.export import check_parity, export_onnx
from bardlet.model import GPT, GPTConfig
from bardlet.runtime.sampling import Sampling, sample
from bardlet.runtime.session import OnnxLM

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_tokenizer) -> tuple[Path, GPT]:
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
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
    model = GPT(config).eval()
    export_onnx(model, folder / "model.onnx", 23, {"tokenizer_hash": small_tokenizer.hash})
    small_tokenizer.save(folder / "bpe.json")
    return folder, model


def test_parity_with_pytorch_over_incremental_steps(exported, small_tokenizer):
    folder, model = exported
    prompt = render_prompt(small_tokenizer, [{"role": "user", "content": "Who art thou?"}])
    assert check_parity(model, folder / "model.onnx", prompt, steps=32) < 1e-4


def test_the_file_is_the_same_wherever_the_repo_is(exported, small_tokenizer):
    """The exporter notes each node's Python stack, with absolute paths: the file must not
    keep them, or a clone elsewhere would export other bytes and miss the committed dvc.lock."""
    folder, model = exported
    data = (folder / "model.onnx").read_bytes()
    assert str(REPO).encode() not in data and b"stack_trace" not in data
    again = folder / "again.onnx"
    export_onnx(model, again, 23, {"tokenizer_hash": small_tokenizer.hash})
    assert again.read_bytes() == data


def test_runtime_greedy_matches_pytorch_generate(exported, small_tokenizer):
    folder, model = exported
    lm = OnnxLM(folder)
    prompt = small_tokenizer.encode("ROMEO: ")
    ours = list(lm.stream(prompt, 20, Sampling(temperature=0)))
    expected, ids, past = [], torch.tensor([prompt]), None
    with torch.no_grad():
        for _ in range(20):  # PyTorch's greedy tokens, with its own KV cache
            logits, _, past = model(ids, past=past)
            expected.append(int(logits[0, -1].argmax()))
            ids = torch.tensor([expected[-1:]])
    assert ours == expected
    # Batched prompt through the graph: dynamic batch dimension.
    logits, present = lm.forward(np.array([prompt, prompt]), lm.empty_cache(batch=2))
    assert logits.shape == (2, len(prompt), small_tokenizer.vocab_size)
    assert present[0].shape == (2, 2, len(prompt), 16)


def test_the_evaluate_stages_pytorch_replies_are_the_graphs(exported, small_tokenizer):
    """stages/evaluate.py writes samples.md and ROUGE-L from the PyTorch model through the
    runtime's generation path (no second export): its tokens must be the ONNX graph's, greedy
    (several positions a pass, with prompt lookup) and seeded sampling alike."""
    from stages.evaluate import TorchLM

    folder, model = exported
    graph, torch_lm = OnnxLM(folder), TorchLM(model, small_tokenizer)
    prompt = small_tokenizer.encode("ROMEO: ROMEO: ROMEO: ")
    for settings in (Sampling(temperature=0), Sampling(temperature=0.9, top_k=20, seed=3)):
        expected = list(graph.stream(prompt, 40, settings))
        assert list(torch_lm.stream(prompt, 40, settings)) == expected
    # Left-padded rows of a batch: the mask reaches the PyTorch model as it reaches the graph.
    ids, mask = np.array([[0, 5, 6], [7, 8, 9]]), np.array([[0, 1, 1], [1, 1, 1]])
    ours, _ = torch_lm.forward(ids, torch_lm.empty_cache(2), mask)
    theirs, _ = graph.forward(ids, graph.empty_cache(2), mask)
    np.testing.assert_allclose(ours[:, 1:], theirs[:, 1:], atol=1e-4)


def test_runtime_refuses_a_foreign_tokenizer(exported, tmp_path, small_tokenizer):
    folder, _ = exported
    (tmp_path / "model.onnx").write_bytes((folder / "model.onnx").read_bytes())
    from bardlet.tokenizer import Tokenizer

    Tokenizer.train(["other text entirely " * 50], vocab_size=270).save(tmp_path / "bpe.json")
    with pytest.raises(ValueError, match="not the tokenizer"):
        OnnxLM(tmp_path / "model.onnx")


def test_missing_model_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make pipeline"):
        OnnxLM(tmp_path / "model.onnx")


def test_prompt_longer_than_context_is_refused(exported):
    lm = OnnxLM(exported[0])
    with pytest.raises(ValueError, match="shorten it"):
        list(lm.stream(list(range(70)), 5, Sampling()))


def test_sampling_rules():
    rng = np.random.default_rng(0)
    logits = np.array([1.0, 3.0, 2.0, -1.0])
    assert sample(logits, Sampling(temperature=0), rng) == 1
    assert {sample(logits, Sampling(temperature=1.0, top_k=1), rng) for _ in range(20)} == {1}
    assert {sample(logits, Sampling(temperature=1.0, top_p=0.01), rng) for _ in range(20)} == {1}
    top2 = {sample(logits, Sampling(temperature=2.0, top_k=2), rng) for _ in range(200)}
    assert top2 == {1, 2}
    a = [sample(logits, Sampling(temperature=2.0), np.random.default_rng(7)) for _ in range(5)]
    b = [sample(logits, Sampling(temperature=2.0), np.random.default_rng(7)) for _ in range(5)]
    assert a == b


def test_chat_remembers_turns_and_drops_the_oldest_when_full(exported):
    lm = OnnxLM(exported[0])
    chat = Chat(lm, Sampling(temperature=0), system="Be kind.", max_new_tokens=8)
    first = "".join(chat.reply("Hello"))
    assert chat.messages[-1] == {"role": "assistant", "content": first}
    for _ in range(12):  # 64-token context: old turns must go
        "".join(chat.reply("Tell me more about the king"))
    prompt = render_prompt(lm.tokenizer, chat.messages[:-1], chat.system)
    assert len(prompt) <= lm.block_size
    assert chat.messages[0] != {"role": "user", "content": "Hello"}
    assert chat.messages[-2] == {"role": "user", "content": "Tell me more about the king"}


def test_chat_refuses_a_message_that_cannot_fit(exported):
    chat = Chat(OnnxLM(exported[0]), Sampling(temperature=0))
    with pytest.raises(ValueError, match="please shorten it"):
        list(chat.reply("word " * 200))
    assert chat.messages == []


def test_repl_commands(exported):
    chat = Chat(OnnxLM(exported[0]), Sampling(temperature=0), max_new_tokens=4)
    lines = iter(["hi", "/clear", "/help", "/exit", "never read"])
    out: list[str] = []
    repl(chat, read=lambda _prompt: next(lines), write=out.append)
    text = "".join(out)
    assert "bot> " in text and "(conversation cleared)" in text and "/clear" in text
    assert chat.messages == []
    assert next(lines) == "never read"


def test_runtime_and_chat_do_not_import_torch():
    code = (
        "import sys, bardlet.chat, bardlet.cli, bardlet.server.app\n"
        "import bardlet.runtime.session, bardlet.runtime.generation\n"
        "import bardlet.runtime.conversation, bardlet.runtime.evaluate\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('clean')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bardlet.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_cli_generate_prints_only_the_text_and_is_seeded(exported):
    model = str(exported[0] / "model.onnx")
    args = ["generate", "ROMEO:", "-n", "12", "--seed", "3", "--ignore-end", "--model", model]
    first, again = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    assert first.stdout.strip() and "ROMEO:" not in first.stdout[:6]
    other = run_cli(
        "generate", "ROMEO:", "-n", "12", "--seed", "4", "--ignore-end", "--model", model
    )
    assert other.stdout != first.stdout


def test_cli_reports_a_missing_model_clearly(tmp_path):
    done = run_cli("generate", "hi", "--model", str(tmp_path / "nope.onnx"))
    assert done.returncode == 2
    assert "make pipeline" in done.stderr and "Traceback" not in done.stderr


def test_damaged_model_files_get_one_line_naming_the_file_and_the_fix(exported, tmp_path):
    folder, model = exported
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(folder, onnx_dir)
    (onnx_dir / "model.onnx").write_bytes((folder / "model.onnx").read_bytes()[:5000])
    done = run_cli("generate", "hi", "--model", str(onnx_dir))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "model.onnx is not a readable ONNX model" in done.stderr
    assert "dvc repro export" in done.stderr

    from bardlet.training import checkpoint

    chat = tmp_path / "models/chat"
    checkpoint.save(model, chat, {"tokenizer_hash": "unused"})
    weights = (chat / "model.safetensors").read_bytes()
    for name, damage in (
        ("model.safetensors", weights[: len(weights) // 2]),
        ("config.json", b'{"model": {"n_layer": '),
    ):
        original = (chat / name).read_bytes()
        (chat / name).write_bytes(damage)
        with pytest.raises(ValueError, match=rf"{name} is damaged .*dvc checkout"):
            checkpoint.load(chat)
        (chat / name).write_bytes(original)
    assert checkpoint.load(chat)[1]["tokenizer_hash"] == "unused"
