"""Knowledge distillation: a student learns from a teacher's whole next-token distribution,
not only from the one token the text has next (Hinton et al., 2015).

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy

`_T` is a softmax at temperature T: above 1 it lifts the teacher's smaller probabilities
(which tokens it thinks are nearly as likely), and T^2 keeps that term's gradients as large
as at T = 1. alpha = 0 is plain training. The teacher runs on the same batch, in the same
step, without gradients (bench/distill.py measured this against reading cached top-k
logits: see BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bardlet.model import GPT


@dataclass
class Teacher:
    """What the training loop needs to distill: a frozen model that shares the student's
    tokenizer, and the loss's two settings."""

    model: GPT
    alpha: float
    temperature: float

    def __post_init__(self) -> None:
        self.model.eval().requires_grad_(False)  # no dropout, no gradients, never trained

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        logits, _, _ = self.model(inputs)
        return logits


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The loss above, averaged over the positions that have a target (not -1)."""
    vocab = student_logits.shape[-1]
    student = student_logits.float().reshape(-1, vocab)
    flat_targets = targets.reshape(-1)
    ce = F.cross_entropy(student, flat_targets, ignore_index=-1, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    keep = (flat_targets != -1).float()  # weights, not a boolean index: no copy of the logits
    log_q = F.log_softmax(student / temperature, dim=-1)
    with torch.no_grad():  # the teacher is fixed: no gradient flows into it
        log_p = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
        p = log_p.exp()
        p_log_p = (p * log_p).sum(-1)
    kl = p_log_p - (p * log_q).sum(-1)  # KL(teacher || student) at each position
    kl = (kl * keep).sum() / keep.sum().clamp(min=1)
    return alpha * temperature**2 * kl + (1 - alpha) * ce
