"""Shared fixtures, and an environment with no telemetry and no writes outside tmp dirs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_RUN_DIR = Path(tempfile.mkdtemp(prefix="bardlet-tests-"))

# Set before any tool is imported: they read these at import time.
os.environ.update(
    {
        "DO_NOT_TRACK": "true",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "ORT_DISABLE_TELEMETRY": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "PREFECT_HOME": str(_RUN_DIR / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_TRACKING_URI": f"sqlite:///{_RUN_DIR / 'mlflow.db'}",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "DVC_SITE_CACHE_DIR": str(_RUN_DIR / "dvc-site"),
        "TIKTOKEN_CACHE_DIR": str(_RUN_DIR / "tiktoken"),
    }
)
for key, value in {
    "GIT_AUTHOR_NAME": "bardlet-tests",
    "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "bardlet-tests",
    "GIT_COMMITTER_EMAIL": "tests@example.invalid",
}.items():
    os.environ.setdefault(key, value)


def mirror_dir() -> Path:
    """The offline copy of the public data (../shared/data), or BARDLET_DATA_MIRROR."""
    configured = os.environ.get("BARDLET_DATA_MIRROR")
    if configured and not configured.startswith("http"):
        return Path(configured)
    return REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def mirror() -> Path:
    path = mirror_dir()
    if not (path / "tinyshakespeare" / "input.txt").exists():
        pytest.fail(f"data mirror not found at {path}: set BARDLET_DATA_MIRROR")
    return path


@pytest.fixture(scope="session")
def shakespeare(mirror: Path) -> str:
    return (mirror / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def small_tokenizer(shakespeare: str):
    """A 512-token BPE trained on a slice of Shakespeare: quick, and real."""
    from bardlet.tokenizer import Tokenizer

    return Tokenizer.train([shakespeare[:200_000]], vocab_size=512)


def train_params(**overrides):
    """TrainParams from params.yaml's `sft` section with `overrides`: the classes in
    bardlet/config.py hold no defaults, params.yaml holds every value."""
    from bardlet.config import TrainParams, load_params

    base = load_params(REPO / "params.yaml").sft.model_dump(exclude={"lora"})
    return TrainParams(**{**base, **overrides})
