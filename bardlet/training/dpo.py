"""Learning from preferences: direct preference optimisation (DPO, Rafailov et al., 2023).

A preference pair is a conversation so far, a reply people preferred (`chosen`) and one they
liked less (`rejected`). DPO needs no reward model: the policy's own log-probabilities, next
to those of a frozen copy of where it started (the reference), are an implicit reward

    reward(reply) = beta * (log pi(reply | prompt) - log ref(reply | prompt))

and the loss asks that the chosen reply's reward beat the rejected one's:

    loss = -log sigmoid(reward(chosen) - reward(rejected))

It is log 2 where the policy still equals the reference, and falls as the policy moves
probability towards the chosen replies (more than the reference had) and away from the
rejected ones. beta says how far from the reference that may go. Log-probabilities are
summed over the reply's tokens only (and its closing <|end|>), never the prompt's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bardlet.config import DpoParams
from bardlet.data.chat_template import render_prompt
from bardlet.model import GPT
from bardlet.tokenizer import AnyTokenizer
from bardlet.training.loop import make_optimizer

# One side of a pair: token ids and a mask that is True on the reply's tokens.
Sequence_ = tuple[list[int], list[bool]]
Pair = tuple[Sequence_, Sequence_]  # (chosen, rejected)


def encode_pair(tokenizer: AnyTokenizer, pair: dict[str, Any], block_size: int) -> Pair | None:
    """A pair as token ids: the chat template's prompt, then each reply and <|end|>; None when
    the prompt leaves fewer than 8 positions of the context for the reply. A longer reply is
    cut at the context's end (the comparison covers its first tokens)."""
    prompt = render_prompt(tokenizer, pair["prompt"])
    if len(prompt) > block_size - 8:
        return None
    end = tokenizer.special_id("<|end|>")
    sides = []
    for reply in (pair["chosen"], pair["rejected"]):
        ids = (prompt + tokenizer.encode(reply) + [end])[: block_size + 1]
        sides.append((ids, [False] * len(prompt) + [True] * (len(ids) - len(prompt))))
    return sides[0], sides[1]


def _batch(sides: Sequence[Sequence_], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences padded to one length: ids (padding 0) and the loss mask (padding False)."""
    width = max(len(ids) for ids, _ in sides)
    ids = torch.zeros((len(sides), width), dtype=torch.long)
    mask = torch.zeros((len(sides), width), dtype=torch.bool)
    for row, (tokens, reply) in enumerate(sides):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(reply)] = torch.tensor(reply)
    return ids.to(device), mask.to(device)


def reply_logps(model: GPT, sides: Sequence[Sequence_], device: torch.device) -> torch.Tensor:
    """log p(reply | prompt) of each sequence: the log-probabilities of its reply tokens,
    summed (each token predicted from everything before it)."""
    ids, mask = _batch(sides, device)
    logits, _, _ = model(ids[:, :-1])
    logps = F.log_softmax(logits.float(), dim=-1)
    per_token = logps.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (per_token * mask[:, 1:]).sum(dim=-1)


def dpo_loss(
    policy: tuple[torch.Tensor, torch.Tensor],
    reference: tuple[torch.Tensor, torch.Tensor],
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean DPO loss of (chosen, rejected) log-probs under the policy and the reference,
    and each pair's reward margin reward(chosen) - reward(rejected)."""
    margin = beta * ((policy[0] - reference[0]) - (policy[1] - reference[1]))
    return -F.logsigmoid(margin).mean(), margin


def _logps(
    model: GPT, pairs: Sequence[Pair], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = reply_logps(model, [c for c, _ in pairs], device)
    return chosen, reply_logps(model, [r for _, r in pairs], device)


@torch.no_grad()
def preference_metrics(
    model: GPT, reference: GPT, pairs: Sequence[Pair], beta: float, device: torch.device
) -> dict[str, float]:
    """On held-out pairs: the DPO loss, how often the implicit reward prefers the chosen reply
    (accuracy; a tie counts half, so the reference itself scores 0.5) and the mean margin."""
    was_training = model.training
    model.eval()
    margins, losses = [], []
    for start in range(0, len(pairs), 8):
        chunk = pairs[start : start + 8]
        loss, margin = dpo_loss(
            _logps(model, chunk, device), _logps(reference, chunk, device), beta
        )
        margins.append(margin)
        losses.append(float(loss) * len(chunk))
    model.train(was_training)
    margin = torch.cat(margins)
    wins = (margin > 0).float() + 0.5 * (margin == 0).float()
    return {
        "loss": sum(losses) / len(pairs),
        "accuracy": float(wins.mean()),
        "margin": float(margin.mean()),
    }


def train_dpo(
    model: GPT,
    reference: GPT,
    pairs: Sequence[Pair],
    params: DpoParams,
    log: Callable[[str], None] = print,
    report: Callable[[dict[str, float], int], None] = lambda _metrics, _step: None,
) -> None:
    """`params.max_steps` steps of DPO on `pairs`, batch_size pairs each, drawn by a seeded
    generator (the same run gives the same weights); the learning rate warms up linearly, then
    holds. `reference` is frozen: only `model` changes."""
    device = next(model.parameters()).device
    torch.manual_seed(params.seed)
    reference.eval().requires_grad_(False)
    optimizer = make_optimizer(model, params, device)
    draw = np.random.default_rng(params.seed)
    model.train()
    for step in range(params.max_steps):
        lr = params.learning_rate * min(1.0, (step + 1) / max(params.warmup_steps, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        chosen = [pairs[i] for i in draw.choice(len(pairs), params.batch_size)]
        with torch.no_grad():
            ref = _logps(reference, chosen, device)
        loss, margin = dpo_loss(_logps(model, chosen, device), ref, params.beta)
        loss.backward()
        value = loss.detach().item()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip or math.inf)
        if not (math.isfinite(value) and math.isfinite(float(norm))):
            raise FloatingPointError(f"dpo diverged at step {step + 1}: lower dpo.learning_rate")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        metrics = {"dpo/loss": value, "dpo/margin": float(margin.detach().mean()), "dpo/lr": lr}
        report(metrics, step + 1)
        if (step + 1) % params.log_interval == 0 or step + 1 == params.max_steps:
            log(f"dpo step {step + 1}/{params.max_steps} | loss {value:.4f} | "
                f"margin {metrics['dpo/margin']:+.4f}")  # fmt: skip
    model.eval()
