"""What the bench scripts share: the command line and the results file, the data mirror, worker
processes and rounds of them, peak memory, tables of result rows."""

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bardlet.markdown import table

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def parser(doc: str, quick: str) -> argparse.ArgumentParser:
    """The flags every script has: --quick (`quick` says what it does), --json FILE, and the
    hidden --worker JOB that runs a measurement in a worker process."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def parse(parser: argparse.ArgumentParser, worker: Callable[[Any], Any] | None = None) -> Any:
    """The arguments; in a worker process (--worker JOB), print `worker(JOB)` as JSON and exit."""
    args = parser.parse_args()
    if args.worker and worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        sys.exit(0)
    return args


def save(path: Path | None, result: Any) -> None:
    """Write `result` to `path` (if one was given) as JSON, atomically."""
    from bardlet.files import write_json_atomic  # here: workers' imports are part of their timing

    if path is not None:
        write_json_atomic(path, result)


def require(root: Path, *paths: str) -> None:
    """Exit with a hint if a file that a run needs is missing."""
    for path in paths:
        if not (root / path).exists():
            sys.exit(f"{root / path} is missing: run `make pipeline` there first")


def data_dir() -> Path:
    """BARDLET_DATA_MIRROR, or ../shared/data beside the repo; exits with a hint otherwise."""
    env = os.environ.get("BARDLET_DATA_MIRROR", "")
    for candidate in (Path(env) if env else None, REPO.parent / "shared" / "data"):
        if candidate is not None and candidate.is_dir():
            return candidate
    sys.exit("data mirror not found: set BARDLET_DATA_MIRROR to the folder with the data files")


def run_worker(
    script: str,
    job: dict[str, Any],
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> dict[str, Any]:
    """Run `script --worker JOB` in a fresh process (so its peak memory and caches are its
    own) and return the JSON its last line prints, or {"error": ...} if it fails or times out.
    `env`: extra environment variables."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    try:
        proc = subprocess.run(
            [sys.executable, script, "--worker", json.dumps(job)],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def rounds_of(
    specs: Sequence[T],
    rounds: int,
    run: Callable[[T], dict[str, Any]],
    status: Callable[[T, dict[str, Any]], str],
) -> list[tuple[T, list[dict[str, Any]]]]:
    """`run(spec)` for every spec once per round, every other round in reverse order (no spec
    always first or last on a machine other jobs share): (spec, its results), in `specs`'
    order. Prints `status(spec, result)` after each run."""
    results: list[list[dict[str, Any]]] = [[] for _ in specs]
    for round_ in range(rounds):
        order = range(len(specs)) if round_ % 2 == 0 else reversed(range(len(specs)))
        for index in order:
            result = run(specs[index])
            results[index].append(result)
            line = f"  round {round_ + 1}/{rounds}: {status(specs[index], result)}"
            print(line, file=sys.stderr, flush=True)
    return list(zip(specs, results, strict=True))


def peak_rss_bytes(inherited: bool = False) -> int:
    """This process's peak resident memory: its own (VmHWM). `inherited`: ru_maxrss, which
    Linux carries over fork + exec, so a worker reports at least its parent's peak (train.py
    and lora.py measure so, as in their earlier results). ru_maxrss also where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:") and not inherited:
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def rows_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str | Callable[[Any], str]]],
    align: str = "l",
) -> str:
    """A Markdown table (`bardlet.markdown.table`) with a line per row: `columns` are (title,
    cell) pairs, a cell a format string over the row's keys ("{ms:.1f}") or a function of it."""
    cells = [[c.format(**r) if isinstance(c, str) else c(r) for _, c in columns] for r in rows]
    return table([title for title, _ in columns], cells, align)


def command() -> str:
    """The command that ran, a folder outside the repo written as PROJECT (a result names no
    one machine's paths)."""

    def shown(arg: str) -> str:
        path = Path(arg)
        if not path.is_absolute():
            return arg
        return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else "PROJECT"

    return " ".join(["python", *map(shown, sys.argv)])


def run_info() -> dict[str, Any]:
    """What a results file records about its run: the command and the machine."""
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    return {"command": command(), "machine": machine, "python": platform.python_version()}
