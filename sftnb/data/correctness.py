"""Per-fact correctness as stored with every evaluation: a compact string ("0110..."), one character per fact in
the set's order, so that every comparison can be bootstrapped over the same facts."""
from __future__ import annotations

from typing import Sequence


def pack_correct(correct: Sequence[bool]) -> str:
    """Per-fact correctness as a compact string ("0110..."), stored with results for paired bootstraps."""
    return "".join("1" if c else "0" for c in correct)


def unpack_correct(packed: str) -> list[bool]:
    return [ch == "1" for ch in packed]
