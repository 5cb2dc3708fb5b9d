import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-model or long tests (run with -m slow)")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is missing: the real-data tests need ../shared/data beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def toy_tokenizer():
    from iterdpo.config import ToyConfig
    from iterdpo.toyworld import ToyWorld, train_tokenizer

    w = ToyWorld(ToyConfig())
    return train_tokenizer(w, [" ".join(w.vocabulary())])
