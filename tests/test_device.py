"""params.yaml `device`: auto picks CUDA, then Apple's MPS, then the CPU; a named device that
is not there stops with a message; the precision follows the device. This machine has only a
CPU, so the other branches are tested by making PyTorch report a GPU (the hardware is the one
thing that cannot exist here); MPS training runs for real where there is one."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import REPO

from bardlet.config import load_params
from bardlet.defaults import UserError
from bardlet.training import distributed


def machine(monkeypatch, cuda: bool, mps: bool, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    machine(monkeypatch, cuda, mps)
    assert distributed.choose_device("auto") == expected
    assert distributed.choose_device("cpu") == "cpu"


@pytest.mark.parametrize("wanted", ["cuda", "mps"])
def test_a_device_that_is_not_there_is_an_error_not_a_silent_cpu_run(monkeypatch, wanted):
    machine(monkeypatch, cuda=False, mps=False)
    with pytest.raises(UserError, match=f"device is {wanted} but this machine has no"):
        distributed.choose_device(wanted)
    with pytest.raises(UserError, match="not one of auto, cuda, mps, cpu"):
        distributed.choose_device("tpu")


@pytest.mark.parametrize(
    ("device", "bf16", "expected"),
    [
        ("cuda", True, torch.bfloat16),
        ("cuda", False, None),
        ("mps", True, None),
        ("cpu", True, None),
    ],
)
def test_precision_follows_the_device(monkeypatch, device, bf16, expected):
    machine(monkeypatch, cuda=True, mps=True, bf16=bf16)
    assert distributed.autocast_dtype(torch.device(device)) == expected


def test_the_stage_flag_overrides_params(monkeypatch):
    from stages.outputs import training_device

    machine(monkeypatch, cuda=False, mps=False)
    params = load_params(REPO / "params.yaml")
    assert params.device == "auto"
    monkeypatch.setattr(sys, "argv", ["stages.pretrain"])
    assert training_device(params) == torch.device("cpu")
    wants_gpu = params.model_copy(update={"device": "cuda"})
    with pytest.raises(UserError, match="device is cuda"):
        training_device(wants_gpu)
    monkeypatch.setattr(sys, "argv", ["stages.pretrain", "--device", "cpu"])
    assert training_device(wants_gpu) == torch.device("cpu")


def test_params_refuse_an_unknown_device(tmp_path):
    import yaml

    from bardlet.config import ParamsError

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw | {"device": "gpu"}))
    with pytest.raises(ParamsError, match="device"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no Apple MPS device here")
def test_training_steps_run_on_mps():  # pragma: no cover - runs on Apple silicon only
    from bardlet.model import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)).to("mps")
    x = torch.randint(0, 64, (2, 16), device="mps")
    _, loss, _ = model(x, targets=x)
    assert loss is not None
    loss.backward()
    assert torch.isfinite(loss).item()
