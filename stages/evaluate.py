"""Stage `evaluate`: how good is the chat model? -> reports/metrics.json, reports/samples.md

- Tiny Shakespeare val: loss, perplexity, bits per byte over every validation token.
- OASST1 val: the same on assistant tokens only, and ROUGE-L of greedy replies against the
  reference replies.
- Samples: fixed prompts answered greedily and sampled (seeded), for a human to read.
"""

import json

import torch

from bardlet import tracking
from bardlet.config import load_params
from bardlet.data.chat_template import render_prompt
from bardlet.data.loaders import PackedConversations, TokenWindows
from bardlet.data.shards import concat_tokens, read_split
from bardlet.evaluation import measure, rouge_l, token_byte_lengths
from bardlet.files import write_json_atomic
from bardlet.model import GPT
from bardlet.tokenizer import Tokenizer
from bardlet.training import checkpoint
from stages.paths import CHAT_MODEL, OASST, REPORTS, SHARDS, TOKENIZER


def reply(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    temperature: float,
    top_k: int,
    max_new_tokens: int,
    generator: torch.Generator | None = None,
) -> str:
    ids = render_prompt(tokenizer, [{"role": "user", "content": prompt}])
    stops = (tokenizer.special_id("<|end|>"), tokenizer.special_id("<|bos|>"))
    out = model.generate(ids, max_new_tokens, temperature, top_k, stops, generator)
    return tokenizer.decode(out)


def main() -> None:
    params = load_params().evaluate
    tokenizer = Tokenizer.load(TOKENIZER)
    model, info = checkpoint.load(CHAT_MODEL)
    block = model.config.block_size
    byte_lengths = token_byte_lengths(tokenizer)

    val_text = concat_tokens(read_split(SHARDS / "pretrain/val", tokenizer.hash))
    windows = TokenWindows(val_text, block, batch_size=16, seed=0).sequential()
    shakespeare = measure(model, windows, byte_lengths, max_batches=params.eval_batches)
    chats = PackedConversations.from_split(SHARDS / "sft/val", tokenizer, block, 16, 0)
    oasst = measure(model, chats.sequential(), byte_lengths, max_batches=params.eval_batches)

    conversations = [
        json.loads(line) for line in (OASST / "val.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    scores = []
    for conversation in conversations[: params.rouge_conversations]:
        question, answer = conversation["messages"][0], conversation["messages"][1]
        greedy = reply(model, tokenizer, question["content"], 0.0, 0, params.max_new_tokens)
        scores.append(rouge_l(greedy, answer["content"]))
    oasst["rouge_l"] = sum(scores) / max(len(scores), 1)

    generator = torch.Generator().manual_seed(params.seed)
    lines = ["# Samples from the chat model", ""]
    for prompt in params.prompts:
        greedy = reply(model, tokenizer, prompt, 0.0, 0, params.max_new_tokens)
        sampled = reply(
            model,
            tokenizer,
            prompt,
            params.temperature,
            params.top_k,
            params.max_new_tokens,
            generator,
        )
        lines += [
            f"## {prompt}",
            "",
            "**greedy:**",
            "",
            greedy.strip() or "(empty)",
            "",
            f"**sampled** (temperature {params.temperature}, top-k {params.top_k}, "
            f"seed {params.seed}):",
            "",
            sampled.strip() or "(empty)",
            "",
        ]

    metrics = {"shakespeare": shakespeare, "oasst": oasst}
    REPORTS.mkdir(exist_ok=True)
    write_json_atomic(REPORTS / "metrics.json", metrics)
    (REPORTS / "samples.md").write_text("\n".join(lines), encoding="utf-8")
    print(json.dumps(metrics, indent=2))
    # Attach to the sft run that made the chat model.
    with tracking.run("evaluate", run_id=info["run_id"], tokenizer_hash=tokenizer.hash):
        tracking.log_metrics(tracking.flatten({"eval": metrics}, sep="/"))
        tracking.log_artifact(REPORTS / "metrics.json", "reports")
        tracking.log_artifact(REPORTS / "samples.md", "reports")


if __name__ == "__main__":
    main()
