import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The official EntityQuestions copy beside the project (../shared/data/entityquestions), if present."""
    path = ROOT.parent / "shared" / "data" / "entityquestions"
    if not path.is_dir():
        pytest.skip("../shared/data/entityquestions not present (the dataset is read from a path, never committed)")
    return path
