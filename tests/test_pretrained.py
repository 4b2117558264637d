"""GPT.from_pretrained: Hugging Face GPT-2 and Llama folders load into our model with the
same logits as transformers (random small models made here: nothing is downloaded)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bardlet.model import GPT, PretrainedError

transformers = pytest.importorskip("transformers")

VOCAB = 101


def gpt2(tmp_path, **config):
    torch.manual_seed(0)
    shape = dict(vocab_size=VOCAB, n_positions=48, n_embd=32, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**shape, **config})).eval()
    return model, tmp_path / "gpt2"


def llama(tmp_path, **config):
    torch.manual_seed(0)
    shape = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48,
        rope_theta=500.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**shape, **config})).eval()
    return model, tmp_path / "llama"


def randomize(model) -> None:
    """Norm gains and biases start at 1 and 0: make them random so a wrong mapping shows."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                param.normal_(0.5 if name.endswith("weight") else 0.0, 0.2)


def save(model, folder, safe=True) -> None:
    """save_pretrained; safe=False: the older pytorch_model.bin instead (a pickle of tensors,
    as transformers 4 wrote it; transformers 5 writes safetensors only)."""
    model.save_pretrained(folder)
    if not safe:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()


def logits_match(theirs, folder, ids) -> GPT:
    ours = GPT.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = theirs(ids).logits
        got, _, _ = ours(ids)
        # and through the KV cache, a token at a time after a prompt
        logits, _, past = ours(ids[:, :5])
        steps = [logits]
        for t in range(5, ids.shape[1]):
            logits, _, past = ours(ids[:, t : t + 1], past=past)
            steps.append(logits)
    assert (got - expected).abs().max() < 1e-4
    assert (torch.cat(steps, dim=1) - expected).abs().max() < 1e-4
    return ours


@pytest.mark.parametrize("make", [gpt2, llama])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_logits_equal_transformers(tmp_path, make, safe):
    theirs, folder = make(tmp_path)
    randomize(theirs)
    save(theirs, folder, safe)
    ids = torch.randint(0, VOCAB, (2, 17))
    ours = logits_match(theirs, folder, ids)
    assert ours.num_params() == theirs.num_parameters()


@pytest.mark.parametrize("make", [gpt2, llama])
def test_a_longer_context_is_capped_to_the_block_size_asked_for(tmp_path, make):
    """The pretrain stage loads a checkpoint with params.yaml's model.block_size: GPT-2's
    learned positions are cut to it, and the logits within it are transformers' own."""
    theirs, folder = make(tmp_path)
    randomize(theirs)
    save(theirs, folder)
    ours = GPT.from_pretrained(folder, block_size=16).eval()
    assert ours.config.block_size == 16
    ids = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        assert (ours(ids)[0] - theirs(ids).logits).abs().max() < 1e-4
        with pytest.raises(ValueError, match="exceed the model's context of 16"):
            ours(torch.randint(0, VOCAB, (1, 17)))


def test_llama_with_tied_embeddings_and_plain_attention(tmp_path):
    theirs, folder = llama(tmp_path, tie_word_embeddings=True, num_key_value_heads=4)
    randomize(theirs)
    theirs.save_pretrained(folder)
    ours = logits_match(theirs, folder, torch.randint(0, VOCAB, (1, 12)))
    assert ours.lm_head.weight is ours.tok_emb.weight


def test_a_bin_file_with_code_in_it_is_refused(tmp_path):
    """pytorch_model.bin is a pickle: torch's weights-only loader refuses anything that is not
    tensors, so a file that would run code on load is reported, never executed."""
    theirs, folder = gpt2(tmp_path)
    save(theirs, folder, safe=False)

    class Payload:
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w').write('x')",))

    torch.save({"transformer.wte.weight": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(PretrainedError, match="cannot be read safely"):
        GPT.from_pretrained(folder)
    assert not (tmp_path / "PWNED").exists() and not (folder / "PWNED").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: (f / "config.json").unlink(), "has no config.json"),
        (lambda f: (f / "config.json").write_text("{"), "not valid JSON"),
        (lambda f: edit(f, model_type="bert"), "model_type 'bert' is not supported"),
        (lambda f: edit(f, rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope scaling"),
        (lambda f: edit(f, intermediate_size=80), "config.json and the weights disagree"),
        (lambda f: (f / "model.safetensors").unlink(), "no model.safetensors"),
    ],
)
def test_bad_folders_get_one_line_naming_the_problem(tmp_path, change, message):
    theirs, folder = llama(tmp_path)
    theirs.save_pretrained(folder)
    change(folder)
    with pytest.raises(PretrainedError, match=message) as error:
        GPT.from_pretrained(folder)
    assert "\n" not in str(error.value)


def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    theirs, folder = gpt2(tmp_path)
    theirs.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    del weights["transformer.h.1.mlp.c_fc.bias"]
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(PretrainedError, match="h.1.mlp.c_fc.bias"):
        GPT.from_pretrained(folder)


def edit(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_default_design_is_unchanged():
    """bardlet's own model keeps its parameter names and count (the Llama column)."""
    from bardlet.model import GPTConfig

    torch.manual_seed(0)
    config = GPTConfig(97, 32, 2, 2, 32, 8 / 3, 0.0, True)
    names = set(GPT(config).state_dict())
    assert not any("bias" in n or "pos_emb" in n for n in names)
    assert {"blocks.0.attn.qkv.weight", "blocks.0.mlp.gate.weight"} <= names
    assert np.isclose(
        GPT(config).num_params(), 97 * 32 + 2 * (2 * 32 + 32 * 96 + 32 * 32 + 3 * 32 * 96) + 32
    )


@pytest.mark.parametrize("make", [gpt2, llama])
def test_both_designs_export_to_the_kv_cache_graph(tmp_path, make):
    """Our ONNX graph for either design: PyTorch and onnxruntime agree token by token, and
    the runtime's cache has the graph's key/value heads (2 of 4 for the GQA Llama)."""
    from bardlet.export import check_parity, export_onnx
    from bardlet.runtime.session import cache_shape, open_session

    theirs, folder = make(tmp_path)
    randomize(theirs)
    theirs.save_pretrained(folder)
    model = GPT.from_pretrained(folder)
    onnx_path = tmp_path / "model.onnx"
    export_onnx(model, onnx_path, opset=23, metadata={})
    assert check_parity(model, onnx_path, prompt=[1, 5, 9, 13], steps=6) < 1e-4
    session, info = open_session(onnx_path)
    heads, head_dim = cache_shape(info["model"])
    assert (heads, head_dim) == (model.config.kv_heads, 8)
    past = [i for i in session.get_inputs() if i.name.startswith("past.")]
    assert len(past) == 4


@pytest.mark.parametrize("make", [gpt2, llama])
def test_a_pretrained_model_with_its_own_tokenizer_chats_from_onnx(tmp_path, make):
    """A Hugging Face model and its tokenizer.json: bardlet's chat markers are added (the
    embedding grows to match), the folder exports, and the torch-free runtime replies."""
    from test_tokenizer_pretrained import byte_level

    from bardlet.data.chat_template import render_prompt
    from bardlet.export import write_model_folder
    from bardlet.runtime.generation import Generation
    from bardlet.runtime.sampling import Sampling
    from bardlet.runtime.session import OnnxLM

    tokenizer = byte_level().with_chat_tokens()
    plain = tokenizer.vocab_size - 6
    theirs, folder = make(tmp_path)
    theirs.resize_token_embeddings(plain)
    theirs.save_pretrained(folder)
    model = GPT.from_pretrained(folder)
    before, _, _ = model(torch.tensor([[1, 2, 3]]))
    model.resize_vocab(tokenizer.vocab_size)
    after, _, _ = model(torch.tensor([[1, 2, 3]]))
    assert after.shape[-1] == tokenizer.vocab_size
    assert torch.allclose(before, after[..., :plain], atol=1e-5)  # old tokens: the same model

    out = tmp_path / "onnx"
    write_model_folder(model.eval(), tokenizer, out, opset=23, styles={})
    assert (out / "tokenizer.json").is_file() and not (out / "bpe.json").exists()
    lm = OnnxLM(out)
    prompt = render_prompt(lm.tokenizer, [{"role": "user", "content": "Hello there"}])
    reply = Generation(lm, prompt, 12, Sampling(temperature=0.0), [tokenizer.special_id("<|end|>")])
    text = reply.text()
    assert reply.usage()["completion_tokens"] >= 1 and isinstance(text, str)
    # the standalone script (numpy + onnxruntime + tokenizers) says what the runtime says
    specials = sorted(tokenizer.special_tokens.values())
    expected = Generation(lm, prompt, 12, Sampling(temperature=0.0), specials).text()
    script = Path(__file__).resolve().parents[1] / "scripts/onnx_infer.py"
    args = ["--model", str(out), "--chat", "--prompt", "Hello there", "-t", "0", "-n", "12"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected.strip()
    # the runtime's greedy tokens are the PyTorch model's
    ids = list(prompt)
    with torch.no_grad():
        for token in reply.tokens:
            logits, _, _ = model(torch.tensor([ids]))
            assert int(logits[0, -1].argmax()) == token
            ids.append(token)


def test_a_hub_init_is_fetched_once_with_checksums(tmp_path, monkeypatch):
    """The Hub itself cannot be reached here: snapshot_download is replaced by a copy of a
    local folder (the only stand-in in this file). The rest is real: the pinned revision is
    passed on, every file's sha256 is recorded, a folder that still matches is not fetched
    again, and a changed file is."""
    import huggingface_hub

    from bardlet.data.sources import CHECKSUMS, fetch_pretrained

    theirs, source = gpt2(tmp_path)
    theirs.save_pretrained(source)
    calls = []

    def snapshot_download(repo_id, revision, local_dir, allow_patterns):
        calls.append((repo_id, revision))
        import shutil

        shutil.copytree(source, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    dest = tmp_path / "hub" / "openai-community--gpt2@abc123"
    fetch_pretrained("openai-community/gpt2", "abc123", dest)
    sums = json.loads((dest / CHECKSUMS).read_text())
    assert calls == [("openai-community/gpt2", "abc123")]
    assert {"config.json", "model.safetensors"} <= set(sums)
    fetch_pretrained("openai-community/gpt2", "abc123", dest)
    assert len(calls) == 1  # checksums match: not fetched again
    (dest / "config.json").write_text("{}")
    fetch_pretrained("openai-community/gpt2", "abc123", dest)
    assert len(calls) == 2  # changed since: fetched again
    assert GPT.from_pretrained(dest).config.n_layer == 2
