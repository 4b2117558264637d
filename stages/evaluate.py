"""Stage `evaluate`: how good is the chat model? -> reports/metrics.json, reports/samples.md

- The corpus's val split (Tiny Shakespeare; metric key `shakespeare`): loss, perplexity, bits
  per byte over every validation token.
- The chats' val split (OASST1; key `oasst`): the same on assistant tokens only, and ROUGE-L
  of greedy replies to each conversation's first question against its first answer.
- Samples: fixed prompts answered greedily and sampled (seeded), for a human to read.

Replies go through the runtime's one generation path (its sampler, stop ids and text pieces),
with the PyTorch model in the exported graph's place: the export stage checks that the graph
gives the same logits (parity), so they are what `bardlet chat` and `bardlet generate --chat`
would say, without exporting the model a second time here.
"""

import json

import numpy as np
import torch

from bardlet import tracking
from bardlet.config import load_params
from bardlet.data.chat_template import render_prompt
from bardlet.data.loaders import PackedConversations, TokenWindows
from bardlet.data.shards import read_tokens
from bardlet.evaluation import measure, rouge_l
from bardlet.files import write_json_atomic, write_text_atomic
from bardlet.model import GPT
from bardlet.runtime.generation import Generation
from bardlet.runtime.sampling import Sampling
from bardlet.runtime.session import CachedLM
from bardlet.tokenizer import AnyTokenizer, load_tokenizer
from bardlet.training import checkpoint
from stages.paths import CHAT_MODEL, CHATS, REPORTS, SHARDS, TOKENIZER_DIR

GREEDY = Sampling(temperature=0)


class TorchLM(CachedLM):
    """The PyTorch model behind the runtime's generation path: its cache path is written as
    the ONNX operators the graph runs (see GPT.forward), so each step computes what the
    graph computes."""

    def __init__(self, model: GPT, tokenizer: AnyTokenizer) -> None:
        super().__init__(model.config.to_dict(), tokenizer)
        self.model = model.cpu().eval()

    @torch.no_grad()
    def forward(
        self, input_ids: np.ndarray, past: list[np.ndarray], mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        cache = [torch.from_numpy(a) for a in past]
        pairs = list(zip(cache[::2], cache[1::2], strict=True))
        key_mask = None if mask is None else torch.from_numpy(mask)
        logits, _, present = self.model(torch.from_numpy(input_ids), past=pairs, key_mask=key_mask)
        return logits.numpy(), [t.numpy() for pair in present for t in pair]


def reply(
    lm: CachedLM, prompt: str, settings: Sampling, max_new_tokens: int, system: str | None = None
) -> str:
    """The chat model's answer to one user message (after `system`, if given). A question too
    long for the context keeps its last tokens, so every conversation is scored."""
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    ids = render_prompt(lm.tokenizer, messages)
    ids = ids[-(lm.block_size - max_new_tokens) :]
    stop_ids = sorted(lm.tokenizer.special_tokens.values())
    return Generation(lm, ids, max_new_tokens, settings, stop_ids).text()


def main() -> None:
    params = load_params()
    settings = params.evaluate
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    model, info = checkpoint.load(CHAT_MODEL)
    block = model.config.block_size
    byte_lengths = np.array(tokenizer.byte_lengths())

    val_text = read_tokens(SHARDS / "pretrain/val", tokenizer.hash)[0]
    windows = TokenWindows(val_text, block, batch_size=16, seed=0).sequential()
    shakespeare = measure(model, windows, byte_lengths, max_batches=settings.eval_batches)
    chats = PackedConversations.from_split(SHARDS / "sft/val", tokenizer, block, 16, 0)
    oasst = measure(model, chats.sequential(), byte_lengths, max_batches=settings.eval_batches)

    lm = TorchLM(model, tokenizer)
    conversations = [
        json.loads(line)["messages"]
        for line in (CHATS / "val.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    scores = []
    for messages in conversations[: settings.rouge_conversations]:
        system = messages.pop(0)["content"] if messages[0]["role"] == "system" else None
        question, answer = messages[0]["content"], messages[1]["content"]
        greedy = reply(lm, question, GREEDY, settings.max_new_tokens, system)
        scores.append(rouge_l(greedy, answer))
    oasst["rouge_l"] = sum(scores) / max(len(scores), 1)

    sampled = settings.sampling()
    lines = ["# Samples from the chat model", ""]
    for prompt in settings.prompts:
        lines += [
            f"## {prompt}",
            "",
            "**greedy:**",
            "",
            reply(lm, prompt, GREEDY, settings.max_new_tokens).strip() or "(empty)",
            "",
            f"**sampled** (temperature {sampled.temperature}, top-k {sampled.top_k}, "
            f"seed {sampled.seed}):",
            "",
            reply(lm, prompt, sampled, settings.max_new_tokens).strip() or "(empty)",
            "",
        ]

    metrics = {"shakespeare": shakespeare, "oasst": oasst}
    write_json_atomic(REPORTS / "metrics.json", metrics)
    write_text_atomic(REPORTS / "samples.md", "\n".join(lines))
    print(json.dumps(metrics, indent=2))
    # Attach to the sft run that made the chat model.
    with tracking.run("evaluate", run_id=info.get("run_id"), tokenizer_hash=tokenizer.hash):
        tracking.log_metrics(tracking.flatten({"eval": metrics}, sep="/"))
        tracking.log_artifact(REPORTS / "metrics.json", "reports")
        tracking.log_artifact(REPORTS / "samples.md", "reports")


if __name__ == "__main__":
    main()
