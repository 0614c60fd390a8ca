import math

import pytest
import torch

from sftnb import renormalized_kl
from sftnb.infra.errors import SftnbError


def reference_kl(ft, base, k):
    """Plain-Python float64 re-implementation of paper §4.1 for one example."""
    ft, base = ft.double().tolist(), base.double().tolist()
    ids = sorted(range(len(ft)), key=lambda i: -ft[i])[:k]
    def softmax(xs):
        m = max(xs)
        e = [math.exp(x - m) for x in xs]
        return [v / sum(e) for v in e]
    p = softmax([ft[i] for i in ids])
    q = softmax([base[i] for i in ids])
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_float64_reference(dtype):
    g = torch.Generator().manual_seed(0)
    ft = (torch.randn(64, 500, generator=g) * 3).to(dtype)
    base = (torch.randn(64, 500, generator=g) * 3).to(dtype)
    got = renormalized_kl(ft, base, k=10)
    assert got.dtype == torch.float32 and got.shape == (64,)
    checked = 0
    for i in range(64):
        top = ft[i].float().sort(descending=True).values
        if top[9] == top[10]:        # a tie at the k-th logit (bf16/fp16): the top-k set is not unique
            continue
        checked += 1
        ref = reference_kl(ft[i].float(), base[i].float(), 10)
        assert abs(got[i].item() - ref) <= 1e-6 * max(ref, 1e-3) + 1e-7
    assert checked >= 32


def test_nonnegative_zero_for_equal_and_shift_invariant():
    g = torch.Generator().manual_seed(1)
    ft = torch.randn(32, 200, generator=g, dtype=torch.float64) * 5
    base = torch.randn(32, 200, generator=g, dtype=torch.float64) * 5
    kl = renormalized_kl(ft, base, k=10)
    assert (kl >= 0).all() and (kl > 0).all()
    assert torch.allclose(renormalized_kl(ft, ft.clone(), k=10), torch.zeros(32, dtype=torch.float64))
    shifted = renormalized_kl(ft + 7.5, base - 123.0, k=10)
    assert torch.allclose(shifted, kl, rtol=1e-10, atol=1e-12)


def test_large_logits_stay_finite():
    ft = torch.tensor([[1e4, 9e3, 0.0, -1e4]])
    base = torch.tensor([[-1e4, 1e4, 0.0, 5.0]])
    out = renormalized_kl(ft, base, k=3)
    assert torch.isfinite(out).all() and out.item() > 0


def test_bad_k_and_shapes():
    x = torch.randn(2, 5)
    with pytest.raises(SftnbError, match="k=6"):
        renormalized_kl(x, x, k=6)
    with pytest.raises(SftnbError, match="k=0"):
        renormalized_kl(x, x, k=0)
    with pytest.raises(SftnbError, match="shapes differ"):
        renormalized_kl(x, torch.randn(2, 6), k=2)
