"""From stored results to intervals, tables and verdicts (issue 12): the paper's aggregates, the right rows compared,
flat files, verdicts that follow from the numbers."""
import math
import re

import numpy as np
import pandas as pd
import pytest

from sftnb import report
from sftnb.report.evidence import headline_metric
from sftnb.sections import SECTIONS, sft_grid, strategies
from sftnb.data.correctness import pack_correct
from sftnb.evaluate import paper_accuracy, pooled_accuracy
from sftnb.grid import RunKey
from sftnb.report.artifacts import save_table


def _per_set(correct_by_set: dict) -> dict:
    return {n: {"n": len(c), "accuracy": (sum(c) / len(c)) if c else math.nan, "correct": pack_correct(c)}
            for n, c in correct_by_set.items()}


def _sets(rng, p_by_cat, n_by_cat, domain="test"):
    return {f"{domain}-{c}": list(rng.random(n) < p) for c, (p, n) in enumerate(zip(p_by_cat, n_by_cat))}


# ---------------------------------------------------------------------------------------------- aggregates
def test_paper_aggregate_is_the_mean_of_five_categories_and_na_when_one_is_small():
    res = {f"test-{c}": {"n": n, "accuracy": a} for c, (n, a) in enumerate([(40, 0.1), (40, 0.3), (30, 0.5),
                                                                              (25, 0.7), (20, 0.9)])}
    names = [f"test-{c}" for c in range(5)]
    assert paper_accuracy(res, names, 20) == pytest.approx(0.5)
    assert pooled_accuracy(res, names) == pytest.approx((4 + 12 + 15 + 17.5 + 18) / 155)
    res["test-4"] = {"n": 1, "accuracy": 1.0}                  # one fact: a fifth of the metric? no: n/a
    assert math.isnan(paper_accuracy(res, names, 20))
    res["test-4"] = {"n": 0, "accuracy": math.nan}
    assert math.isnan(paper_accuracy(res, names, 1)) and not math.isnan(pooled_accuracy(res, names))


def test_grid_cells_give_intervals_and_mark_the_paper_aggregate_na():
    rng = np.random.default_rng(0)
    results = {}
    for seed in range(3):
        sets = {**_sets(rng, [0.1, 0.3, 0.5, 0.7, 0.9], [40, 40, 40, 40, 3]),
                **_sets(rng, [0.2] * 5, [20] * 5, "testood")}
        results[RunKey("divided", 0, 60, seed)] = {"per_set": _per_set(sets)}
    cells = sft_grid.grid_cells(results, 20, "M")
    acc = cells[(cells["metric"] == "Acc") & (cells["domain"] == "test")].iloc[0]
    pooled = cells[(cells["metric"] == "Acc (pooled)") & (cells["domain"] == "test")].iloc[0]
    assert math.isnan(acc["estimate"]) and acc["n_facts"] == 163                # test-4 has 3 facts < 20
    assert pooled["low"] < pooled["estimate"] < pooled["high"] and pooled["n_seeds"] == 3
    assert headline_metric(cells) == "Acc (pooled)"
    ood = cells[(cells["metric"] == "Acc") & (cells["domain"] == "testood")].iloc[0]
    assert 0.1 < ood["estimate"] < 0.3
    t = sft_grid.table_per_test_category(cells, "test", small=20)
    assert t.loc["D_train-0", "Acc_test-4"].endswith("(n=3)") and t.loc["D_train-0", "Acc_test"] == "n/a"


def test_category_difference_is_paired_over_facts_and_signed():
    rng = np.random.default_rng(1)
    base = {**_sets(rng, [0.3] * 5, [40] * 5), **_sets(rng, [0.3] * 5, [30] * 5, "testood")}
    results = {}
    for seed in range(3):
        worse = {k: [bool(x) and rng.random() < 0.5 for x in v] for k, v in base.items()}
        results[RunKey("divided", 0, 60, seed)] = {"per_set": _per_set(worse)}
        results[RunKey("divided", 2, 60, seed)] = {"per_set": _per_set(base)}
    diffs = sft_grid.category_difference_rows(results, 20, "M", "Acc")
    row = diffs[(diffs["training"] == "D_train-2") & (diffs["versus"] == "D_train-0") & (diffs["domain"] == "test")]
    assert len(row) == 1 and row.iloc[0]["low"] > 0                   # D_train-2 better, and significantly


def test_category_spread_has_a_row_at_every_scale_both_categories_have():
    """Phenomenon 2's rows from run keys (int scales, as the grid holds them): one per scale where D_train-0 and
    D_train-2 both ran. It was empty on every run until 2026-12-06 (str scales compared with int ones)."""
    rng = np.random.default_rng(2)
    base = _sets(rng, [0.3] * 5, [40] * 5)
    results = {}
    for seed in range(2):
        worse = {k: [bool(x) and rng.random() < 0.5 for x in v] for k, v in base.items()}
        for scale in (60, 240):
            results[RunKey("divided", 0, scale, seed)] = {"per_set": _per_set(worse)}
            results[RunKey("divided", 2, scale, seed)] = {"per_set": _per_set(base)}
        results[RunKey("divided", 0, 960, seed)] = {"per_set": _per_set(worse)}       # no D_train-2 at 960
    spread = sft_grid.category_spread_rows(results, 20, "M", "Acc")
    assert list(spread["scale"]) == ["60", "240"] and (spread["estimate"] > 0).all()
    assert set(spread["training"]) == {"D_train-2"} and set(spread["versus"]) == {"D_train-0"}


# ---------------------------------------------------------------------------------------------- Table 7
def _sweep(per_sets_by_k):
    return {"rows": [{"k": k, "per_set": ps} for k, ps in per_sets_by_k.items()]}


def test_table7_restoration_column_compares_restored_models_only_and_instruct_is_na_with_a_reason():
    rng = np.random.default_rng(2)
    good = {**_sets(rng, [0.6] * 5, [30] * 5), **_sets(rng, [0.6] * 5, [30] * 5, "testood")}
    worse = {k: [x and i % 3 for i, x in enumerate(v)] for k, v in good.items()}
    results = {RunKey("divided", 1, 60, 0): {"per_set": _per_set(good)},
               RunKey("mixed", None, 60, 0): {"per_set": _per_set(worse)}}
    # the unrestored model (k = 0) is the best, yet restoration must report its best *restored* model
    sweeps = {(RunKey("divided", 1, 60, 0), "top"): _sweep({0: _per_set(good), 5: _per_set(worse),
                                                              20: _per_set(worse)})}
    rows = strategies.strategy_rows(results, sweeps, _per_set(worse), 20, "M", "Acc", None, "it is itself instruct")
    level = rows[(rows["kind"] == "level") & (rows["domain"] == "test")].set_index("strategy")
    assert level.loc["Parameter Restoration", "estimate"] < level.loc["SFT (Divided)", "estimate"]
    assert level.loc["Parameter Restoration", "configuration"].startswith("D_train-1, n=60, restore")
    assert math.isnan(level.loc["M-Instruct", "estimate"]) and "itself instruct" in level.loc["M-Instruct",
                                                                                                "configuration"]
    vs = rows[rows["kind"] == "vs SFT (Divided)"]
    assert (vs[vs["strategy"] == "Parameter Restoration"]["n_seeds"] == 1).all()
    t = strategies.strategies_table(rows)
    assert list(t.index) == ["Acc_test", "Acc_testood", "configuration"] and t.loc["Acc_test", "M-Instruct"] == "n/a"


# ---------------------------------------------------------------------------------------------- files
def test_tables_are_display_markdown_over_tidy_csv(tmp_path):
    data = pd.DataFrame({"model": ["M"], "estimate": [0.5], "low": [0.4], "high": [0.6], "n_seeds": [3]})
    shown = pd.DataFrame({"a": ["50.0 ± 10.0"]}, index=pd.MultiIndex.from_tuples([(60, "0")], names=["n", "k"]))
    csv, md = save_table(shown, tmp_path, "t", data=data, caption="Caption.")
    assert pd.read_csv(csv).equals(data)
    text = md.read_text().splitlines()
    assert text[0] == "Caption." and "(" not in text[2] and "'" not in md.read_text()


# ---------------------------------------------------------------------------------------------- verdicts
def _write(folder, name, rows):
    pd.DataFrame(rows).to_csv(folder / name, index=False)


def spread_rows_and_cells() -> tuple[list[dict], list[dict]]:
    """Phenomenon 2's inputs for a model M: a spread that grows from 240 to 1,920, and flat accuracy cells."""
    spread = [{"model": "M", "domain": "test", "metric": "Acc", "training": "D_train-2", "versus": "D_train-0",
               "scale": s, "n_seeds": 3, "n_facts": 200, "estimate": e, "low": e - 0.03, "high": e + 0.03}
              for s, e in (("240", 0.03), ("1920", 0.12))]
    cells = [{"model": "M", "kind": "divided", "training": f"D_train-{c}", "scale": s, "domain": "test",
              "metric": "Acc", "n_seeds": 3, "n_facts": 100, "estimate": 0.5, "low": 0.45, "high": 0.55}
             for c in range(5) for s in ("240", "1920")]
    return spread, cells


def test_report_verdicts_follow_from_the_csvs_and_change_with_them(tmp_path):
    spread, cells = spread_rows_and_cells()
    _write(tmp_path, "fig02_accuracy_vs_scale_M.csv", cells)
    _write(tmp_path, "table02_spread_M.csv", spread)
    conc = [{"model": "M", "training": "D_train-0", "scale": "240", "top_percent": 1, "n_seeds": 3,
             "estimate": 0.9, "low": 0.85, "high": 0.95}]
    _write(tmp_path, "table03_concentration_M.csv", conc)
    text, table = report.report_from_csvs(tmp_path, SECTIONS)
    verdict = dict(zip(table["claim"], table["verdict"]))
    p2 = "Phenomenon 2 (§3.4): the spread across training categories"
    assert verdict[p2] == "shown"
    assert verdict["Table 3 (§5.1): updates concentrate in the top 1 %"] == "shown"
    assert verdict["Phenomenon 1 (§3.4): a peak at 240, then a decline"] == "no data"   # no scale differences
    assert "no data" in report.summary_markdown(table) and "**out of range**:" in text
    _write(tmp_path, "table02_spread_M.csv", [r | {"estimate": -r["estimate"], "low": -r["high"], "high": -r["low"]}
                                             for r in spread])
    _, table2 = report.report_from_csvs(tmp_path, SECTIONS)
    assert dict(zip(table2["claim"], table2["verdict"]))[p2] == "opposite"
    report.write_report(tmp_path, SECTIONS)
    block = report.readme_block(tmp_path)
    assert block.startswith(report.readme_markers(tmp_path.name)[0]) and f"- {p2}, M: **opposite**: spread at n=1920" in block


def test_report_cli_rewrites_the_report_and_the_readme_section(tmp_path, capsys):
    from sftnb.cli import main
    _write(tmp_path, "table03_concentration_M.csv", [{"model": "M", "training": "D_train-0", "scale": "240",
                                                      "top_percent": 1, "n_seeds": 3, "estimate": 0.9, "low": 0.85,
                                                      "high": 0.95}])
    readme = tmp_path / "README.md"
    begin, end = report.readme_markers(tmp_path.name)
    readme.write_text(f"intro\n{begin}\nSTALE-VERDICTS\n{end}\noutro\n")
    assert main(["report", str(tmp_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "STALE-VERDICTS" not in text
    assert re.search(r"\| Table 3 \(§5\.1\): updates concentrate in the top 1 % +\| shown +\|", text)
    assert text.startswith("intro\n") and text.endswith("outro\n") and (tmp_path / "report.md").is_file()
    assert main(["report", str(tmp_path / "nope")]) == 2


def _scale_csvs(folder):
    """A run folder's accuracy, restoration and spread CSVs for a model M: D_train-0 at 60 (one seed) and 240 (two),
    D_train-1 at 60 only (it holds 100 facts)."""
    def level(training, scale, seeds, e):
        return {"domain": "test", "metric": "Acc", "model": "M", "kind": "divided", "training": training,
                "scale": scale, "n_seeds": seeds, "n_facts": 500, "estimate": e, "low": e - 0.05, "high": e + 0.05}
    _write(folder, "fig02_accuracy_vs_scale_M.csv",
           [level("D_train-0", 60, 1, 0.5), level("D_train-0", 240, 2, 0.6), level("D_train-1", 60, 1, 0.4),
            level("D_train-0", 240, 2, 0.6) | {"metric": "Acc (pooled)", "estimate": 0.9}])
    _write(folder, "table08_mastery_counts_M.csv", [{"category": 0, "D_train": 300, "D_test": 60, "D_testood": 9},
                                                    {"category": 1, "D_train": 100, "D_test": 60, "D_testood": 9},
                                                    {"category": "total", "D_train": 400, "D_test": 120,
                                                     "D_testood": 18}])
    _write(folder, "table04_restore_test_M.csv",
           [{"k": k, "domain": "test", "metric": "Acc", "kind": kind, "model": "M", "training": "D_train-0",
             "scale": 240, "strategy": "top", "n_seeds": 1, "n_facts": 500, "estimate": e, "low": lo, "high": hi}
            for k, kind, e, lo, hi in ((0.0, "level", 0.6, 0.55, 0.65), (5.0, "gain", -0.03, -0.05, -0.01),
                                       (20.0, "gain", 0.01, -0.02, 0.04))])
    _write(folder, "table02_spread_M.csv",
           [{"domain": "test", "metric": "Acc", "model": "M", "scale": s, "training": "D_train-2",
             "versus": "D_train-0", "n_seeds": 2, "n_facts": 500, "estimate": e, "low": e - 0.02, "high": e + 0.02}
            for s, e in ((240, 0.01), (60, -0.01))])


def test_scale_tables_are_generated_from_the_run_csvs(tmp_path):
    """The README's tables across scales come from the CSVs: a cell on fewer seeds says so, a category too small
    for a scale says how many facts it holds, a gain is starred when its interval excludes 0, the spread follows
    the scales' order; a run without restoration or spread gets the accuracy table alone."""
    from sftnb.infra.errors import SftnbError
    from sftnb.report import scale_tables as st
    _scale_csvs(tmp_path)
    acc = st.accuracy_by_scale(tmp_path, "M").set_index("training")
    assert acc.loc["D_train-0", "n = 60"] == "50.0 ± 5.0 (1 seed)" and acc.loc["D_train-0", "n = 240"] == "60.0 ± 5.0"
    assert acc.loc["D_train-1", "n = 240"] == "n/a (100 facts)" and acc.loc["D_train-1", "n = 60"].endswith("(1 seed)")
    gains = st.restoration_gains(tmp_path, "M")
    assert gains[["k", "D_train-0"]].values.tolist() == [["5%", "-3.0 [-5.0, -1.0]*"], ["20%", "+1.0 [-2.0, +4.0]"]]
    spread = st.category_spread(tmp_path, "M")
    assert spread["n"].tolist() == [60, 240] and spread["Acc_test (points)"].tolist() == ["-1.0 [-3.0, +1.0]", "+1.0 [-1.0, +3.0]"]
    block = st.scale_tables_block(tmp_path)
    begin, end = st.scale_tables_markers(tmp_path.name)
    assert block.startswith(begin) and block.endswith(end) and block.count("| D_train-0 ") == 2
    assert "Facts per mastery category, M" in block and re.search(r"\| total +\| +400 \|", block)
    for name in ("table04_restore_test_M.csv", "table02_spread_M.csv", "table08_mastery_counts_M.csv"):
        (tmp_path / name).unlink()
    block = st.scale_tables_block(tmp_path)
    assert "Restoration" not in block and "spread" not in block and "| n/a " in block
    (tmp_path / "fig02_accuracy_vs_scale_M.csv").unlink()
    with pytest.raises(SftnbError, match="no fig02_accuracy_vs_scale"):
        st.scale_tables_block(tmp_path)


def test_update_readme_rewrites_the_scale_tables_where_the_readme_has_them(tmp_path):
    from sftnb.infra.errors import SftnbError
    from sftnb.report.scale_tables import scale_tables_block, scale_tables_markers
    _scale_csvs(tmp_path)
    _write(tmp_path, "table03_concentration_M.csv", [{"model": "M", "training": "D_train-0", "scale": "240",
                                                      "top_percent": 1, "n_seeds": 3, "estimate": 0.9, "low": 0.85,
                                                      "high": 0.95}])
    report.write_report(tmp_path, SECTIONS)
    begin, end = report.readme_markers(tmp_path.name)
    t_begin, t_end = scale_tables_markers(tmp_path.name)
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{begin}\nold\n{end}\nb\n{t_begin}\nSTALE-TABLE\n{t_end}\nc\n")
    report.update_readme(readme, tmp_path)
    text = readme.read_text()
    assert "STALE-TABLE" not in text and scale_tables_block(tmp_path) in text and text.endswith(f"{t_end}\nc\n")
    readme.write_text(f"{begin}\n{end}\nb\n{t_begin}\nno end\n")             # half a block: refused, unchanged
    with pytest.raises(SftnbError, match="need one pair of lines"):
        report.update_readme(readme, tmp_path)
    assert readme.read_text() == f"{begin}\n{end}\nb\n{t_begin}\nno end\n"
    readme.write_text(f"{begin}\n{end}\n")                                        # no tables: verdicts only
    report.update_readme(readme, tmp_path)
    assert t_begin not in readme.read_text()


@pytest.mark.parametrize("run", ["embedded", "testbed-paper-range"])
def test_the_committed_report_follows_from_the_committed_csvs(run):
    """A committed run's report.md verdicts are what its CSVs give, and the README shows exactly those."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    folder = root / "figures" / run
    if not (folder / "report_verdicts.csv").is_file():
        pytest.skip(f"figures/{run} has no report yet (its make target writes it)")
    _, table = report.report_from_csvs(folder, SECTIONS)
    committed = pd.read_csv(folder / "report_verdicts.csv")
    assert table[["claim", "model", "verdict"]].equals(committed[["claim", "model", "verdict"]])
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert report.readme_block(folder) in readme
    from sftnb.report.scale_tables import scale_tables_block, scale_tables_markers
    if scale_tables_markers(run)[0] in readme:             # the run's tables across scales, where the README has them
        assert scale_tables_block(folder) in readme


def test_kl_steps_around_240_from_run_keys():
    """Finding 1's pre-specified steps from run keys (int scales, as the grid holds them): KL(240) - KL(60) and
    KL(960) - KL(240) per category with a scale on each side of 240. It was empty on every run until 2026-12-06
    (the pivot "240" looked up among int scales), so Finding 1 read "out of range" at 60 / 240 / 960."""
    from sftnb.sections import token_kl
    results = {}
    for seed in range(2):
        for scale, kl in ((60, 0.05), (240, 0.01), (960, 0.08)):
            results[RunKey("divided", 0, scale, seed)] = {"kl": kl + 0.001 * seed}
        results[RunKey("divided", 4, 60, seed)] = {"kl": 0.05}             # no scale above 240: no steps
        results[RunKey("divided", 4, 240, seed)] = {"kl": 0.02}
    u = token_kl.kl_u_rows(results, "M")
    assert list(zip(u["training"], u["step"], u["versus"], u["scale"])) == [
        ("D_train-0", "decrease", "60", "240"), ("D_train-0", "increase", "240", "960")]
    assert u.iloc[0]["estimate"] < 0 < u.iloc[1]["estimate"]
