"""What the bench scripts share: where the data mirror is, and running a worker process."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """BARDLET_DATA_MIRROR, or ../shared/data beside the repo; exits with a hint otherwise."""
    env = os.environ.get("BARDLET_DATA_MIRROR", "")
    for candidate in (Path(env) if env else None, REPO.parent / "shared" / "data"):
        if candidate is not None and candidate.is_dir():
            return candidate
    sys.exit("data mirror not found: set BARDLET_DATA_MIRROR to the folder with the data files")


def run_worker(
    script: str, job: dict[str, Any], timeout: float, env: dict[str, str] | None = None
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
            cwd=REPO,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_info() -> dict[str, Any]:
    """What a results file records about its run: the command, with a folder outside the repo
    written as PROJECT (a result names no one machine's paths), and the machine."""
    import platform

    def shown(arg: str) -> str:
        path = Path(arg)
        if not path.is_absolute():
            return arg
        return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else "PROJECT"

    return {
        "command": " ".join(["python", *map(shown, sys.argv)]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
