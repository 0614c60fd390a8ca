"""The paper's own numbers and sentences (Ye et al., EMNLP 2025), as data.

Everything sftnb compares its runs against — Tables 1-11 and the verbatim findings of §3.4, §4.2 and §5.2 —
is transcribed once into ``resources/paper_results.json`` and read from there. Keeping the numbers as data
rather than literals scattered through reports, notebooks and tests gives them a single source that
``tests/test_paper_results.py`` checks, digit by digit, against the paper's text: a typo cannot hide in
one copy while another copy is right.

The helpers return pandas DataFrames laid out like the printed tables (rows ``D_train-0``..``D_train-4``,
training-set scales 240 / 1920 as an ``n_train`` index level, restore proportions ``"0"``, ``"1%"``, ...).
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources

import pandas as pd

CATEGORIES = tuple(f"D_train-{i}" for i in range(5))


@lru_cache(maxsize=1)
def _load() -> dict:
    text = resources.files("sftnb.resources").joinpath("paper_results.json").read_text(encoding="utf-8")
    return json.loads(text)


def paper_results() -> dict:
    """The whole transcription ({"_source", "tables", "claims"}); a copy, so callers may modify it."""
    return copy.deepcopy(_load())


def claim(key: str) -> str:
    """A verbatim sentence of the paper, e.g. ``claim("phenomenon_1")``."""
    claims = _load()["claims"]
    if key not in claims:
        raise KeyError(f"unknown claim {key!r}; known: {', '.join(claims)}")
    return claims[key]["text"]


def _table(name: str) -> dict:
    return copy.deepcopy(_load()["tables"][name])


def _counts(counts: dict) -> pd.DataFrame:
    """Tables 1 and 8: rows D_train / D_test / D_testood, columns mastery categories 0-4."""
    df = pd.DataFrame({f"D_{split}": values for split, values in counts.items()}).T
    df.index.name, df.columns.name = "split", "category"
    return df


def table1() -> pd.DataFrame:
    """Table 1: sample counts per mastery category for LLaMA-3-8B."""
    return _counts(_table("table1")["counts"])


def table8(model: str = "LLaMA-3-70B") -> pd.DataFrame:
    """Table 8: the same counts for LLaMA-3-70B, LLaMA-2-7B, LLaMA-2-13B or LLaMA-2-70B."""
    return _counts(_table("table8")[model]["counts"])


def table2(model: str = "LLaMA-3-8B", std: bool = False) -> pd.DataFrame:
    """Table 2 (n_train = 1920): rows D_train-k, columns Acc_test-0..4, Acc_test, Acc_testood-0..4, Acc_testood.

    ``std=True`` gives the printed subscripts (standard deviations) in the same layout.
    """
    suffix = "_std" if std else ""
    rows = {}
    for cat, r in _table("table2")[model].items():
        row = {}
        for domain in ("test", "testood"):
            row.update({f"Acc_{domain}-{i}": v for i, v in enumerate(r[domain + suffix])})
            row[f"Acc_{domain}"] = r[f"Acc_{domain}{suffix}"]
        rows[cat] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("train_set")


def _stack(frames: dict[str, pd.DataFrame], row_name: str, col_name: str) -> pd.DataFrame:
    """Stack per-scale frames ("240", "1920") under an ``n_train`` index level, as the paper prints them."""
    df = pd.concat({int(scale): f for scale, f in frames.items()}, names=["n_train", row_name])
    df.columns.name = col_name
    return df


def _restore_frame(blocks: dict) -> pd.DataFrame:
    """Tables 4 and 6: rows (n_train, restore proportion), columns D_train-0..4."""
    frames = {scale: pd.DataFrame({c: b[c] for c in CATEGORIES}, index=b["restore"]) for scale, b in blocks.items()}
    return _stack(frames, "restore", "train_set")


def table3() -> pd.DataFrame:
    """Table 3: % of total relative change held by the top 1 %..60 % most-updated parameters."""
    t = _table("table3")
    columns = [f"{p}%" for p in t.pop("proportions")]
    frames = {scale: pd.DataFrame.from_dict(rows, orient="index", columns=columns) for scale, rows in t.items()}
    return _stack(frames, "train_set", "proportion")


def table4(domain: str = "test") -> pd.DataFrame:
    """Table 4: Acc_test (``domain="test"``, sub-table a) or Acc_testood (``"testood"``, b) after restoring."""
    return _restore_frame(_table("table4")[domain])


def table6() -> pd.DataFrame:
    """Table 6: accuracy on the training set itself after restoring 0 / 5 % / 20 % of the parameters."""
    return _restore_frame(_table("table6"))


def table7() -> pd.DataFrame:
    """Table 7: rows Acc_test / Acc_testood, columns the five strategies."""
    t = _table("table7")
    return pd.DataFrame([t["Acc_test"], t["Acc_testood"]], index=["Acc_test", "Acc_testood"],
                        columns=pd.Index(t["strategies"], name="strategy"))


def table11() -> pd.DataFrame:
    """Table 11: performance when one group of four layers is restored; rows D_train-k, columns "0-3".."28-31"."""
    t = _table("table11")
    return pd.DataFrame([t[c] for c in CATEGORIES], index=pd.Index(CATEGORIES, name="train_set"),
                        columns=pd.Index(t["restored_layers"], name="restored_layers"))
