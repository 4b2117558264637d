"""Resumable training: SIGKILL at a random step, resume, and end bit-identical; SIGTERM saves."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bardlet.config import TrainParams
from bardlet.model import GPT, GPTConfig
from bardlet.training import checkpoint
from bardlet.training.loop import learning_rate, train
from tests.conftest import train_params

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, numpy as np, torch
from pathlib import Path
from safetensors.torch import save_model
from bardlet.config import TrainParams, load_params
from bardlet.data.loaders import TokenWindows
from bardlet.model import GPT, GPTConfig
from bardlet.training.distill import Teacher
from bardlet.training.loop import train

out = Path(sys.argv[1])
base = load_params("PARAMS_YAML").sft.model_dump(exclude={"lora"})
torch.set_num_threads(1)
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1, mlp_ratio=8 / 3, tie_embeddings=True))
tokens = np.random.default_rng(0).integers(0, 64, 5000).astype(np.uint16)
data = TokenWindows(tokens, 16, 4, seed=1)
val = [data.batch(10_000)]
params = TrainParams(**{**base, **dict(max_steps=40, batch_size=4, learning_rate=1e-2,
                     warmup_steps=3, eval_interval=10, eval_batches=1, log_interval=1,
                     checkpoint_interval=3, keep_checkpoints=2, threads=1, seed=5,
                     keep_best=sys.argv[4] == "best", ema_decay=float(sys.argv[3]))})
step_delay = float(sys.argv[2])

class Slow:  # gives the test time to kill us mid-run
    def batch(self, step):
        import time; time.sleep(step_delay)
        return data.batch(step)

teacher = None
if sys.argv[5] == "teacher":  # distillation: a fixed teacher, its own seed
    torch.manual_seed(1)
    teacher = Teacher(GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=64,
                      dropout=0.0, mlp_ratio=2, tie_embeddings=True)), alpha=0.5, temperature=2.0)
train(model, Slow(), val, params, np.ones(64, dtype=np.int64),
      checkpoint_dir=out / "ckpt", log=lambda line: print(line, flush=True), teacher=teacher)
save_model(model, str(out / "final.safetensors"))
print("finished", flush=True)
"""


def launch(
    tmp: Path,
    folder: str,
    delay: float = 0.0,
    ema: float = 0.0,
    keep: str = "last",
    teacher: str = "none",
) -> subprocess.Popen:
    script = tmp / "train_script.py"
    script.write_text(SCRIPT.replace("PARAMS_YAML", str(REPO / "params.yaml")))
    (tmp / folder).mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp / folder), str(delay), str(ema), keep, teacher],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )


def wait_for_step(process: subprocess.Popen, step: int, timeout: float = 120) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(f"step {step:>5}/"):
            return seen
    raise AssertionError(f"never reached step {step}:\n{''.join(seen)}")


def final_weights(tmp: Path, folder: str) -> dict[str, torch.Tensor]:
    return load_file(str(tmp / folder / "final.safetensors"))


# With ema_decay the moving average is part of the state too (and it is what the run returns);
# with keep_best, the best weights so far are as well. Distillation (a teacher) resumes the same.
@pytest.mark.parametrize(
    ("ema", "keep", "teacher"),
    # Without the moving average (0.0) only with a teacher: the plain run is that run less the
    # teacher's parts, which the other two cover.
    [(0.9, "last", "none"), (0.9, "best", "none"), (0.0, "last", "teacher")],
)
def test_sigkill_then_resume_is_bit_identical(tmp_path, ema, keep, teacher):
    reference = launch(tmp_path, "reference", ema=ema, keep=keep, teacher=teacher)
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out

    # Random, but leaving the victim at least 10 slowed steps (0.5 s) to be killed in.
    kill_at = random.Random().randint(4, 30)
    victim = launch(tmp_path, "killed", delay=0.05, ema=ema, keep=keep, teacher=teacher)
    wait_for_step(victim, kill_at)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL, f"killed at {kill_at}"
    assert not (tmp_path / "killed" / "final.safetensors").exists(), f"killed at {kill_at}"

    resumed = launch(tmp_path, "killed", ema=ema, keep=keep, teacher=teacher)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, f"killed at {kill_at}: {out}"
    assert "resuming from" in out or kill_at < 3, out
    expected, actual = final_weights(tmp_path, "reference"), final_weights(tmp_path, "killed")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs (killed at {kill_at})"
    kept = checkpoint.checkpoints(tmp_path / "killed" / "ckpt")
    assert [p.name for p in kept] == ["step-000039", "step-000040"] or len(kept) == 2


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    process = launch(tmp_path, "run", delay=0.05)
    wait_for_step(process, 5)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM: checkpoint saved at step" in out and "Traceback" not in out
    saved = checkpoint.checkpoints(tmp_path / "run" / "ckpt")
    assert saved, "no checkpoint written"
    stopped_at = int(out.split("checkpoint saved at step ")[1].split(";")[0])
    assert saved[-1].name == f"step-{stopped_at:06d}"


def tiny_params(**overrides) -> TrainParams:
    base = dict(
        max_steps=6,
        batch_size=2,
        learning_rate=1e-2,
        eval_interval=3,
        eval_batches=1,
        log_interval=3,
        checkpoint_interval=2,
        keep_checkpoints=2,
        warmup_steps=0,
    )
    return train_params(**{**base, **overrides})


def test_checkpoints_from_other_settings_are_not_resumed(tmp_path):
    import numpy as np

    from bardlet.data.loaders import TokenWindows

    data = TokenWindows(np.arange(500, dtype=np.uint16) % 50, 8, 2, seed=0)
    ones = np.ones(50, dtype=np.int64)

    def model() -> GPT:
        torch.manual_seed(0)
        return GPT(
            GPTConfig(
                vocab_size=50,
                block_size=8,
                n_layer=1,
                n_head=1,
                n_embd=8,
                mlp_ratio=8 / 3,
                dropout=0.0,
                tie_embeddings=True,
            )
        )

    logs: list[str] = []
    train(model(), data, [data.batch(99)], tiny_params(), ones, tmp_path, log=logs.append)
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    logs.clear()
    train(
        model(),
        data,
        [data.batch(99)],
        tiny_params(learning_rate=2e-2),
        ones,
        tmp_path,
        log=logs.append,
    )
    assert any("starting afresh" in line for line in logs)
    assert not any("resuming" in line for line in logs)
    logs.clear()
    train(
        model(),
        data,
        [data.batch(99)],
        tiny_params(learning_rate=2e-2),
        ones,
        tmp_path,
        log=logs.append,
    )
    assert any("resuming from" in line for line in logs)
    # Settings that only change how often it logs, measures or saves keep the checkpoints.
    for cosmetic in (
        {"log_interval": 1},
        {"eval_interval": 2},
        {"eval_batches": 3},
        {"checkpoint_interval": 5},
    ):
        logs.clear()
        settings = tiny_params(learning_rate=2e-2, **cosmetic)
        train(model(), data, [data.batch(99)], settings, ones, tmp_path, log=logs.append)
        assert any("resuming from" in line for line in logs), cosmetic


def test_training_stops_at_the_first_non_finite_loss_and_keeps_the_last_good_checkpoint(
    tmp_path,
):
    import math

    import numpy as np

    from bardlet.data.loaders import TokenWindows
    from bardlet.training.loop import Diverged

    data = TokenWindows(np.arange(500, dtype=np.uint16) % 50, 8, 2, seed=0)
    torch.manual_seed(0)
    network = GPT(
        GPTConfig(
            vocab_size=50,
            block_size=8,
            n_layer=1,
            n_head=1,
            n_embd=8,
            mlp_ratio=8 / 3,
            dropout=0.0,
            tie_embeddings=True,
        )
    )
    calls = {"n": 0}

    def poison(_module, _inputs, output):  # from the 3rd training step on, NaN logits
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 3 else output

    network.lm_head.register_forward_hook(poison)
    settings = tiny_params(eval_interval=100, checkpoint_interval=2)
    with pytest.raises(Diverged, match=r"diverged at step 3: the loss is nan.*learning rate"):
        train(network, data, [data.batch(99)], settings, np.ones(50), tmp_path)
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step-000002"]
    weights = load_file(str(tmp_path / "step-000002" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not math.isnan(float(network.tok_emb.weight.detach().sum()))  # never stepped on NaN


@pytest.mark.parametrize("step,expected", [(0, 0.1), (9, 1.0), (50, 1.0), (79, 1.0), (99, 0.145)])
def test_warmup_stable_decay_schedule(step, expected):
    p = tiny_params(
        max_steps=100,
        warmup_steps=10,
        schedule="wsd",
        decay_fraction=0.2,
        learning_rate=1.0,
        min_lr_ratio=0.1,
    )
    # Stable at the peak until step 80, then linear to 0.1 at step 100.
    assert abs(learning_rate(step, p) - expected) < 1e-9
