import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
GOLD = ROOT / "annotations" / "gold"


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    """Every test runs from the project root (configs name paths relative to it)."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def seed_paths():
    paths = sorted(SEEDS.glob("*.txt"))
    assert len(paths) == 5
    return paths
