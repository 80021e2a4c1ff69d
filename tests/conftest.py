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


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One tiny training run on the real seeds and the embedded model (configs/smoke.yaml), shared by the
    training, evaluation and inference tests: (config, run directory, TrainResult)."""
    from nlp.config import load_config
    from nlp.train import train

    out = tmp_path_factory.mktemp("smoke")
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    result = train(cfg, out, progress=False, log=lambda *a: None)
    return cfg, out, result


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def chromium(html_path, *extra, profile=None):
    """Run headless Chromium (Debian's, installed by scripts/test.sh) on a local HTML file."""
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("Chromium is not installed: scripts/test.sh installs Debian's chromium (apt-get)")
    profile = profile or html_path.parent / ".chromium-profile"
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, html_path.as_uri()],
                          capture_output=True, text=True, timeout=120)
