"""Tables built from stored results: layouts as the paper prints them, flat files, the right rows compared."""
import math

import pandas as pd

from sftnb.experiment import RunKey
from sftnb.figures import kl_table, restore_tables, strategies_table, train_restore_table
from sftnb.reports import save_table


def _sweep(accs, ks=(0, 5, 20)):
    df = pd.DataFrame({"k": list(ks), "acc_test": accs, "acc_testood": [a - 0.1 for a in accs]})
    df["train"] = [a / 2 for a in accs]
    return df


KEY0, KEY1 = RunKey("divided", 0, 240, 0), RunKey("divided", 1, 240, 0)


def test_restore_tables_use_the_papers_layout_and_files_are_flat(tmp_path):
    sweeps = {(KEY0, "top"): _sweep([0.50, 0.55, 0.52]), (KEY1, "top"): _sweep([0.60, 0.61, 0.58]),
              (KEY0, "random"): _sweep([0.50, 0.49, 0.47])}
    t4 = restore_tables(sweeps)["test"]
    assert list(t4.index) == [(240, "0"), (240, "5%"), (240, "20%")]
    assert list(t4.columns) == ["D_train-0", "D_train-1", "D_train-0 (random)"]
    assert math.isclose(t4.loc[(240, "5%"), "D_train-0"], 55.0)
    t6 = train_restore_table({KEY0: _sweep([0.50, 0.55, 0.52])})
    assert math.isclose(t6.loc[(240, "20%"), "D_train-0"], 26.0)
    csv, md = save_table(t4, tmp_path, "t4")
    assert csv.read_text().splitlines()[0] == "n_train,restored,D_train-0,D_train-1,D_train-0 (random)"
    assert "(" not in md.read_text().splitlines()[2] and "'" not in md.read_text()      # no tuple headers


def test_table7_restoration_column_compares_restored_models_only():
    grid = pd.DataFrame([
        {"kind": "divided", "category": 1, "scale": "240", "seed": 0, "status": "done", "acc_test": 0.60,
         "acc_testood": 0.58},
        {"kind": "mixed", "category": None, "scale": "240", "seed": 0, "status": "done", "acc_test": 0.59,
         "acc_testood": 0.57}])
    # the unrestored model (k = 0) is the best row, yet restoration must report its best *restored* model
    sweeps = {(KEY1, "top"): _sweep([0.60, 0.58, 0.55]), (KEY0, "top"): _sweep([0.50, 0.56, 0.53])}
    t7 = strategies_table(grid, sweeps, {"acc_test": 0.30, "acc_testood": 0.10}, "M")
    assert t7.loc["Acc_test", "SFT (Divided)"] == 60.0
    assert math.isclose(t7.loc["Acc_test", "Parameter Restoration"], 58.0)
    assert math.isclose(t7.loc["Acc_testood", "Parameter Restoration"], 48.0)       # the same model's
    assert t7.loc["Acc_test", "M (no SFT)"] == 30.0


def test_kl_table_reports_accuracy_in_percent_and_the_rank_correlation():
    grid = pd.DataFrame([{"kind": "divided", "category": c, "scale": s, "seed": 0, "status": "done",
                          "kl": kl, "acc_test-2": acc}
                         for c, s, kl, acc in [(0, "60", 0.001, 0.8), (0, "120", 0.002, 0.7), (1, "60", 0.003, 0.6),
                                               (1, "120", 0.004, 0.5)]])
    t, rho = kl_table(grid, 2)
    assert list(t.columns) == ["training data", "scale", "seed", "kl", "Acc_test-2 (%)"]
    assert t["Acc_test-2 (%)"].tolist() == [80.0, 70.0, 60.0, 50.0] and math.isclose(rho, -1.0)
