"""The paper's claims as rules (sftnb.sections' claims, sftnb.report.verdicts, sftnb.report.paper_rows): each rule on synthetic rows gives
shown, opposite, inconclusive and out of range where it should; the rules find the paper's own numbers shown and
their reversal opposite; Finding 2 is not fooled by Simpson's paradox."""
import numpy as np
import pandas as pd
import pytest

from sftnb import report, sections
from sftnb.grid import RunKey
from sftnb.report import paper_rows, verdicts
from sftnb.report.verdicts import Tables
from sftnb.sections.token_kl import kl_accuracy_within_scale

CATS = [f"D_train-{c}" for c in range(5)]


def _iv(e, h, **ids):
    return {**ids, "n_seeds": 3, "estimate": e, "low": e - h, "high": e + h}


def _rule(key):
    return next(c.rule for c in sections.CLAIMS if c.key == key)


def _verdict(key, tables, model="M"):
    found = [r for r in _rule(key)(tables) if r.model == model]
    assert len(found) == 1, found
    return found[0].verdict


# --------------------------------------------------------------------------------------------- mechanics
def test_p_value_matches_the_interval_and_holm_is_step_down():
    assert verdicts.p_value({"estimate": 0.05, "low": 0.0, "high": 0.10}) == pytest.approx(0.05, abs=1e-9)
    assert verdicts.p_value({"estimate": 0.05, "low": 0.01, "high": 0.09}) < 0.05
    assert verdicts.p_value({"estimate": -0.5, "low": -0.6, "high": -0.4}, threshold=-0.45) > 0.05
    assert np.isnan(verdicts.p_value({"estimate": np.nan, "low": np.nan, "high": np.nan}))
    np.testing.assert_allclose(verdicts.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    borderline = _iv(0.05, 0.045)                                        # p = 0.03 alone
    assert verdicts.holm_signs([borderline], expected=1) == [1]
    assert verdicts.holm_signs([borderline] * 3, expected=1) == [0, 0, 0]   # does not survive Holm over three
    assert verdicts.holm_signs([_iv(0.05, 0.01), _iv(-0.05, 0.01)], expected=1) == [1, -1]


def test_combine_independent_adds_variances_and_respects_asymmetry():
    a = {"estimate": 0.5, "low": 0.4, "high": 0.7}
    b = {"estimate": 0.2, "low": 0.1, "high": 0.25}
    d = verdicts.difference_of(a, b)
    assert d["estimate"] == pytest.approx(0.3)
    assert d["low"] == pytest.approx(0.3 - np.hypot(0.1, 0.05)) and d["high"] == pytest.approx(0.3 + np.hypot(0.2, 0.1))
    m = verdicts.mean_of([a, a])
    assert m["estimate"] == pytest.approx(0.5) and m["high"] - 0.5 == pytest.approx(0.2 / np.sqrt(2))


def test_combination_and_parts():
    S, O, I = verdicts.SHOWN, verdicts.OPPOSITE, verdicts.INCONCLUSIVE
    assert verdicts.combine([S, S, I]) == S and verdicts.combine([S, O, S]) == I
    assert verdicts.combine([O, I]) == O and verdicts.combine([]) == verdicts.NO_DATA
    assert verdicts.parts([1, 1]) == S and verdicts.parts([1, -1]) == I and verdicts.parts([0, -1]) == O


# --------------------------------------------------------------------------------------------- synthetic tables
def _accuracy(scales, model="M"):
    return pd.DataFrame([_iv(0.5, 0.02, model=model, domain="test", metric="Acc", kind="divided", training=c,
                             scale=str(s)) for c in CATS for s in scales])


def _p1(scales, effect, h=0.02):
    top = str(scales[-1])
    d = pd.DataFrame([_iv(e, h, model="M", domain="test", metric="Acc", kind="divided", training=c, scale=str(s),
                          versus=top) for c, e in zip(CATS, effect) for s in scales[:-1]])
    return Tables(accuracy=_accuracy(scales), scale_differences=d)


@pytest.mark.parametrize("effect,expected", [
    ([-0.10, -0.01, 0.0, 0.0, 0.01], "shown"),            # one significant decline, no significant rise
    ([0.10, 0.08, 0.0, 0.0, 0.0], "opposite"),            # more data beyond 240 helps
    ([0.10, -0.10, 0.0, 0.0, 0.0], "inconclusive"),
    ([0.0, 0.0, 0.0, 0.0, 0.0], "inconclusive"),
])
def test_phenomenon_1(effect, expected):
    assert _verdict("phenomenon_1", _p1([60, 240, 960], effect)) == expected


def test_phenomenon_1_is_out_of_range_below_the_papers_scales_and_without_240():
    r = _rule("phenomenon_1")(_p1([15, 30, 60], [0.1] * 5))[0]
    assert r.verdict == "out of range" and "240" in r.lines[0] and "15, 30, 60" in r.lines[0]
    assert _verdict("phenomenon_1", _p1([60, 480, 1920], [-0.1] * 5)) == "out of range"


def _p2(scales, spreads, h=0.02):
    s = pd.DataFrame([_iv(e, h, model="M", domain="test", metric="Acc", scale=str(n), training="D_train-2",
                          versus="D_train-0") for n, e in zip(scales, spreads)])
    return Tables(accuracy=_accuracy(scales), category_spread=s)


@pytest.mark.parametrize("spreads,expected", [((0.03, 0.12), "shown"), ((-0.03, -0.12), "opposite"),
                                              ((0.12, 0.12), "inconclusive"), ((0.0, 0.01), "inconclusive")])
def test_phenomenon_2(spreads, expected):
    assert _verdict("phenomenon_2", _p2([240, 1920], spreads)) == expected
    assert _verdict("phenomenon_2", _p2([15, 60], spreads)) == "out of range"


def _kl(scales, steps, h=0.001):
    levels = pd.DataFrame([_iv(0.01, 0.001, model="M", metric="KL", training=c, scale=str(s))
                           for c in CATS for s in scales])
    u = pd.DataFrame([_iv(e, h, model="M", metric="KL", training=c, step=step, scale=b, versus=a)
                      for c in CATS for (step, a, b), e in zip((("decrease", str(scales[0]), "240"),
                                                               ("increase", "240", str(scales[-1]))), steps)])
    return Tables(kl_levels=levels, kl_u=u if "240" in map(str, scales) else pd.DataFrame())


@pytest.mark.parametrize("steps,expected", [((-0.01, 0.01), "shown"), ((0.01, -0.01), "opposite"),
                                            ((0.01, 0.01), "opposite"), ((-0.01, -0.01), "opposite"),
                                            ((-0.01, 0.0), "inconclusive")])
def test_kl_finding_1_u_shape_inverted_u_and_monotone(steps, expected):
    assert _verdict("section4_finding_1", _kl([60, 240, 960], steps)) == expected


def test_kl_finding_1_out_of_range_without_a_scale_on_each_side_of_240():
    assert _verdict("section4_finding_1", _kl([15, 30, 60], (0.01, 0.01))) == "out of range"


def _runs(points):
    """{RunKey: unit result} with a given mean KL and Acc_test-4 per (category, scale, seed)."""
    return {RunKey("divided", c, s, seed): {"kl": [kl], "metrics": {"acc_test-4": acc}}
            for (c, s, seed), (kl, acc) in points.items()}


def test_finding_2_simpson_case_is_not_opposite():
    # Scale raises KL and accuracy together (pooled rho > 0); within each scale, more KL means less accuracy.
    rng = np.random.default_rng(0)
    points = {}
    for j, scale in enumerate((60, 240, 960)):
        for c in range(5):
            for seed in range(3):
                kl = 1.0 * j + 0.1 * c + 0.01 * rng.random()
                points[(c, scale, seed)] = (kl, 0.3 * j - 0.05 * c + 0.002 * rng.random())
    rows = kl_accuracy_within_scale(_runs(points), 4, "M")
    pooled = rows[rows["role"] == "descriptive"].iloc[0]
    assert pooled["estimate"] > 0.5 and pooled["low"] > 0                      # the pooled rho says "opposite"
    r = _rule("section4_finding_2")(Tables(kl_within=rows))[0]
    assert r.verdict == "shown" and "primary" in r.lines[0]
    assert any("descriptive" in line for line in r.lines)


def test_finding_2_out_of_range_below_the_papers_smallest_scale():
    points = {(c, s, seed): (0.1 * c + s, 0.5) for c in range(5) for s in (15, 30) for seed in range(2)}
    rows = kl_accuracy_within_scale(_runs(points), 4, "M")
    assert _verdict("section4_finding_2", Tables(kl_within=rows)) == "out of range"


def _shares(scale, share, zeros_share=None):
    a = pd.DataFrame([_iv(share, 0.005, model="M", training=c, scale=str(scale), top_percent=p)
                      for c in CATS for p in (1, 20)])
    b = a.copy() if zeros_share is None else a.assign(estimate=zeros_share, low=zeros_share - 0.005,
                                                        high=zeros_share + 0.005)
    return Tables(concentration=a, concentration_nonzero=b)


@pytest.mark.parametrize("share,expected", [(0.74, "shown"), (0.60, "opposite"), (0.702, "inconclusive")])
def test_table3(share, expected):
    assert _verdict("table3_concentration", _shares(240, share)) == expected
    assert _verdict("table3_concentration", _shares(60, share)) == "out of range"


def test_table3_on_a_model_with_exact_zeros_uses_the_nonzero_shares_and_says_so():
    r = _rule("table3_concentration")(_shares(1920, 0.999, zeros_share=0.55))[0]
    assert r.verdict == "opposite" and "exact zeros" in r.lines[-1] and "55.0" in r.lines[0]


def _restore(scales, gains, ks=(1.0, 5.0, 20.0), domain="test", h=0.02, name="restore_test"):
    rows = []
    for s in scales:
        for c, g in zip(CATS, gains[str(s)] if isinstance(gains, dict) else gains):
            ids = dict(model="M", domain=domain, metric="Acc", training=c, scale=str(s), strategy="top")
            rows.append(_iv(0.5, h, kind="level", k=0.0, **ids))
            for k in ks:
                rows.append(_iv(0.5 + g, h, kind="level", k=k, **ids))
                rows.append(_iv(g, h, kind="gain", k=k, **ids))
    return Tables({name: pd.DataFrame(rows)})


@pytest.mark.parametrize("gains,expected", [([0.1, 0.06, 0.03, 0.0, 0.03], "shown"),
                                            ([-0.1, -0.06, -0.03, 0.0, 0.0], "opposite"),
                                            ([0.1, -0.06, 0.0, 0.0, 0.0], "inconclusive")])
def test_table4(gains, expected):
    assert _verdict("table4_gains", _restore([240, 1920], gains)) == expected
    r = _rule("table4_gains")(_restore([60], gains))[0]
    assert r.verdict == "out of range" and "960" in r.lines[0]
    assert _verdict("table4_gains", _restore([1920], gains, ks=(5.0,))) == "out of range"   # no k = 20 %


@pytest.mark.parametrize("gains,expected", [([-0.02, 0.03, 0.06, 0.02, 0.02], "shown"),   # the paper's exception
                                            ([-0.05, -0.03, -0.06, 0.0, 0.0], "opposite"),
                                            ([0.05, -0.05, 0.0, 0.0, 0.0], "inconclusive")])
def test_table6(gains, expected):
    t = _restore([240, 1920], gains, ks=(5.0, 20.0), domain="train", h=0.01, name="restore_train")
    assert _verdict("table6_training", t) == expected
    assert _verdict("table6_training", _restore([60], gains, ks=(20.0,), domain="train",
                                                name="restore_train")) == "out of range"


@pytest.mark.parametrize("share,gains,expected", [(0.92, [0.05] * 5, "shown"), (0.92, [-0.05] * 5, "inconclusive"),
                                                  (0.30, [-0.05] * 5, "opposite"), (0.92, [0.0] * 5, "inconclusive")])
def test_restoration_finding_1(share, gains, expected):
    t = _restore([240, 1920], gains)
    t.update(_shares(1920, share))
    assert _verdict("section5_finding_1", t) == expected


@pytest.mark.parametrize("gains,expected", [
    ({"240": [0.02, 0.0, 0.0, 0.0, -0.05], "1920": [0.10, 0.06, 0.03, 0.01, 0.03]}, "shown"),
    ({"240": [0.10, 0.06, 0.03, 0.01, 0.03], "1920": [0.0, 0.0, 0.0, 0.0, 0.08]}, "opposite"),
    ({"240": [0.05] * 5, "1920": [0.05] * 5}, "inconclusive"),
])
def test_restoration_finding_2(gains, expected):
    assert _verdict("section5_finding_2", _restore([240, 1920], gains, h=0.01)) == expected
    assert _verdict("section5_finding_2", _restore([1920], gains["1920"])) == "out of range"


def _tasks(change, h=0.005, ks=(5.0, 20.0)):
    return Tables(tasks=pd.DataFrame([_iv(change, h, model="M", task=t, metric=m, k=k, kind="gain")
                                      for t, m in (("math", "accuracy"), ("summary", "rouge1")) for k in ks]))


@pytest.mark.parametrize("change,expected", [(0.0, "shown"), (-0.10, "opposite"), (-0.02, "inconclusive")])
def test_table5_non_inferiority(change, expected):
    assert _verdict("table5_tasks", _tasks(change)) == expected
    assert _verdict("table5_tasks", _tasks(change, ks=(40.0,))) == "out of range"


def _strategies(diff, scales=(240, 1920)):
    rows = [_iv(diff, 0.01, model="M", strategy="Parameter Restoration", configuration="x", domain="test",
                metric="Acc", kind="vs SFT (Divided)"),
            _iv(0.0, 0.01, model="M", strategy="SFT (Mixed)", configuration="y", domain="test", metric="Acc",
                kind="vs SFT (Divided)")]
    return Tables(strategies=pd.DataFrame(rows), accuracy=_accuracy(scales))


@pytest.mark.parametrize("diff,expected", [(0.04, "shown"), (-0.04, "opposite"), (0.005, "inconclusive")])
def test_table7(diff, expected):
    assert _verdict("table7_strategies", _strategies(diff)) == expected
    assert _verdict("table7_strategies", _strategies(diff, scales=(15, 60))) == "out of range"


def _layers(acc_by_group):
    groups = ["0-9", "10-19", "20-29", "30-39"][:len(acc_by_group)]
    return Tables(layers=pd.DataFrame([_iv(a, 0.02, model="M", domain="test", metric="Acc", kind="level",
                                           training=c, scale="60", layers=g)
                                       for c in CATS for g, a in zip(groups, acc_by_group)]))


@pytest.mark.parametrize("acc,expected", [((0.10, 0.55, 0.56, 0.50), "shown"),     # lowest worst, middle best
                                          ((0.62, 0.10, 0.12, 0.60), "opposite"),  # middle worst, lowest least
                                          ((0.10, 0.40, 0.42, 0.55), "inconclusive"),  # (a) holds, (b) reversed
                                          ((0.50, 0.50, 0.50, 0.50), "inconclusive")])
def test_table11_tests_both_halves(acc, expected):
    assert _verdict("table11_layers", _layers(acc)) == expected
    assert _verdict("table11_layers", _layers(acc[:2])) == "out of range"


def _redundancy(gap, ffn):
    return Tables(redundancy=pd.DataFrame([
        _iv(gap, 0.05, model="M", training="D_train-0", scale="60", metric="first 3 minus last 2 layers, share per layer (points)"),
        _iv(ffn, 2.0, model="M", training="D_train-0", scale="60", metric="FFN share (%)")]))


@pytest.mark.parametrize("gap,ffn,expected", [(0.5, 80, "shown"), (-0.5, 30, "opposite"), (0.5, 30, "inconclusive")])
def test_appendix_e1(gap, ffn, expected):
    assert _verdict("appendix_e1", _redundancy(gap, ffn)) == expected


def test_every_claim_has_a_rule_test_and_its_sentence():
    tested = {"phenomenon_1", "phenomenon_2", "section4_finding_1", "section4_finding_2", "table3_concentration",
              "table4_gains", "table6_training", "section5_finding_1", "section5_finding_2", "table5_tasks",
              "table7_strategies", "table11_layers", "appendix_e1"}
    assert {c.key for c in sections.CLAIMS} == tested and len(sections.CLAIMS) >= 12
    from sftnb.report import paper
    for c in sections.CLAIMS:
        assert paper.claim(c.key) and c.domain and c.rule.__doc__


# --------------------------------------------------------------------------------------------- the paper itself
def test_the_rules_find_every_claim_the_paper_prints_numbers_for_shown():
    got = report.paper_verdicts(sections.SECTIONS).set_index("key")["verdict"]
    figures_only = {"section4_finding_1", "section4_finding_2"}          # Figures 4-5: no numbers printed
    assert (got.drop(list(figures_only)) == "shown").all(), got.to_dict()
    assert (got[list(figures_only)] == "no data").all()


@pytest.mark.parametrize("key", sorted(paper_rows.REVERSALS))
def test_the_rules_find_the_papers_numbers_reversed_opposite(key):
    reversed_tables = paper_rows.reverse(paper_rows.paper_tables(), key)
    assert _verdict(key, reversed_tables, paper_rows.PAPER_MODEL) == "opposite"


def test_report_paper_cli_prints_one_line_per_claim(capsys):
    from sftnb.cli import main
    assert main(["report", "--paper"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 + len(sections.CLAIMS) and "n = 3 runs" in out[0]
    assert sum(": shown -- " in line for line in out) == len(sections.CLAIMS) - 2
    assert main(["report"]) == 2


@pytest.mark.parametrize("rho,expected", [(-0.6, "shown"), (0.6, "opposite"), (-0.05, "inconclusive")])
def test_finding_2_on_the_primary_row(rho, expected):
    rows = pd.DataFrame([_iv(rho, 0.2, model="M", metric="rho(KL, Acc_test-4)", what="within scale (stratified)",
                             scales="60 240", role="primary", n_runs=30),
                         _iv(-rho, 0.1, model="M", metric="rho(KL, Acc_test-4)", what="pooled over scales",
                             scales="60 240", role="descriptive", n_runs=30)])
    r = _rule("section4_finding_2")(Tables(kl_within=rows))[0]
    assert r.verdict == expected and "descriptive" in r.lines[-1]


def test_restoration_finding_1_out_of_range_below_the_papers_scales():
    t = _restore([60], [0.05] * 5)
    t.update(_shares(60, 0.92))
    assert _verdict("section5_finding_1", t) == "out of range"
