"""Benchmark the streaming text path on a big corpus of your own: prepare, tokenizer, shard, load.

    PYTHONPATH=. python bench/data.py --json bench/results/data.json   # 20, 200 MB: ~17 min
    PYTHONPATH=. python bench/data.py --quick                          # 1, 10 MB: < 1 min

The corpus: the bench makes it from the data at hand ($BARDLET_DATA_MIRROR or ../shared/data):
the paragraphs of Tiny Shakespeare (text between blank lines) and the text of every OASST1
English validation message, about 2.2 MB in 9,244 pieces. It writes them one pass after another,
each pass in its own order (random.Random(pass number).shuffle: deterministic, and no two passes
alike), joined by blank lines, until the file holds the size asked for (20 MB, 200 MB). So the
words repeat (a cache of encoded chunks stays warm, as on any one-topic corpus), but the text does
not repeat verbatim pass after pass. The file is `data/own/corpus.txt` of a temporary project
folder whose params.yaml is the repo's with `prepare.corpus: [{path: data/own/corpus.txt, name:
own}]` (`prepare.chats` stays OASST1: its raw file is linked in).

Each step runs in its own subprocess with the project folder as working directory, so its peak
RSS (VmHWM: the process's own, not ru_maxrss, which Linux carries over fork + exec) is the
step's own. Per size, in this order:

1. prepare: `stages/prepare.py` main(): the corpus split 90/10 into data/prepared (streamed),
   and the OASST1 conversations (the same small work at every size).
2. tokenizer: `stages/tokenizer.py` main() (an even sample of `tokenizer.sample_chars`
   characters of the training text, BPE training to vocab 4096, bpe.json + tokenizer.json)
   vs Hugging Face `tokenizers`: the same sample (the stage's own `training_texts`, timed in
   both), `BpeTrainer` with the same vocab size and special tokens and our pre-tokenizer (the
   GPT-4 split pattern, then ByteLevel bytes), saved as tokenizer.json.
3. shard: `stages/shard.py` main(): pretrain shards from the corpus, sft shards from the chats,
   and the data report (polars). Beside it, the pretrain part alone, two ways, with the same
   paragraphs (`paragraphs`, batches of the stage's ENCODE_BATCH) and the same Parquet writer
   (`write_split`, params.yaml `shard`): bardlet's `encode_batch` (the stage's `text_rows`)
   vs HF `encode_batch` of the tokenizer.json the tokenizer stage exported (same ids: the
   bench checks the two write byte-identical shards). HF encodes on every core, bardlet on one.
4. load: what pretraining does with the data: `read_tokens` of pretrain/train, a
   `TokenWindows` as stages/pretrain.py builds it (params.yaml `pretrain` batch size and
   `model` block size), and one epoch of its batches: ceil(tokens / (batch x block)) steps.

Columns: wall s = the whole subprocess, Python start-up and imports included (what a user
waits for a stage); work s = the step's work alone; MB/s = corpus MB / wall s (MB = 10^6
bytes); peak RSS in MB. Each step runs `--rounds` times (peers alternate: ours, peer, ours,
peer); times are medians, RSS the largest. The linearity table divides the big size's time by
the small size's (10x the data: linear is about 10x; the tokenizer's training is bounded by
sample_chars, so only its sampling grows). The corpus files sit in the page cache (just written).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from common import REPO, data_dir  # bench/common.py: this script's folder is on sys.path

from bardlet.markdown import table

MB = 1_000_000
SIZES_MB = (20, 200)
QUICK_SIZES_MB = (1, 10)
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


# ---------------------------------------------------------------- the corpus


def source_pieces(raw: Path) -> list[bytes]:
    """Tiny Shakespeare's paragraphs and the OASST1 messages' text, each ending in a blank line."""
    shakespeare = (raw / "tinyshakespeare/input.txt").read_text(encoding="utf-8")
    texts = re.split(r"\n\s*\n", shakespeare)
    with open(raw / OASST_RAW, encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f if line.strip()]
    return [(text.strip() + "\n\n").encode("utf-8") for text in texts if text.strip()]


def make_corpus(path: Path, size: int, pieces: list[bytes]) -> dict[str, Any]:
    """Write pass after pass of `pieces`, each pass shuffled with its own seed, up to `size`
    bytes (the piece that reaches it is the last)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = passes = 0
    with open(path, "wb") as f:
        while written < size:
            order = list(pieces)
            random.Random(passes).shuffle(order)
            passes += 1
            for piece in order:
                f.write(piece)
                written += len(piece)
                if written >= size:
                    break
    return {"bytes": written, "passes": passes, "pieces_per_pass": len(pieces)}


def make_project(folder: Path, size_mb: int, pieces: list[bytes], raw: Path) -> dict[str, Any]:
    """A project folder the stages run in: params.yaml, the corpus, the OASST1 raw file."""
    from bardlet.config import load_params

    start = time.perf_counter()
    corpus = make_corpus(folder / OWN_CORPUS, size_mb * MB, pieces)
    corpus["make_s"] = time.perf_counter() - start
    (folder / "data/raw" / OASST_RAW).parent.mkdir(parents=True)
    (folder / "data/raw" / OASST_RAW).symlink_to(raw / OASST_RAW)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"]["corpus"] = [{"path": OWN_CORPUS, "name": "own"}]
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    load_params(folder / "params.yaml")  # fails here, not in a worker, if it does not validate
    return corpus


# ---------------------------------------------------------------- worker side (one subprocess)


class Clock:
    """Times the `with` block: the step's work, after its imports."""

    seconds = 0.0

    def __enter__(self) -> Clock:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def prepare(clock: Clock) -> dict[str, Any]:
    from stages.prepare import main

    with clock:
        main()
    return {}


def tokenizer(clock: Clock) -> dict[str, Any]:
    from stages.tokenizer import main

    with clock:
        main()
    return {}


def tokenizer_hf(clock: Clock) -> dict[str, Any]:
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    from bardlet.config import load_params
    from bardlet.tokenizer import GPT4_PATTERN
    from stages.tokenizer import training_texts

    params = load_params().tokenizer
    with clock:
        start = time.perf_counter()
        texts = training_texts(params.sample_chars)
        sample_s = time.perf_counter() - start
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=params.vocab_size,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=params.special_tokens,
        )
        hf.train_from_iterator(texts, trainer)
        hf.save("hf-tokenizer.json")
    return {"sample_s": sample_s, "sample_chars": sum(map(len, texts))}


def shard(clock: Clock) -> dict[str, Any]:
    from stages.paths import SHARDS
    from stages.shard import main

    with clock:
        main()
    manifest = json.loads((SHARDS / "pretrain/train/manifest.json").read_text(encoding="utf-8"))
    return {"train_tokens": manifest["tokens"], "train_rows": manifest["rows"]}


def write_pretrain(clock: Clock, out: Path, make_rows: Callable[[str], Any]) -> dict[str, Any]:
    """Both pretrain splits through `write_split`, rows from `make_rows(split)`."""
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
    from bardlet.tokenizer import Tokenizer
    from stages.paths import TOKENIZER
    from stages.shard import text_rows

    bpe = Tokenizer.load(TOKENIZER)
    return write_pretrain(clock, Path("shards-bardlet"), lambda split: text_rows(bpe, split))


def shard_pretrain_hf(clock: Clock) -> dict[str, Any]:
    """The stage's `text_rows`, with HF's encode_batch in place of ours."""
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
    """read_tokens + TokenWindows as stages/pretrain.py builds them, then one epoch of batches."""
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


WORKERS: dict[str, Callable[[Clock], dict[str, Any]]] = {
    f.__name__: f
    for f in (prepare, tokenizer, tokenizer_hf, shard, shard_pretrain, shard_pretrain_hf, load)
}


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM), in MB (10^6 bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # Linux: KiB


def worker(name: str, out: Path) -> None:
    clock = Clock()
    extra = WORKERS[name](clock)
    result = {"work_s": clock.seconds, "peak_rss_mb": peak_rss_mb(), **extra}
    out.write_text(json.dumps(result), encoding="utf-8")


# ---------------------------------------------------------------- parent side


def run_worker(name: str, project: Path) -> dict[str, Any]:
    """One step in a fresh subprocess, in the project folder; its wall time and its report."""
    out, log = project / f"result-{name}.json", project / "bench.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--out", str(out)]
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n==== {name}\n")
        f.flush()
        done = subprocess.run(command, cwd=project, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode:
        tail = "".join(log.read_text(encoding="utf-8").splitlines(True)[-30:])
        sys.exit(f"{name} failed (exit {done.returncode}) in {project}:\n{tail}")
    return {"wall_s": wall, **json.loads(out.read_text(encoding="utf-8"))}


def same_shards(project: Path) -> dict[str, bool]:
    """Whether the three pretrain writers wrote the same files (sha256 of every shard)."""

    def hashes(folder: Path) -> list[list[str]]:
        return [
            [
                f["sha256"]
                for f in json.loads((folder / split / "manifest.json").read_text())["files"]
            ]
            for split in ("train", "val")
        ]

    stage = hashes(project / "data/shards/pretrain")
    return {
        "hf_equals_bardlet": hashes(project / "shards-hf") == hashes(project / "shards-bardlet"),
        "bardlet_equals_stage": hashes(project / "shards-bardlet") == stage,
    }


def bench_size(
    size_mb: int, rounds: int, pieces: list[bytes], raw: Path, root: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    project = root / f"{size_mb}mb"
    corpus = make_project(project, size_mb, pieces, raw)
    corpus_mb = corpus["bytes"] / MB
    print(
        f"{size_mb} MB corpus: {corpus['passes']} passes, {corpus['make_s']:.1f} s", file=sys.stderr
    )
    rows = []
    for step in dict.fromkeys(s for s, _, _ in STEPS):
        implementations = [(impl, name) for s, impl, name in STEPS if s == step]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for _, name in implementations}
        for round_number in range(rounds):
            for impl, name in implementations:
                result = run_worker(name, project)
                runs[name].append(result)
                print(
                    f"{size_mb} MB, round {round_number + 1}/{rounds}: {step}, {impl}: "
                    f"{result['wall_s']:.2f} s, peak RSS {result['peak_rss_mb']:.0f} MB",
                    file=sys.stderr,
                )
        for impl, name in implementations:
            wall_s = statistics.median(r["wall_s"] for r in runs[name])
            rows.append(
                {
                    "size_mb": size_mb,
                    "corpus_mb": corpus_mb,
                    "step": step,
                    "implementation": impl,
                    "worker": name,
                    "wall_s": wall_s,
                    "work_s": statistics.median(r["work_s"] for r in runs[name]),
                    "mb_per_s": corpus_mb / wall_s,
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[name]),
                    "rounds": runs[name],
                }
            )
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


def results_table(rows: list[dict[str, Any]]) -> str:
    cells = [
        (
            f"{r['corpus_mb']:.0f}",
            r["step"],
            r["implementation"],
            f"{r['wall_s']:.2f}",
            f"{r['work_s']:.2f}",
            f"{r['mb_per_s']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            note(r),
        )
        for r in rows
    ]
    header = "corpus MB | step | implementation | wall s | work s | MB/s | peak RSS MB | notes"
    return table(header, cells, align="rllrrrrl")


def linearity(rows: list[dict[str, Any]], small: int, big: int) -> list[dict[str, Any]]:
    by_key = {(r["size_mb"], r["worker"]): r for r in rows}
    found = []
    for step, impl, name in STEPS:
        a, b = by_key[(small, name)], by_key[(big, name)]
        found.append(
            {
                "step": step,
                "implementation": impl,
                "wall_ratio": b["wall_s"] / a["wall_s"],
                "work_ratio": b["work_s"] / a["work_s"],
                "peak_rss_mb_big": b["peak_rss_mb"],
                "under_limit": b["peak_rss_mb"] < RSS_LIMIT_MB,
            }
        )
    return found


def linearity_table(found: list[dict[str, Any]], small: int, big: int) -> str:
    cells = [
        (
            f["step"],
            f["implementation"],
            f"{f['wall_ratio']:.1f}x",
            f"{f['work_ratio']:.1f}x",
            f"{f['peak_rss_mb_big']:.0f}",
            "yes" if f["under_limit"] else "**no**",
        )
        for f in found
    ]
    header = (
        f"step | implementation | wall s {big} / {small} MB | work s {big} / {small} MB"
        f" | peak RSS MB at {big} MB | under {RSS_LIMIT_MB} MB"
    )
    return table(header, cells, align="llr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 MB and 10 MB, one round (under a minute)"
    )
    parser.add_argument("--rounds", type=int, help="runs of each step (default 2; quick 1)")
    parser.add_argument("--sizes", help="corpus sizes in MB, small,big (default 20,200)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.out)
        return

    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None
    small, big = sizes or (QUICK_SIZES_MB if args.quick else SIZES_MB)
    rounds = args.rounds or (1 if args.quick else 2)
    raw = data_dir()
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
    ratios = linearity(rows, small, big)
    text = results_table(rows) + "\n\n" + linearity_table(ratios, small, big)

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
    if args.json:
        command = "PYTHONPATH=. python bench/data.py " + " ".join(sys.argv[1:])
        result = {
            "command": command,
            "environment": env,
            "corpora": corpora,
            "results": rows,
            "linearity": ratios,
            "table": text,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
