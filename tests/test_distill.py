"""Distillation's loss and its place in the training loop (bardlet/training/distill.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bardlet.config import TrainParams
from bardlet.data.loaders import TokenWindows
from bardlet.model import GPT, GPTConfig
from bardlet.training.distill import Teacher, distillation_loss
from bardlet.training.loop import train

VOCAB = 11


def logits(seed: int, shape=(2, 5, VOCAB)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 10**6), temperature=st.floats(0.5, 5.0), masked=st.integers(0, 4))
def test_at_alpha_zero_it_is_cross_entropy(seed, temperature, masked):
    student, teacher = logits(seed), logits(seed + 1)
    targets = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(seed))
    targets[0, :masked] = -1
    ce = F.cross_entropy(student.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-1)
    loss = distillation_loss(student, teacher, targets, 0.0, temperature)
    assert loss.item() == pytest.approx(ce.item(), rel=1e-6)


@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 10**6), temperature=st.floats(0.5, 5.0))
def test_at_alpha_one_the_teachers_distribution_minimises_it(seed, temperature):
    """KL(teacher || student) is 0 at the teacher's own logits (any shift of them: the same
    distribution) and its gradient vanishes there; any other student scores higher."""
    teacher, other = logits(seed), logits(seed + 1)
    targets = torch.zeros(2, 5, dtype=torch.long)
    at_teacher = (teacher + 7.0).requires_grad_()
    loss = distillation_loss(at_teacher, teacher, targets, 1.0, temperature)
    loss.backward()
    assert abs(loss.item()) < 1e-5
    assert at_teacher.grad is not None and at_teacher.grad.abs().max().item() < 1e-5
    assert distillation_loss(other, teacher, targets, 1.0, temperature).item() > 1e-3


def test_it_is_the_blend_the_docstring_states():
    student, teacher = logits(1), logits(2)
    targets = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    targets[1, 2] = -1
    keep = targets.reshape(-1) != -1
    alpha, temperature = 0.3, 2.5
    p = F.softmax(teacher.reshape(-1, VOCAB)[keep] / temperature, -1)
    q = F.softmax(student.reshape(-1, VOCAB)[keep] / temperature, -1)
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    ce = F.cross_entropy(student.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-1)
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce
    loss = distillation_loss(student, teacher, targets, alpha, temperature)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def tiny(seed: int, width: int) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=16, n_layer=1, n_head=2, n_embd=width, block_size=8, dropout=0.0,
                       mlp_ratio=2.0, tie_embeddings=True)  # fmt: skip
    return GPT(config)


def settings_for(steps: int) -> TrainParams:
    return TrainParams(
        max_steps=steps, batch_size=4, grad_accum=1, learning_rate=0.01, schedule="cosine",
        decay_fraction=0.2, min_lr_ratio=0.1, warmup_steps=0, weight_decay=0.0, grad_clip=1.0,
        label_smoothing=0.0, ema_decay=0.0, eval_interval=steps, eval_batches=1,
        log_interval=steps, keep_best=False, checkpoint_interval=steps, keep_checkpoints=1,
        resume="never", seed=0, threads=1,
    )  # fmt: skip


def test_a_student_trained_on_the_teacher_alone_comes_to_agree_with_it():
    """alpha 1: the text's next tokens play no part; the student moves towards the teacher
    (KL falls), and the teacher is left as it was."""
    tokens = np.random.default_rng(0).integers(0, 16, 2000)
    data = TokenWindows(tokens, 8, 4, 0)
    teacher_model = tiny(1, 16)
    with torch.no_grad():  # a confident teacher, unlike the uniform random text
        teacher_model.lm_head.weight.mul_(8)
    before = {k: v.clone() for k, v in teacher_model.state_dict().items()}
    student = tiny(2, 8)
    x = torch.from_numpy(data.batch(0)[0])

    def kl() -> float:
        with torch.no_grad():
            s, t = student.eval()(x)[0], teacher_model.eval()(x)[0]
            return distillation_loss(s, t, torch.zeros_like(x), 1.0, 1.0).item()

    start = kl()
    teacher = Teacher(teacher_model, alpha=1.0, temperature=1.0)
    train(student, data, [data.batch(10**6)], settings_for(60), np.ones(16), log=lambda _: None,
          teacher=teacher)  # fmt: skip
    assert kl() < start / 2
    assert all(torch.equal(before[k], v) for k, v in teacher_model.state_dict().items())
    assert not any(p.requires_grad for p in teacher_model.parameters())


def test_without_a_teacher_and_at_alpha_zero_training_is_the_same():
    """alpha 0 is plain training, to the bit: the teacher's forward changes nothing else."""
    tokens = np.random.default_rng(0).integers(0, 16, 2000)
    runs = []
    for teacher in (None, Teacher(tiny(1, 16), alpha=0.0, temperature=2.0)):
        student = tiny(2, 8)
        data = TokenWindows(tokens, 8, 4, 0)
        train(student, data, [data.batch(10**6)], settings_for(5), np.ones(16),
              log=lambda _: None, teacher=teacher)  # fmt: skip
        runs.append(student.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert math.isfinite(float(runs[0]["lm_head.weight"].sum()))
