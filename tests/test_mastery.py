import pytest

from sftnb.mastery import category, minimal_aliases


@pytest.mark.parametrize("r,cat", [(0.0, 0), (1e-9, 1), (0.1, 1), (0.25, 1), (0.2500001, 2), (0.5, 2),
                                   (0.51, 3), (0.75, 3), (0.7500001, 4), (1.0, 4)])
def test_category_boundaries(r, cat):
    assert category(r) == cat


def test_category_rejects_out_of_range():
    with pytest.raises(ValueError):
        category(1.5)
    with pytest.raises(ValueError):
        category(-0.1)


def test_category_exact_on_the_sampling_grid():
    # every R the paper's estimator can produce (k successes out of 21 x 10)
    for k in range(211):
        r = k / 210
        expected = 0 if k == 0 else next(i for i in range(1, 5) if r <= i / 4)
        assert category(r) == expected


def test_minimal_aliases_drop_extensions():
    al = minimal_aliases(["United States of America"])
    norm = [a.lower() for a in al]
    assert "usa" in norm and "united states" in norm
    assert "united states of america" not in norm
