"""The restoration strategies (paper §5.1, Table 7): one registry that selection, the command line and the params
schema all read, so a strategy added here is known everywhere at once.

A strategy says how the elements of a region are ranked before the first k % are restored: by the relative change
r (``sftnb.restoration.selection.relative_change``) from its largest or its smallest end, or by seeded uniform draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

from ..infra.errors import SftnbError


@dataclass(frozen=True)
class Strategy:
    name: str
    ranks_by_change: bool       # keys come from r; False: from uniform draws (no r, no threshold value)
    largest_first: bool         # which end of the ranking is restored first (meaningless without r)
    uses_seed: bool             # the selection depends on the seed (and is cached per seed)
    description: str


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("top", ranks_by_change=True, largest_first=True, uses_seed=False,
             description="the most-changed elements first (the paper's restoration)"),
    Strategy("bottom", ranks_by_change=True, largest_first=False, uses_seed=False,
             description="the least-changed elements first"),
    Strategy("random", ranks_by_change=False, largest_first=True, uses_seed=True,
             description="a uniform random choice of elements, reproducible per seed"),
)}
DEFAULT_STRATEGY = "top"


def unknown_strategy(name: object) -> str:
    """The one line that refuses a strategy name (shared by the library and the params schema)."""
    return f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})"


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``, or an SftnbError listing the known ones."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise SftnbError(unknown_strategy(name)) from None


def _known_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(unknown_strategy(name))      # pydantic reports it as the field's one-line error
    return name


# the params schema's type of a strategy name (``restore.strategies``): checked against the registry's keys
StrategyName = Annotated[str, AfterValidator(_known_strategy)]
