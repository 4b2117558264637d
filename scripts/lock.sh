#!/usr/bin/env bash
# Regenerate requirements.lock (`make lock`): every package pinned to one version with the
# sha256 of each of its files, so pip's hash-checking mode refuses anything else.
#
# torch is the one package left out: its build differs per machine (a CPU wheel, CUDA on
# Linux, Metal on macOS), so no single set of hashes fits all. The Makefile installs it first
# by its exact version (torch==2.13.0), then everything else from this lock with
# --require-hashes. The rest is resolved against the CPU build of torch (--find-links: the
# wheel on this machine's disk), whose dependencies are the portable ones.
#
# Needs uv (pip install uv==0.13.9). Versions already in the lock are kept unless you pass
# --upgrade-package NAME (arguments are handed to uv).
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-uv}
"$uv" pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    pyproject.toml requirements.in --generate-hashes --no-strip-markers \
    --find-links /opt/wheels --upgrade-package torch --no-emit-package torch \
    --custom-compile-command "scripts/lock.sh  (uv pip compile with uv 0.13.9; make lock runs it)" \
    -o requirements.lock "$@"
