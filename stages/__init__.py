"""DVC stage entry points: `python -m stages.<name>`, one short module per stage in dvc.yaml.

Every stage imports this file first, so it is the one place that makes runs reproduce across
machines. torch, MKL and oneDNN choose CPU kernels by what the processor offers (AVX2,
AVX-512, ...), and kernels round differently: the same seed would train slightly different
weights on a laptop and on a server. Pinning all three to AVX2, which every x86-64 CPU of the
last decade has, gives the same bits everywhere (the committed dvc.lock and reports/ are what
your `make pipeline` produces). The cost on an AVX-512 machine is in BENCHMARKS.md.

    BARDLET_NATIVE_KERNELS=1 dvc repro    # let each library pick its fastest kernels instead

A variable you set yourself always wins. On other processors (ARM) nothing is pinned.

A mistake in params.yaml stops any stage with the message alone (what and how to fix it),
not a traceback.
"""

import os
import platform
import sys
from types import TracebackType

PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

if os.environ.get("BARDLET_NATIVE_KERNELS") != "1" and platform.machine().lower() in (
    "x86_64",
    "amd64",
):
    for _name, _value in PINNED_KERNELS.items():
        os.environ.setdefault(_name, _value)


def _params_errors_in_one_line(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    """A mistake in params.yaml or in what it points at (a pretrained folder, a download) is
    the user's to fix, not a bug: print what is wrong and how to fix it (the message says
    both), without a traceback. Anything else: as usual."""
    from bardlet.defaults import UserError  # only once something went wrong

    if isinstance(error, UserError):
        print(f"error: {error}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, trace)


sys.excepthook = _params_errors_in_one_line
