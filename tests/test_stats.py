"""sftnb.report.stats: aggregates, interval mechanics, and -- the acceptance test -- coverage of the 95 % intervals in
seeded simulations with a known true value (facts redrawn every simulation; seed noise on the logit scale)."""
import numpy as np
import pytest
from scipy.special import expit, logit

from sftnb.report import stats
from sftnb.infra.errors import SftnbError
from sftnb.report.stats_rank import ci_spearman
from sftnb.report.stats import (Interval, category_mean, ci_difference, ci_level, ci_mean_items,
                         pooled_mean, verdict)


# ------------------------------------------------------------------------------------------------- aggregates

def test_category_mean_hand_computed():
    values = np.array([1, 0, 1, 1, 0, 0, 1, 1, 1, 0], dtype=float)
    strata = np.array([0, 0, 1, 1, 1, 2, 2, 3, 4, 4])
    # per category: 1/2, 2/3, 1/2, 1, 1/2  -> mean 19/30; pooled: 6/10
    assert category_mean(values, strata, min_per_category=1) == pytest.approx(19 / 30)
    assert category_mean(values, strata, categories=(1, 3), min_per_category=1) == pytest.approx((2 / 3 + 1) / 2)
    assert pooled_mean(values) == pytest.approx(0.6)


def test_category_mean_nan_when_a_category_is_small_or_empty():
    strata = np.repeat([0, 1, 2, 3, 4], [20, 20, 20, 20, 19])        # category 4 has 19 facts
    values = np.ones(strata.size)
    assert np.isnan(category_mean(values, strata))                    # default min_per_category = 20
    assert category_mean(values, strata, min_per_category=19) == pytest.approx(1.0)
    assert category_mean(values, strata, categories=(0, 1, 2, 3)) == pytest.approx(1.0)
    no_cat2 = np.repeat([0, 1, 3, 4], 25)
    assert np.isnan(category_mean(np.ones(100), no_cat2, min_per_category=0))   # empty: never defined
    two_d = category_mean(np.ones((7, 100)), no_cat2, min_per_category=0)
    assert two_d.shape == (7,) and np.isnan(two_d).all()


def test_pooled_mean_is_count_weighted_and_category_mean_is_not():
    strata = np.repeat([0, 1, 2, 3, 4], [90, 20, 20, 20, 20])
    values = (strata == 0).astype(float)                              # right on every category-0 fact only
    assert pooled_mean(values) == pytest.approx(90 / 170)
    assert category_mean(values, strata) == pytest.approx(1 / 5)


def test_aggregates_accept_a_batch_of_rows():
    rng = np.random.default_rng(0)
    strata = np.repeat(np.arange(5), 25)
    x = rng.random((4, 3, strata.size))
    batch = category_mean(x, strata)
    assert batch.shape == (4, 3)
    assert batch[2, 1] == pytest.approx(category_mean(x[2, 1], strata))
    assert np.allclose(pooled_mean(x), x.mean(-1))


# ------------------------------------------------------------------------------------------------- interval mechanics

STRATA = np.repeat(np.arange(5), 40)


def _runs(p, n_seeds=3, seed=0):
    return np.random.default_rng(seed).random((n_seeds, STRATA.size)) < p


def test_level_estimate_components_and_single_seed():
    runs = _runs(0.6)
    iv = ci_level(runs, STRATA, n_boot=500, bounds=None)                  # symmetric: no logit scale
    assert iv.estimate == pytest.approx(np.mean([category_mean(r, STRATA) for r in runs]))
    assert iv.n_seeds == 3 and iv.n_items == 200 and iv.level == 0.95
    assert iv.half_width == pytest.approx(np.hypot(iv.fact_half_width, iv.seed_half_width))
    assert iv.low < iv.estimate < iv.high and iv.seed_half_width > 0
    one = ci_level(runs[0], STRATA, n_boot=500, bounds=None)          # 1-D = one seed: fact sampling only
    assert one.n_seeds == 1 and one.seed_half_width == 0 and one.half_width == pytest.approx(one.fact_half_width)
    pooled = ci_level(runs, STRATA, aggregate="pooled", n_boot=500)
    assert pooled.estimate == pytest.approx(runs.mean())


def test_bootstrap_is_stratified():
    # Values constant within each stratum: resampling inside strata cannot move the mean (h_f = 0 exactly);
    # resampling across strata would. And categories at exactly min_per_category stay defined in every replicate.
    strata = np.repeat(np.arange(5), 20)
    values = strata / 4.0
    assert ci_mean_items(values, strata, n_boot=500).fact_half_width == 0
    assert ci_mean_items(values, n_boot=500).fact_half_width > 0.05
    assert np.isfinite(ci_level(_runs(0.5)[:, :100], strata, n_boot=500).half_width)


def test_seed_component_hand_computed():
    from scipy import stats as sps
    n = 100                                       # every fact has the seed's value: only the seed component is left
    a_seed, b_seed = np.array([0.1, 0.2, 0.6]), np.array([0.5, 0.7])
    a, b = np.repeat(a_seed[:, None], n, 1), np.repeat(b_seed[:, None], n, 1)
    level = ci_mean_items(a, n_boot=200)
    assert level.fact_half_width == 0
    assert level.half_width == pytest.approx(sps.t.ppf(0.975, 2) * a_seed.std(ddof=1) / np.sqrt(3))
    qa, qb = a_seed.var(ddof=1) / 3, b_seed.var(ddof=1) / 2
    df = (qa + qb) ** 2 / (qa ** 2 / 2 + qb ** 2 / 1)
    welch = ci_difference(a, b, None, paired_seeds=False, aggregate="pooled", n_boot=200)
    assert welch.estimate == pytest.approx(0.6 - 0.3)
    assert welch.half_width == pytest.approx(sps.t.ppf(0.975, df) * np.sqrt(qa + qb))
    d = np.array([0.3, 0.1, 0.2])
    paired = ci_difference(a, a + d[:, None], None, paired_seeds=True, aggregate="pooled", level=0.9, n_boot=200)
    assert paired.half_width == pytest.approx(sps.t.ppf(0.95, 2) * d.std(ddof=1) / np.sqrt(3))


def test_determinism():
    rng = np.random.default_rng(0)
    runs = rng.random((3, STRATA.size)) < rng.uniform(0.1, 0.9, STRATA.size)     # facts that differ
    a, b = ci_level(runs, STRATA, seed=7), ci_level(runs, STRATA, seed=7)
    c = ci_level(runs, STRATA, seed=8)
    assert a == b
    assert c.estimate == a.estimate                       # another bootstrap seed: the same estimate
    assert c.fact_half_width == pytest.approx(a.fact_half_width, rel=0.15)


def test_callable_aggregate_matches_builtin_and_chunking_is_consistent(monkeypatch):
    a, b = _runs(0.5, seed=1), _runs(0.6, seed=2)
    monkeypatch.setattr(stats, "OVERLAP_FROM", "none")               # a callable's fact weights are unknown
    builtin = ci_difference(a, b, STRATA, paired_seeds=False, n_boot=500)
    # A callable takes the general per-seed path; the same indices must give the same interval.
    custom = ci_difference(a, b, STRATA, paired_seeds=False, n_boot=500,
                           aggregate=lambda v, s: category_mean(v, s))
    assert custom.low == pytest.approx(builtin.low) and custom.high == pytest.approx(builtin.high)
    monkeypatch.setattr(stats, "_CHUNK", 1000)                        # 5 replicates per chunk
    chunked = ci_difference(a, b, STRATA, paired_seeds=False, n_boot=500)
    assert chunked.fact_half_width == pytest.approx(builtin.fact_half_width, rel=0.2)


def test_paired_seeds_remove_a_shared_seed_effect():
    rng = np.random.default_rng(3)
    shift = rng.normal(0, 1.0, (3, 1))                                # large per-model effect, same in a and b
    u = rng.random((3, STRATA.size))
    a, b = u < expit(shift), u < expit(shift + 0.3)
    paired = ci_difference(a, b, STRATA, paired_seeds=True, n_boot=500)
    welch = ci_difference(a, b, STRATA, paired_seeds=False, n_boot=500)
    assert paired.estimate == welch.estimate
    assert paired.seed_half_width < welch.seed_half_width / 3


def test_difference_is_paired_over_facts():
    a = _runs(0.5)
    same = ci_difference(a, a, STRATA, paired_seeds=True, n_boot=500)
    assert (same.estimate, same.low, same.high) == (0, 0, 0)
    b = a.copy()
    b[:, :4] = ~b[:, :4]                                              # 4 answers of 200 change, in every seed
    few = ci_difference(a, b, STRATA, paired_seeds=False, n_boot=500)
    assert few.fact_half_width < 0.02                                 # unpaired resampling would give ~0.1


def test_welch_with_one_seed_on_one_side_borrows_the_other_variance():
    a, b = _runs(0.5, n_seeds=1), _runs(0.6, n_seeds=3, seed=1)
    iv = ci_difference(a, b, STRATA, paired_seeds=False, n_boot=500)
    assert iv.n_seeds == 1 and iv.seed_half_width > 0
    both_single = ci_difference(a, b[:1], STRATA, paired_seeds=False, n_boot=500)
    assert both_single.seed_half_width == 0


def test_nan_aggregate_gives_a_nan_interval():
    small = np.repeat(np.arange(5), 10)                               # 10 per category < 20
    iv = ci_level(np.ones((3, 50)), small, n_boot=200)
    assert np.isnan(iv.estimate) and np.isnan(iv.low) and iv.fmt() == "n/a"
    assert verdict(iv, +1) == "inconclusive"


def test_mean_items_for_a_continuous_metric():
    rng = np.random.default_rng(5)
    kl = rng.gamma(2.0, 0.5, (3, 150))
    iv = ci_mean_items(kl, n_boot=500)
    assert iv.estimate == pytest.approx(kl.mean()) and iv.low < kl.mean() < iv.high
    assert ci_mean_items(kl, strata=np.repeat(np.arange(5), 30), n_boot=500).estimate == pytest.approx(kl.mean())


# ------------------------------------------------------------------------------------------------- formatting, verdict

def test_fmt_and_verdict():
    level = Interval(0.541, 0.518, 0.564, n_seeds=3, n_items=300)
    assert level.fmt() == "54.1 ± 2.3"
    up = Interval(0.031, 0.004, 0.058)
    assert up.fmt_diff() == "+3.1 [+0.4, +5.8]*" and up.fmt_diff(marker=False) == "+3.1 [+0.4, +5.8]"
    assert up.fmt() == "3.1 ± 2.7"                                    # the level format never marks
    across = Interval(0.01, -0.02, 0.04)
    assert across.fmt_diff() == "+1.0 [-2.0, +4.0]" and not across.excludes_zero
    down = Interval(-0.05, -0.08, -0.01)
    assert (up.sign, across.sign, down.sign) == (1, 0, -1)
    assert (verdict(up, +1), verdict(up, -1)) == ("shown", "opposite")
    assert (verdict(down, -1), verdict(down, +1)) == ("shown", "opposite")
    assert verdict(across, +1) == verdict(across, -1) == "inconclusive"
    assert Interval(0.8, 0.5, 0.95).fmt(scale=1, digits=2) == "0.80 [0.50, 0.95]"   # asymmetric
    assert Interval(float("nan"), float("nan"), float("nan")).fmt_diff() == "n/a"


# ------------------------------------------------------------------------------------------------- Spearman

def test_spearman_monotone_and_independent():
    x = np.arange(20.0)
    mono = ci_spearman(x, np.exp(x / 5), n_boot=500)
    assert mono.estimate == pytest.approx(1.0) and mono.high <= 1.0 and mono.low > 0.9
    rng = np.random.default_rng(11)
    covers = [ci_spearman(rng.normal(size=30), rng.normal(size=30), n_boot=300, seed=k).sign == 0
              for k in range(40)]
    assert np.mean(covers) >= 0.85
    assert np.isnan(ci_spearman([1, 2, 3], [3, 2, 1]).estimate)                   # < 4 units
    assert np.isnan(ci_spearman(np.ones(10), np.arange(10)).estimate)             # constant input


# ------------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call", [
    lambda: ci_level(np.ones((3, 10)), np.zeros(9, int)),                          # strata length
    lambda: ci_level(np.ones((3, 0)), np.zeros(0, int)),                           # empty
    lambda: ci_level(np.ones((2, 3, 10)), np.zeros(10, int)),                      # 3-D
    lambda: ci_level(np.ones((3, 10)), np.zeros(10, int), level=1.0),
    lambda: ci_level(np.ones((3, 10)), np.zeros(10, int), level=0),
    lambda: ci_level(np.ones((3, 10)), np.zeros(10, int), n_boot=10),
    lambda: ci_level(np.ones((3, 10)), np.full(10, 0.5)),                          # non-integer strata
    lambda: ci_level(np.ones((3, 10)), np.zeros(10, int), aggregate="median"),
    lambda: ci_mean_items(np.array([[1.0, np.nan]])),
    lambda: ci_mean_items(np.array([["a", "b"]])),
    lambda: ci_difference(np.ones((3, 10)), np.ones((3, 11)), np.zeros(10, int), paired_seeds=False),
    lambda: ci_difference(np.ones((3, 10)), np.ones((2, 10)), np.zeros(10, int), paired_seeds=True),
    lambda: ci_spearman([1, 2, 3, 4], [1, 2, 3]),
    lambda: verdict(Interval(0.1, 0.05, 0.15), 0),
])
def test_bad_input_raises_sftnb_error(call):
    with pytest.raises(SftnbError):
        call()


# ------------------------------------------------------------------------------------------------- coverage
# Each simulation draws a new test set: 5 strata of 30-60 facts, each fact with its own success probability
# p ~ Beta(a_c, b_c) (easy categories easier), logit l = logit(p). A model (seed) shifts every logit by
# u_s ~ N(0, sigma_seed); a fact's answer is Bernoulli(expit(l + shift)). The estimand is the population value:
# the category mean of E_{p, u}[...] over the *distribution* of facts and seeds, computed by Monte Carlo with
# 400k draws per stratum (error ~2e-4, against half-widths of 2-20 points). Facts are redrawn every simulation,
# so the fact component is needed; seeds too, so the seed component is needed.

BETA_A, BETA_B = np.array([0.7, 1.5, 3.0, 4.0, 5.0]), np.array([5.0, 3.0, 3.0, 2.0, 1.0])
N_SIMS, N_BOOT, N_SEEDS = 300, 500, 3
PAIRED = dict(sigma_seed=0.3, delta=0.3, sigma_gain=0.15, tau=0.3)   # restoration-like: same models
UNPAIRED = dict(sigma_seed=0.5, delta=0.4)                             # two training sets, large seed noise
LEVEL = dict(sigma_seed=0.4)
FACT_BOUND = dict(sigma_seed=0.05)                                    # level, 8 seeds: test-set sampling dominates


def _logits(rng, strata):
    return logit(np.clip(rng.beta(BETA_A[strata], BETA_B[strata]), 1e-6, 1 - 1e-6))


def _truth(kind, sigma_seed, delta=0.0, sigma_gain=0.0, tau=0.0, m=400_000):
    rng = np.random.default_rng(12345)
    per_category = []
    for c in range(5):
        base = _logits(rng, np.full(m, c)) + rng.normal(0, sigma_seed, m)
        if kind == "level":
            per_category.append(expit(base).mean())
        else:   # paired: the gain varies by model (sigma_gain) and by fact within a model (tau)
            gain = delta + rng.normal(0, sigma_gain, m) + rng.normal(0, tau, m)
            per_category.append((expit(base + gain) - expit(base)).mean())
    return float(np.mean(per_category))


def _simulate(kind, params, seed, n_seeds=N_SEEDS):
    """Coverage over N_SIMS test sets of the full interval, of h_f alone and of h_s alone."""
    rng = np.random.default_rng(seed)
    truth = _truth("level" if kind in ("level", "single_seed") else "paired", **params)
    hits = []
    for k in range(N_SIMS):
        strata = np.repeat(np.arange(5), rng.integers(30, 61, 5))
        n, l = strata.size, _logits(rng, strata)
        u_a = rng.normal(0, params["sigma_seed"], (n_seeds, 1))
        if kind in ("level", "single_seed"):
            iv = ci_level(rng.random((n_seeds, n)) < expit(l + u_a), strata, n_boot=N_BOOT, seed=k)
        elif kind in ("paired", "training_set"):
            # Restoration: seed s of b is seed s of a, changed a little; a common uniform per (seed, fact)
            # makes most answers agree between a and b, as they do for one model before and after.
            # training_set (Table 6): every seed is scored on its own training facts (other facts per seed,
            # drawn from every category alike), pooled, no strata.
            if kind == "training_set":
                strata = rng.integers(0, 5, (n_seeds, n))
                l = _logits(rng, strata)
            unif = rng.random((n_seeds, n))
            gain = (params["delta"] + rng.normal(0, params["sigma_gain"], (n_seeds, 1))
                    + rng.normal(0, params["tau"], (n_seeds, n)))
            a, b = unif < expit(l + u_a), unif < expit(l + u_a + gain)
            if kind == "training_set":
                iv = ci_difference(a, b, None, paired_seeds=True, aggregate="pooled", n_boot=N_BOOT, seed=k)
            else:
                iv = ci_difference(a, b, strata, paired_seeds=True, n_boot=N_BOOT, seed=k)
        else:
            u_b = rng.normal(0, params["sigma_seed"], (n_seeds, 1))
            a = rng.random((n_seeds, n)) < expit(l + u_a)
            b = rng.random((n_seeds, n)) < expit(l + params["delta"] + u_b)
            iv = ci_difference(a, b, strata, paired_seeds=False, n_boot=N_BOOT, seed=k)
        err = abs(iv.estimate - truth)
        hits.append((iv.low <= truth <= iv.high, err <= iv.fact_half_width, err <= iv.seed_half_width))
    return tuple(float(c) for c in np.mean(hits, axis=0))


def _simulate_spearman(seed, n_units=45, r=0.5):
    """Coverage of ci_spearman's percentile interval: bivariate normal units with correlation r, whose Spearman
    rho is (6 / pi) arcsin(r / 2)."""
    rng = np.random.default_rng(seed)
    truth = 6 / np.pi * np.arcsin(r / 2)
    hits = []
    for k in range(N_SIMS):
        x = rng.normal(size=n_units)
        y = r * x + np.sqrt(1 - r * r) * rng.normal(size=n_units)
        iv = ci_spearman(x, y, n_boot=N_BOOT, seed=k)
        hits.append((iv.low <= truth <= iv.high, np.nan, np.nan))
    return tuple(float(c) for c in np.mean(hits, axis=0))


NO_SEED_NOISE = dict(sigma_seed=0.0)


@pytest.fixture(scope="module")
def coverage():
    result = {"paired": _simulate("paired", PAIRED, 1), "unpaired": _simulate("unpaired", UNPAIRED, 2),
              "level": _simulate("level", LEVEL, 3), "level_fact_bound": _simulate("level", FACT_BOUND, 4, 8),
              "level_no_seed_noise": _simulate("level", NO_SEED_NOISE, 5),
              "single_seed": _simulate("single_seed", NO_SEED_NOISE, 6, 1),
              "training_set": _simulate("training_set", PAIRED, 7),
              "spearman": _simulate_spearman(8)}
    for name, (full, fact, seed) in result.items():
        print(f"\ncoverage {name}: full {full:.3f}, fact component only {fact:.3f}, seed component only "
              f"{seed:.3f} ({N_SIMS} simulations)")
    return result


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["paired", "unpaired", "level", "level_fact_bound", "level_no_seed_noise",
                                  "single_seed", "training_set", "spearman"])
def test_coverage_of_95_percent_intervals(coverage, kind):
    # Both sides: below 0.93 the intervals are too narrow (false "shown"), above 0.99 too wide (needless
    # "inconclusive"); 300 simulations put a true 95 % interval at 0.925-0.975 (two standard errors).
    full = coverage[kind][0]
    assert 0.93 <= full <= 0.99, f"{kind}: 95 % interval covered the true value in {full:.3f} of simulations"


def test_fact_only_interval_undercovers_when_seed_noise_is_large(coverage):
    # The test has teeth: dropping the seed component (what a single-seed analysis would report) fails the bar.
    full, fact_only, _ = coverage["unpaired"]
    assert fact_only < 0.90 and fact_only < full - 0.2


def test_seed_only_interval_undercovers_when_fact_sampling_dominates(coverage):
    # ... and so does dropping the fact component when the test set is the main source (facts are redrawn).
    full, _, seed_only = coverage["level_fact_bound"]
    assert seed_only < 0.90 and seed_only < full - 0.1


# ------------------------------------------------------------------------------------------------- bounds
def test_bounded_levels_stay_inside_their_range():
    rng = np.random.default_rng(3)
    rare = rng.random((1, 60)) < 0.03                         # a training accuracy of a few %: [0, 1]
    iv = ci_level(rare, None, aggregate="pooled", n_boot=500)
    assert 0 <= iv.low < iv.estimate < iv.high <= 1 and iv.high - iv.estimate > iv.estimate - iv.low
    kl = np.abs(rng.normal(0.001, 0.004, (3, 34)))            # a small KL: >= 0
    iv = ci_mean_items(kl, bounds=stats.POSITIVE, n_boot=500)
    assert 0 < iv.low < iv.estimate < iv.high
    unbounded = ci_mean_items(kl, n_boot=500)
    assert unbounded.high - unbounded.estimate == pytest.approx(unbounded.estimate - unbounded.low)
    assert ci_level(np.zeros((3, 40)), None, aggregate="pooled").high == 0.0     # nothing varies
    share = stats.t_interval([0.998, 0.999, 0.9995], bounds=stats.UNIT)
    assert share.high < 1 and share.n_seeds == 3
    with pytest.raises(SftnbError, match="outside"):
        ci_level(np.full((2, 5), 2.0), None)


def test_overlap_is_counted_once(monkeypatch):
    # seeds that do not differ at all: the per-(fact, seed) noise sits in both raw components; taken out of the
    # fact component once, the interval narrows and the seed component is untouched
    x = np.random.default_rng(4).random((3, 300)) < 0.5
    once = ci_level(x, None, aggregate="pooled", n_boot=500, bounds=None)
    monkeypatch.setattr(stats, "OVERLAP_FROM", "none")
    twice = ci_level(x, None, aggregate="pooled", n_boot=500, bounds=None)
    assert once.seed_half_width == twice.seed_half_width
    assert once.fact_half_width < 0.9 * twice.fact_half_width and once.half_width < twice.half_width
