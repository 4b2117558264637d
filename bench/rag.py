"""Retrieval: does the index find the passage, does the model use it, and how fast is it.

    PYTHONPATH=. .venv/bin/python bench/rag.py --root PROJECT --json bench/results/rag.json
    PYTHONPATH=. .venv/bin/python bench/rag.py --root PROJECT --quick   # 20 questions, 2,000 passages

PROJECT is a folder after `make pipeline` (its models/onnx and tokenizer are used).

1. Questions from this repo's docs/ (bench/data/rag_questions.jsonl; written by this script on
   its first run from a seeded sample, and committed): a sentence of a passage cut in two, the
   first part the question, the rest the answer, so each answer lies inside one passage.
   Recall@1 and @5: a top-k passage holds the whole answer.
2. Whether the model uses what it is given: bits per byte of the answer as the assistant's
   reply to the question, with no sources, with the passages the chat would put in the prompt,
   and with the answer's own passage.
3. Speed: building an index of Tiny Shakespeare and OASST1's text (about 10,000 passages,
   as files of 20,000 characters) in MB/s, and the latency of a query over it (p50, p99).
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path

QUESTIONS = common.REPO / "bench/data/rag_questions.jsonl"
HOW_MANY = 120


def make_questions(index: Any) -> list[dict[str, Any]]:
    """A seeded sample of sentences from the indexed docs, each cut into question + answer."""
    rows = index.connection.execute("SELECT path, start, end, text FROM passages").fetchall()
    found = []
    for path, start, end, text in rows:
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            words = sentence.split()
            letters = sum(c.isalpha() for c in sentence) / max(len(sentence), 1)
            if 12 <= len(words) <= 40 and letters > 0.75 and not sentence.startswith(("|", "#")):
                cut = len(words) * 3 // 5
                question, answer = " ".join(words[:cut]), " ".join(words[cut:])
                found.append({"question": question, "answer": answer, "path": path,
                              "start": start, "end": end})  # fmt: skip
    unique = {q["question"] + q["answer"]: q for q in found}  # overlap repeats sentences
    return random.Random(0).sample(sorted(unique.values(), key=json.dumps), HOW_MANY)


def main() -> None:
    parser = common.parser(__doc__ or "", "20 questions, about 2,000 passages for speed")
    parser.add_argument(
        "--root", type=Path, default=common.REPO, help="a project after make pipeline"
    )
    args = common.parse(parser)
    common.require(args.root, "models/onnx/model.onnx")
    sys.path.insert(0, str(common.REPO))
    import numpy as np

    from bardlet.data.chat_template import render_prompt
    from bardlet.retrieval.index import Index, build_index
    from bardlet.runtime.conversation import pick_sources, system_with
    from bardlet.runtime.session import OnnxLM

    lm = OnnxLM(args.root.resolve() / "models/onnx/model.onnx", threads=1)
    tokenizer = lm.tokenizer

    def count(text: str) -> int:
        return len(tokenizer.encode(text))

    work = Path(tempfile.mkdtemp(prefix="bardlet-rag-"))
    docs_index = work / "docs.sqlite"
    os.chdir(common.REPO)  # passages name docs/... as the index stage's do, on any machine
    build_index(docs_index, [Path("docs")], count, tokenizer.hash)
    index = Index(docs_index)
    if not QUESTIONS.exists():
        QUESTIONS.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(q, ensure_ascii=False) for q in make_questions(index)]
        QUESTIONS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    questions = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines()]
    if args.quick:
        questions = questions[:20]

    # 1. Recall: a passage among the top k holds the whole answer.
    def holds(passage: Any, answer: str) -> bool:
        return answer in " ".join(passage.text.split())

    hits = {1: 0, 5: 0}
    for q in questions:
        found = index.search(q["question"], k=5)
        for k in hits:
            hits[k] += any(holds(p, q["answer"]) for p in found[:k])
    recall = {f"recall@{k}": n / len(questions) for k, n in hits.items()}

    # 2. Bits per byte of the answer, as the reply, with and without sources.
    def answer_bits(q: dict[str, Any], sources: list[Any]) -> tuple[float, int]:
        system = system_with(None, sources)
        prompt = render_prompt(tokenizer, [{"role": "user", "content": q["question"]}], system)
        answer = tokenizer.encode(" " + q["answer"])
        ids = (prompt + answer)[: lm.block_size]
        logits, _ = lm.forward(np.array([ids]), lm.empty_cache())
        shifted = logits[0].astype(np.float64) - logits[0].max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))  # log-softmax
        first = len(prompt)
        targets = ids[first:]
        bits = -sum(logp[first - 1 + i, t] for i, t in enumerate(targets)) / np.log(2)
        return float(bits), len(tokenizer.decode(targets).encode())

    ways: dict[str, Any] = {
        "no sources": lambda q: [],
        "retrieved (as the chat does)": lambda q: pick_sources(
            tokenizer, index.search(q["question"], k=4), lm.block_size
        ),
        "the answer's own passage": lambda q: [
            next(
                (
                    p
                    for p in index.search(q["question"] + " " + q["answer"], k=20)
                    if holds(p, q["answer"])
                ),
                None,
            )  # fmt: skip
        ],
    }
    bpb = {}
    for name, sources_of in ways.items():
        bits = size = 0.0
        for q in questions:
            sources = [s for s in sources_of(q) if s is not None]
            b, n = answer_bits(q, sources)
            bits, size = bits + b, size + n
        bpb[name] = bits / size

    # 3. Speed at about 10,000 passages: plain text files in, queries out.
    mirror = common.data_dir()
    corpus = work / "corpus"
    corpus.mkdir()
    text = (mirror / "tinyshakespeare/input.txt").read_text(encoding="utf-8")
    oasst = [
        json.loads(line) for line in (mirror / "oasst1/en-validation.jsonl").open(encoding="utf-8")
    ]
    text += "\n".join(m.get("text", "") for m in oasst)
    if args.quick:
        text = text[:400_000]
    per_file = 20_000
    for i in range(0, len(text), per_file):
        (corpus / f"part-{i // per_file:04d}.txt").write_text(
            text[i : i + per_file], encoding="utf-8"
        )
    started = time.perf_counter()
    report = build_index(work / "big.sqlite", [corpus], count, tokenizer.hash)
    seconds = time.perf_counter() - started
    megabytes = sum(p.stat().st_size for p in corpus.glob("*.txt")) / 1e6
    big = Index(work / "big.sqlite")
    lines = [line for line in text.splitlines() if len(line.split()) >= 4]
    queries = random.Random(1).sample(lines, 50 if args.quick else 300)
    latencies = []
    for query in queries:
        started = time.perf_counter()
        big.search(query, k=4)
        latencies.append(1000 * (time.perf_counter() - started))
    latencies.sort()
    output = {
        "command": common.command(),
        "questions": len(questions),
        **recall,
        "answer_bpb": bpb,
        "index": {
            "passages": report.passages,
            "megabytes": megabytes,
            "build_seconds": seconds,
            "mb_per_second": megabytes / seconds,
            "file_bytes": (work / "big.sqlite").stat().st_size,
            "query_ms_p50": statistics.median(latencies),
            "query_ms_p99": latencies[int(0.99 * (len(latencies) - 1))],
        },
    }
    print(markdown(output))
    common.save(args.json, output)


def markdown(output: dict[str, Any]) -> str:
    from bardlet.markdown import fmt_bytes, table

    speed = output["index"]
    lines = [
        f"{output['questions']} questions from docs/: recall@1 {output['recall@1']:.2f}, "
        f"recall@5 {output['recall@5']:.2f}.",
        "",
        table(
            ["the prompt holds", "answer bits per byte"],
            [[name, f"{value:.4f}"] for name, value in output["answer_bpb"].items()],
        ),  # fmt: skip
        "",
        f"Index of {speed['passages']:,} passages ({speed['megabytes']:.1f} MB of text, file "
        f"{fmt_bytes(speed['file_bytes'])}): built at {speed['mb_per_second']:.2f} MB/s; a query "
        f"takes {speed['query_ms_p50']:.2f} ms (p50), {speed['query_ms_p99']:.2f} ms (p99).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
