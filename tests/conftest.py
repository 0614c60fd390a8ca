"""Shared fixtures: the EntityQuestions copy beside the project (when present) and a tiny random model."""
import os
from pathlib import Path

import pytest

# Tests never reach the network: models come from local folders or are built in memory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]          # the repository root (holds params/, pyproject.toml)
SHARED_DATA = ROOT.parent / "shared" / "data" / "entityquestions"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The official EntityQuestions copy at ../shared/data/entityquestions; skip the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/entityquestions not present (the dataset is read from a path, never committed)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random LLaMA + tokenizer saved as a Hugging Face folder, built once per test session."""
    from sftnb.lm.models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0)
