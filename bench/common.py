"""What the bench scripts share: where the data mirror is."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """BARDLET_DATA_MIRROR, or ../shared/data beside the repo; exits with a hint otherwise."""
    env = os.environ.get("BARDLET_DATA_MIRROR", "")
    for candidate in (Path(env) if env else None, REPO.parent / "shared" / "data"):
        if candidate is not None and candidate.is_dir():
            return candidate
    sys.exit("data mirror not found: set BARDLET_DATA_MIRROR to the folder with the data files")
