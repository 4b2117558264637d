"""Benchmark the streaming text path on a big corpus of your own: prepare, tokenizer, shard, load.

    PYTHONPATH=. python bench/data.py --json bench/results/data.json   # 20, 200 MB: ~17 min
    PYTHONPATH=. python bench/data.py --quick                          # 1, 10 MB: < 1 min

The corpus: Tiny Shakespeare's paragraphs and the OASST1 English validation messages, written
pass after pass, each pass shuffled with its own seed (the words repeat, the text does not), up
to the size asked for, as `data/own/corpus.txt` of a temporary project whose params.yaml says
`prepare.corpus: [{path: data/own/corpus.txt, name: own}]`. Each step of STEPS runs there in its
own process: wall s is the whole process, work s the step alone, peak RSS the process's own.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path
import hf_bpe
import yaml

MB = 1_000_000
SIZES_MB, QUICK_SIZES_MB = (20, 200), (1, 10)
RSS_LIMIT_MB = 1000
OWN_CORPUS = "data/own/corpus.txt"
OASST_RAW = "oasst1/en-validation.jsonl"

# (step, implementation, worker): rounds alternate between the implementations of a step.
STEPS = [
    ("prepare", "bardlet stage", "prepare"),
    ("tokenizer", "bardlet stage", "tokenizer"),
    ("tokenizer", "HF BpeTrainer", "tokenizer_hf"),
    ("shard", "bardlet stage (pretrain + sft + report)", "shard"),
    ("shard pretrain only", "bardlet encode_batch", "shard_pretrain"),
    ("shard pretrain only", "HF encode_batch", "shard_pretrain_hf"),
    ("load 1 epoch", "read_tokens + TokenWindows", "load"),
]


def source_pieces(raw: Path) -> list[bytes]:
    """Tiny Shakespeare's paragraphs and the OASST1 messages' text, each ending in a blank line."""
    texts = re.split(r"\n\s*\n", hf_bpe.read_texts(raw / "tinyshakespeare/input.txt")[0])
    texts += hf_bpe.read_texts(raw / OASST_RAW)
    return [(text.strip() + "\n\n").encode("utf-8") for text in texts if text.strip()]


def make_project(folder: Path, size_mb: int, pieces: list[bytes], raw: Path) -> dict[str, Any]:
    """A project folder the stages run in: the corpus (`pieces` pass after pass, each pass
    shuffled with its own seed, up to `size_mb`), params.yaml and the OASST1 raw file."""
    from bardlet.config import load_params

    start = time.perf_counter()
    (folder / OWN_CORPUS).parent.mkdir(parents=True)
    written = passes = 0
    with open(folder / OWN_CORPUS, "wb") as f:
        while written < size_mb * MB:
            order = list(pieces)
            random.Random(passes).shuffle(order)
            passes += 1
            for piece in order:
                f.write(piece)
                written += len(piece)
                if written >= size_mb * MB:
                    break
    corpus = {"bytes": written, "passes": passes, "pieces_per_pass": len(pieces)}
    corpus["make_s"] = time.perf_counter() - start
    (folder / "data/raw" / OASST_RAW).parent.mkdir(parents=True)
    (folder / "data/raw" / OASST_RAW).symlink_to(raw / OASST_RAW)
    params = yaml.safe_load((common.REPO / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"]["corpus"] = [{"path": OWN_CORPUS, "name": "own"}]
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    load_params(folder / "params.yaml")  # fails here, not in a worker, if it does not validate
    return corpus


class Clock:
    """Times the `with` block: the step's work, after its imports."""

    seconds = 0.0

    def __enter__(self) -> Clock:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def stage(clock: Clock, name: str) -> dict[str, Any]:
    """`stages/<name>.py` main(), as dvc runs it."""
    main = importlib.import_module(f"stages.{name}").main
    with clock:
        main()
    if name != "shard":
        return {}
    from stages.paths import SHARDS

    manifest = json.loads((SHARDS / "pretrain/train/manifest.json").read_text(encoding="utf-8"))
    return {"train_tokens": manifest["tokens"], "train_rows": manifest["rows"]}


def tokenizer_hf(clock: Clock) -> dict[str, Any]:
    """HF `BpeTrainer` on the tokenizer stage's own sample (`training_texts`, timed in both)."""
    import tokenizers  # noqa: F401  (outside the clock, as every worker's imports)

    from bardlet.config import load_params
    from bardlet.tokenizer import GPT4_PATTERN
    from stages.tokenizer import training_texts

    params = load_params().tokenizer
    with clock:
        start = time.perf_counter()
        texts = training_texts(params.sample_chars)
        sample_s = time.perf_counter() - start
        hf = hf_bpe.train(texts, params.vocab_size, GPT4_PATTERN, params.special_tokens)
        hf.save("hf-tokenizer.json")
    return {"sample_s": sample_s, "sample_chars": sum(map(len, texts))}


def write_pretrain(clock: Clock, out: Path, make_rows: Callable[[str], Any]) -> dict[str, Any]:
    """Both pretrain splits through the shard stage's `write_split`, rows from `make_rows(split)`."""
    from bardlet.config import load_params
    from bardlet.data.shards import write_split
    from bardlet.tokenizer import Tokenizer
    from stages.paths import TOKENIZER

    params = load_params().shard
    bpe = Tokenizer.load(TOKENIZER)  # the manifest's tokenizer hash and vocab size
    tokens = {}
    with clock:
        for split in ("train", "val"):
            manifest = write_split(
                make_rows(split),
                out / split,
                tokenizer_hash=bpe.hash,
                vocab_size=bpe.vocab_size,
                rows_per_file=params.rows_per_file,
                row_group_size=params.row_group_size,
            )
            tokens[split] = manifest["tokens"]
    return {"train_tokens": tokens["train"], "val_tokens": tokens["val"]}


def shard_pretrain(clock: Clock) -> dict[str, Any]:
    """The shard stage's pretrain part alone: its `text_rows` (bardlet's encode_batch)."""
    from bardlet.tokenizer import Tokenizer
    from stages.paths import TOKENIZER
    from stages.shard import text_rows

    bpe = Tokenizer.load(TOKENIZER)
    return write_pretrain(clock, Path("shards-bardlet"), lambda split: text_rows(bpe, split))


def shard_pretrain_hf(clock: Clock) -> dict[str, Any]:
    """The stage's `text_rows` with HF's encode_batch of the stage's tokenizer.json (HF encodes
    on every core, bardlet on one)."""
    from itertools import islice

    import numpy as np
    from tokenizers import Tokenizer as HFTokenizer

    from bardlet.data.corpus import paragraphs
    from bardlet.data.shards import Row
    from stages.paths import CORPUS, TOKENIZER_DIR
    from stages.shard import ENCODE_BATCH

    hf = HFTokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    dtype = np.uint16 if hf.get_vocab_size() <= 1 << 16 else np.int32

    def hf_rows(split: str) -> Any:
        for source in sorted(path for path in CORPUS.iterdir() if path.is_dir()):
            pieces, first = paragraphs(source / f"{split}.txt"), 0
            while batch := list(islice(pieces, ENCODE_BATCH)):
                encoded = hf.encode_batch(batch, add_special_tokens=False)
                for i, encoding in enumerate(encoded, first):
                    source_id = f"{source.name}/{split}/{i}"
                    yield Row(source_id=source_id, tokens=np.array(encoding.ids, dtype))
                first += len(batch)

    return write_pretrain(clock, Path("shards-hf"), hf_rows)


def load(clock: Clock) -> dict[str, Any]:
    """read_tokens + TokenWindows as stages/pretrain.py builds them, then one epoch of batches:
    ceil(tokens / (batch x block)) steps."""
    from bardlet.config import load_params
    from bardlet.data.loaders import TokenWindows
    from bardlet.data.shards import read_tokens
    from bardlet.tokenizer import Tokenizer
    from stages.paths import SHARDS, TOKENIZER

    params = load_params()
    settings, block = params.pretrain, params.model.block_size
    tokenizer_hash = Tokenizer.load(TOKENIZER).hash
    weights = {s if isinstance(s, str) else s.label: 1.0 for s in params.prepare.corpus}
    weights.update({s.label: s.weight for s in params.prepare.corpus if not isinstance(s, str)})
    with clock:
        start = time.perf_counter()
        tokens, sources = read_tokens(SHARDS / "pretrain/train", tokenizer_hash)
        read_s = time.perf_counter() - start
        mix = {name: (span, weights[name]) for name, span in sources.items()}
        windows = TokenWindows(tokens, block, settings.batch_size, settings.seed, mix)
        steps = -(-len(tokens) // (settings.batch_size * block))
        for step in range(steps):
            windows.batch(step)
    return {"read_s": read_s, "train_tokens": len(tokens), "batches": steps}


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One step, in this process, in the project folder."""
    clock, name = Clock(), job["step"]
    workers = {"tokenizer_hf": tokenizer_hf, "shard_pretrain": shard_pretrain}
    workers |= {"shard_pretrain_hf": shard_pretrain_hf, "load": load}
    extra = workers[name](clock) if name in workers else stage(clock, name)
    return {"work_s": clock.seconds, "peak_rss_mb": common.peak_rss_bytes() / MB, **extra}


def run_step(name: str, project: Path) -> dict[str, Any]:
    """One step in a fresh process, in the project folder; its wall time and its report."""
    start = time.perf_counter()
    result = common.run_worker(
        __file__, {"step": name}, env={"PYTHONDONTWRITEBYTECODE": "1"}, cwd=project
    )
    wall = time.perf_counter() - start
    if "error" in result:
        sys.exit(f"{name} failed in {project}: {result['error']}")
    return {"wall_s": wall, **result}


def same_shards(project: Path) -> dict[str, bool]:
    """Whether the three pretrain writers wrote the same files (sha256 of every shard)."""

    def hashes(folder: Path) -> list[list[str]]:
        manifests = [
            json.loads((folder / s / "manifest.json").read_text()) for s in ("train", "val")
        ]
        return [[f["sha256"] for f in manifest["files"]] for manifest in manifests]

    bardlet = hashes(project / "shards-bardlet")
    return {
        "hf_equals_bardlet": hashes(project / "shards-hf") == bardlet,
        "bardlet_equals_stage": bardlet == hashes(project / "data/shards/pretrain"),
    }


def bench_size(
    size_mb: int, rounds: int, pieces: list[bytes], raw: Path, root: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every step on a corpus of `size_mb`, `rounds` times (ours, peer, ours, peer)."""
    project = root / f"{size_mb}mb"
    corpus = make_project(project, size_mb, pieces, raw)
    corpus_mb = corpus["bytes"] / MB
    print(
        f"{size_mb} MB corpus: {corpus['passes']} passes, {corpus['make_s']:.1f} s", file=sys.stderr
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for _, _, name in STEPS}
    for step in dict.fromkeys(s for s, _, _ in STEPS):
        for round_number in range(rounds):
            for impl, name in [(impl, name) for s, impl, name in STEPS if s == step]:
                result = run_step(name, project)
                runs[name].append(result)
                print(
                    f"{size_mb} MB, round {round_number + 1}/{rounds}: {step}, {impl}: "
                    f"{result['wall_s']:.2f} s, peak RSS {result['peak_rss_mb']:.0f} MB",
                    file=sys.stderr,
                )
    rows = [
        {
            "size_mb": size_mb,
            "corpus_mb": corpus_mb,
            "step": step,
            "implementation": impl,
            "worker": name,
            "wall_s": statistics.median(r["wall_s"] for r in runs[name]),
            "work_s": statistics.median(r["work_s"] for r in runs[name]),
            "mb_per_s": corpus_mb / statistics.median(r["wall_s"] for r in runs[name]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[name]),
            "rounds": runs[name],
        }
        for step, impl, name in STEPS
    ]
    corpus["same_shards"] = same_shards(project)
    return corpus, rows


def note(row: dict[str, Any]) -> str:
    last = row["rounds"][-1]
    if row["worker"] == "tokenizer_hf":
        return f"sample {last['sample_chars'] / MB:.1f} M chars in {last['sample_s']:.1f} s"
    if row["worker"] == "load":
        return f"{last['train_tokens'] / 1e6:.1f} M tokens, {last['batches']:,} batches"
    if "train_tokens" in last:
        return f"{last['train_tokens'] / 1e6:.1f} M train tokens"
    return ""


def tables(rows: list[dict[str, Any]], small: int, big: int) -> tuple[str, list[dict[str, Any]]]:
    """The results table, and the linearity table (the big size's times / the small size's)."""
    by_key = {(r["size_mb"], r["worker"]): r for r in rows}
    ratios = []
    for step, impl, name in STEPS:
        a, b = by_key[(small, name)], by_key[(big, name)]
        ratios.append(
            {
                "step": step,
                "implementation": impl,
                "wall_ratio": b["wall_s"] / a["wall_s"],
                "work_ratio": b["work_s"] / a["work_s"],
                "peak_rss_mb_big": b["peak_rss_mb"],
                "under_limit": b["peak_rss_mb"] < RSS_LIMIT_MB,
            }
        )
    results = [
        ("corpus MB", "{corpus_mb:.0f}"),
        ("step", "{step}"),
        ("implementation", "{implementation}"),
        ("wall s", "{wall_s:.2f}"),
        ("work s", "{work_s:.2f}"),
        ("MB/s", "{mb_per_s:.2f}"),
        ("peak RSS MB", "{peak_rss_mb:.0f}"),
        ("notes", note),
    ]
    linearity = [
        ("step", "{step}"),
        ("implementation", "{implementation}"),
        (f"wall s {big} / {small} MB", "{wall_ratio:.1f}x"),
        (f"work s {big} / {small} MB", "{work_ratio:.1f}x"),
        (f"peak RSS MB at {big} MB", "{peak_rss_mb_big:.0f}"),
        (f"under {RSS_LIMIT_MB} MB", lambda f: "yes" if f["under_limit"] else "**no**"),
    ]
    text = common.rows_table(rows, results, align="rllrrrrl") + "\n\n"
    return text + common.rows_table(ratios, linearity, align="llr"), ratios


def main() -> None:
    parser = common.parser(__doc__, "1 MB and 10 MB, one round (under a minute)")
    parser.add_argument("--rounds", type=int, help="runs of each step (default 2; quick 1)")
    parser.add_argument("--sizes", help="corpus sizes in MB, small,big (default 20,200)")
    args = common.parse(parser, worker)
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None
    small, big = sizes or (QUICK_SIZES_MB if args.quick else SIZES_MB)
    rounds = args.rounds or (1 if args.quick else 2)
    raw = common.data_dir()
    pieces = source_pieces(raw)
    load_before = os.getloadavg()
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    corpora: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bardlet-bench-data-") as tmp:
        for size_mb in (small, big):
            corpora[f"{size_mb}mb"], found = bench_size(size_mb, rounds, pieces, raw, Path(tmp))
            rows += found
    total_s = time.perf_counter() - start
    text, ratios = tables(rows, small, big)
    import tokenizers

    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "tokenizers": tokenizers.__version__,
        "rounds": rounds,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "total_s": total_s,
    }
    print(text)
    print(
        f"\n{rounds} round(s): medians of wall s and work s, largest peak RSS; "
        f"{env['cpus']} CPUs, Python {env['python']}, tokenizers {env['tokenizers']}; load "
        f"average {load_before[0]:.1f} before, {env['load_average_after'][0]:.1f} after; "
        f"whole bench {total_s / 60:.1f} min"
    )
    for name, corpus in corpora.items():
        print(f"{name}: {corpus}")
    result = {"command": common.command(), "environment": env, "corpora": corpora}
    common.save(args.json, result | {"results": rows, "linearity": ratios, "table": text})


if __name__ == "__main__":
    main()
