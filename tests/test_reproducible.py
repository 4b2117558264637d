"""What makes a fresh clone reproduce the committed run: pinned CPU kernels, a dvc.lock that
matches the committed code, and the committed offline template for `dvc plots show`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
SHOW_KERNELS = (
    "import os, torch; print(torch.backends.cpu.get_cpu_capability(), "
    "*(os.environ.get(v, '-') for v in ('ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'ONEDNN_MAX_CPU_ISA')))"
)


def kernels(prelude: str, **env: str) -> list[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in (*KERNEL_VARIABLES, "BARDLET_NATIVE_KERNELS")
    }
    done = subprocess.run(
        [sys.executable, "-c", prelude + SHOW_KERNELS],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.split()


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the pins are for x86-64"
)
def test_every_stage_pins_the_cpu_kernels_unless_told_not_to():
    # `python -m stages.<name>` imports the stages package first.
    assert kernels("import stages; ") == ["AVX2", "avx2", "AVX2", "AVX2"]
    native = kernels("import stages; ", BARDLET_NATIVE_KERNELS="1")
    assert native == [*kernels("")[:1], "-", "-", "-"]  # what torch picks by itself
    # A value the user set wins over the pin.
    assert kernels("import stages; ", MKL_CBWR="COMPATIBLE")[2] == "COMPATIBLE"


def test_the_committed_dvc_lock_comes_from_the_committed_code():
    """No stage's code or params differ from what dvc.lock recorded: the committed results
    (dvc.lock, reports/) were made by this code. When this fails, re-run the default pipeline
    in a fresh clone and commit its dvc.lock and reports/."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    tracked = set(
        subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
    )

    def is_tracked(path: str) -> bool:
        return path in tracked or any(t.startswith(path.rstrip("/") + "/") for t in tracked)

    stale = []
    for stage, entries in json.loads(done.stdout or "{}").items():
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                if entry == "changed command":
                    stale.append(f"{stage}: its cmd")
                continue
            for path, state in (entry.get("changed deps") or {}).items():
                if is_tracked(path) and state != "deleted":
                    stale.append(f"{stage}: {path} {state}")
    assert not stale, "dvc.lock is older than the code:\n" + "\n".join(stale)


def test_the_offline_plots_template_is_what_the_script_writes(tmp_path):
    script = REPO / "scripts/dvc_plots_template.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "t.html")], check=True, timeout=120)
    committed = REPO / ".dvc/plots_offline.html"
    assert committed.read_bytes() == (tmp_path / "t.html").read_bytes()
    assert "<script src" not in committed.read_text()  # nothing loaded from elsewhere
    config = (REPO / ".dvc/config").read_text()
    assert "html_template = plots_offline.html" in config


def test_every_locked_package_is_pinned_with_its_hashes():
    """pip's hash-checking mode: each line of requirements.lock is `name==version` with the
    sha256 of its files, and make installs with --require-hashes (torch, whose build differs
    per machine, comes first by its exact version)."""
    lock = (REPO / "requirements.lock").read_text()
    assert "scripts/lock.sh" in lock.splitlines()[1]  # the command that made it, at the top
    lines = lock.splitlines()
    pinned = 0
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            name = line.split(" ")[0]
            assert "==" in name, f"{name}: not pinned to one version"
            assert lines[i + 1].strip().startswith("--hash=sha256:"), f"{name}: no hash"
            pinned += 1
    assert pinned > 200
    makefile = (REPO / "Makefile").read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in makefile
    assert "pip install --quiet --disable-pip-version-check torch==2.13.0" in makefile
    assert "torch==2.13.0" in (REPO / "pyproject.toml").read_text()  # the same version
