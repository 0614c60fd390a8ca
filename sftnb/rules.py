"""The paper's claims as rules: each reads tidy rows and gives a verdict inside the claim's domain.

Each claim (``CLAIMS``) carries the paper's sentence (a key of ``resources/paper_results.json``), its *domain*
(where the paper makes the statement: scales, k, categories, metric) and a rule. A rule is a function of a
``Tables`` (artifact name -> tidy DataFrame, read from a run's CSVs or built from the paper's own numbers by
``sftnb.paper_rows``) that returns one ``verdicts.Result`` per model. Its docstring is the rule as report.md
prints it. The vocabulary, Holm's correction and the combination of intervals live in ``sftnb.verdicts``.

The paper's models are LLaMA-2/3 of 7B-70B parameters; a verdict on another model says whether the statement
holds for that model, inside the same scales and k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .rules_restoration import (appendix_e1, restoration_finding_1, restoration_finding_2, table3, table4, table5,
                                table6, table7, table11)
from .rules_sft import kl_finding_1, kl_finding_2, phenomenon_1, phenomenon_2
from .verdicts import K_PAPER, LARGE, PEAK, TASK_MARGIN, Result, Tables

# --------------------------------------------------------------------------------------------- the claims
@dataclass(frozen=True)
class Claim:
    title: str
    key: str                     # the paper's sentence: resources/paper_results.json "claims"
    domain: str                  # where the paper makes it
    rule: Callable[[Tables], list[Result]]


CLAIMS = [
    Claim("Phenomenon 1 (§3.4): a peak at 240, then a decline", "phenomenon_1",
          "LLaMA-3-8B/70B (Fig. 2), scales 60-1,920; tested: Acc_test at 240 vs the largest scale >= 960",
          phenomenon_1),
    Claim("Phenomenon 2 (§3.4): the spread across training categories", "phenomenon_2",
          "LLaMA-3-8B, n = 1,920 vs 240 (§3.4, Table 2); tested: D_train-2 - D_train-0 at the largest scale >= 960 "
          "and its growth from the smallest", phenomenon_2),
    Claim("Finding 1 (§4.2): KL first decreases, then increases", "section4_finding_1",
          "LLaMA-3-8B (Fig. 5), scales 60-1,920, minimum near 240", kl_finding_1),
    Claim("Finding 2 (§4.2): larger KL, lower accuracy on known facts", "section4_finding_2",
          "LLaMA-3-8B (Figs. 4-5), Acc_test-4, scales 60-1,920; tested within scale", kl_finding_2),
    Claim("Table 3 (§5.1): updates concentrate in the top 1 %", "table3_concentration",
          "LLaMA-3-8B, n = 240 and 1,920, r = |s-p|/|p|", table3),
    Claim("Table 4 (§5.2): restoring 20 % improves Acc_test", "table4_gains",
          "LLaMA-3-8B, n = 1,920 (>= 960), k = 20 % (1-20 % secondary)", table4),
    Claim("§5.2 Finding 1: most updates are unnecessary", "section5_finding_1",
          "LLaMA-3-8B, n = 1,920 (>= 960), k = 20 %", restoration_finding_1),
    Claim("§5.2 Finding 2: larger or lower-mastery data is more affected", "section5_finding_2",
          "LLaMA-3-8B, n = 240 vs 1,920 (>= 960), D_train-0 vs D_train-4, k = 20 %", restoration_finding_2),
    Claim("Table 5 (§5.2): restoring <= 20 % keeps other tasks", "table5_tasks",
          "LLaMA-3-8B on XSum and GSM8K, k = 1-20 %", table5),
    Claim("Table 6 (App. C.2): restoration improves training accuracy", "table6_training",
          "LLaMA-3-8B, n = 1,920 (>= 960), k = 20 % (5 % secondary)", table6),
    Claim("Table 7 (App. C.3): restoration is the best strategy", "table7_strategies",
          "LLaMA-3-8B, best configurations at n = 1,920 (>= 960)", table7),
    Claim("App. E.1 (Tables 9-10): redundancy in the first layers and the FFN", "appendix_e1",
          "LLaMA-3-8B, 32 layers", appendix_e1),
    Claim("Table 11 (App. E.2): lower layers crucial, middle layers least", "table11_layers",
          "LLaMA-3-8B, groups of 4 layers", table11),
]

__all__ = ["Tables", "Claim", "CLAIMS", "LARGE", "PEAK", "K_PAPER", "TASK_MARGIN"]
