"""The SFT grid's data scales: a number of fine-tuning samples, or "all" (the paper's 60 ... 1,920 and all)."""
from __future__ import annotations

from typing import Literal, Union

Scale = Union[int, Literal["all"]]


def scale_order(values) -> list[Scale]:
    """Scales sorted the paper's way: numbers ascending, "all" last (accepts ints or their strings)."""
    vals = {v if v == "all" else int(v) for v in values}
    return sorted(vals, key=lambda v: (v == "all", 0 if v == "all" else v))
