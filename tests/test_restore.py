"""The restoration engine against a brute-force reference (flatten every r, stable sort)."""
import json

import pytest
import torch

from sftnb.cli import main
from sftnb.restore import Restorer, _bits, radix_thresholds, relative_change


class Params(torch.nn.Module):
    """A stand-in model: decoder-layer-named parameters of mixed shapes and one dtype."""

    def __init__(self, shapes, dtype, seed, ties=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        for i, shape in enumerate(shapes):
            x = torch.randn(shape, generator=g)
            if ties:                       # few distinct values: many ties at every threshold
                x = (x * 2).round() / 2 + 3
            self.register_parameter(f"p{i}", torch.nn.Parameter(x.to(dtype)))

    def named_parameters(self, *a, **k):   # give them LLaMA-style names so the "transformer" region holds them
        for i, (n, p) in enumerate(super().named_parameters(*a, **k)):
            yield f"model.layers.{i % 3}.mlp.{['up', 'down', 'gate'][i % 3]}_proj.w{i}", p


SHAPES = [(7, 13), (128,), (3, 5, 11), (64, 9), (1,), (200,)]


def brute_force(tuned, base, names, k, strategy):
    r = torch.cat([relative_change(tuned[n], base[n]).reshape(-1) for n in names])
    count = int(r.numel() * k // 100)
    keys = _bits(r)
    if strategy == "bottom":
        keys = 0x7FFFFFFF - keys
    # stable sort on (-key, position): ties go to the earliest (tensor order, flat index)
    order = sorted(range(r.numel()), key=lambda i: (-int(keys[i]), i))[:count]
    sel = torch.zeros(r.numel(), dtype=torch.bool)
    sel[order] = True
    return sel


def pair(dtype, ties, seed=0):
    tuned, base = Params(SHAPES, dtype, seed, ties), Params(SHAPES, dtype, seed + 100, ties)
    names = [n for n, _ in tuned.named_parameters()]
    return tuned, {n: p.detach().clone() for n, p in base.named_parameters()}, names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("strategy", ["top", "bottom"])
def test_selection_equals_brute_force(dtype, ties, strategy):
    tuned, base, names = pair(dtype, ties)
    restorer = Restorer(tuned, base)
    ft = {n: p.detach().clone() for n, p in tuned.named_parameters()}
    for k in (0.5, 1, 7, 33.3, 50, 99, 100):
        want = brute_force(ft, base, names, k, strategy)
        with restorer.restored(k, strategy) as sel:
            now = {n: p.detach() for n, p in tuned.named_parameters()}
            changed = torch.cat([(now[n] != ft[n]).reshape(-1) for n in names])
            same_anyway = torch.cat([(ft[n] == base[n]).reshape(-1) for n in names])
            assert sel.count == int(want.sum()) == sum(sel.per_tensor.values())
            # every selected element now holds its pre-trained value; nothing else moved
            assert torch.equal(changed, want & ~same_anyway)
            for n in names:
                sel_n = want[sum(ft[m].numel() for m in names[:names.index(n)]):][:ft[n].numel()].view(ft[n].shape)
                assert torch.equal(now[n][sel_n], base[n][sel_n])
        assert all(torch.equal(p.detach(), ft[n]) for n, p in tuned.named_parameters())   # undo: bit-exact


def test_k100_gives_pretrained_and_tiny_k_gives_finetuned():
    tuned, base, names = pair(torch.float32, False)
    ft = {n: p.detach().clone() for n, p in tuned.named_parameters()}
    r = Restorer(tuned, base)
    with r.restored(100):
        assert all(torch.equal(p.detach(), base[n]) for n, p in tuned.named_parameters())
    with r.restored(1e-6) as sel:
        assert sel.count == 0
        assert all(torch.equal(p.detach(), ft[n]) for n, p in tuned.named_parameters())


def test_random_is_exact_and_reproducible():
    tuned, base, names = pair(torch.float32, True)
    r = Restorer(tuned, base)
    ft = {n: p.detach().clone() for n, p in tuned.named_parameters()}

    def picked(seed):
        with r.restored(25, "random", seed=seed) as sel:
            got = torch.cat([(p.detach() != ft[n]).reshape(-1) for n, p in tuned.named_parameters()])
            return sel.count, sel.per_tensor, got
    c1, per1, g1 = picked(3)
    c2, per2, g2 = picked(3)
    _, per3, _ = picked(4)
    assert c1 == r.total * 25 // 100 == sum(per1.values())
    assert per1 == per2 and torch.equal(g1, g2) and per1 != per3


def test_concentration_matches_brute_force():
    tuned, base, names = pair(torch.float32, True)
    r = torch.cat([relative_change(p.detach(), base[n]).reshape(-1) for n, p in tuned.named_parameters()])
    ranked = r.double().sort(descending=True).values
    table = Restorer(tuned, base).concentration((1, 10, 60))
    for x, share in zip(table["top_percent"], table["share"]):
        want = ranked[: int(r.numel() * x // 100)].sum() / ranked.sum()
        assert abs(share - float(want)) < 1e-9


def test_radix_thresholds_counts_and_ties():
    keys = [torch.tensor([5, 5, 5, 1, 9], dtype=torch.int64), torch.tensor([5, 0, 9], dtype=torch.int64)]
    th = radix_thresholds(lambda: iter(keys), [0, 1, 2, 3, 5, 8])
    assert [(t.key, t.ties) for t in th[1:]] == [(9, 1), (9, 2), (5, 1), (5, 3), (0, 1)]
    assert th[0].count == 0


def test_layer_groups_and_distribution():
    from sftnb.models import tiny_model
    model, _ = tiny_model(seed=0)
    base_model, _ = tiny_model(seed=1)
    base = {n: p.detach().clone() for n, p in base_model.named_parameters()}
    ft = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = Restorer(model, base)
    with r.layers_restored([0, 1]) as sel:
        for n, p in model.named_parameters():
            layer_group = ".layers.0." in n or ".layers.1." in n
            if layer_group and "norm" not in n:
                assert torch.equal(p.detach(), base[n])
            else:
                assert torch.equal(p.detach(), ft[n])
        assert sel.count == sum(base[n].numel() for n in r.names if ".layers.0." in n or ".layers.1." in n)
    with r.restored(20) as sel:
        per_layer, per_module = r.distribution(sel)
    assert abs(per_layer["share"].sum() - 1) < 1e-9 and abs(per_module["share"].sum() - 1) < 1e-9
    assert set(per_module["module"]) <= {"mlp.down", "mlp.up", "mlp.gate", "attn.o", "attn.q", "attn.v", "attn.k"}


# ----------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def model_pair(tmp_path_factory):
    from sftnb.models import save_tiny_model
    root = tmp_path_factory.mktemp("pair")
    base = save_tiny_model(root / "base", seed=0)
    tuned = save_tiny_model(root / "tuned", seed=1, max_shard_size="200KB")   # sharded, with an index
    return base, tuned


def test_cli_matches_live_restorer(model_pair, tmp_path):
    from sftnb.models import load_model
    base, tuned = model_pair
    out = tmp_path / "restored"
    assert main(["restore", "--base", str(base), "--tuned", str(tuned), "--k", "5,20", "--out", str(out),
                 "--shard-size", "300KB"]) == 0
    model, _ = load_model(str(tuned), device="cpu", dtype="float32")
    base_model, _ = load_model(str(base), device="cpu", dtype="float32")
    r = Restorer(model, base_model)
    for k in (5, 20):
        restored, _ = load_model(str(out / f"k{k}"), device="cpu", dtype="float32")
        stats = json.loads((out / f"k{k}" / "restore_stats.json").read_text())
        with r.restored(k) as sel:
            assert stats["count"] == sel.count and stats["per_tensor"] == sel.per_tensor
            live = dict(model.named_parameters())
            for n, p in restored.named_parameters():
                assert torch.equal(p, live[n]), n
        assert (out / f"k{k}" / "tokenizer.json").is_file() or (out / f"k{k}" / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("argv,msg", [
    (["--k", "0"], "(0, 100]"),
    (["--k", "150"], "(0, 100]"),
    (["--k", "abc"], "expected percents"),
    (["--base", "/nonexistent/folder"], "not found"),
    (["--strategy", "top", "--shard-size", "lots"], "--shard-size"),
])
def test_cli_bad_inputs(model_pair, tmp_path, capsys, argv, msg):
    base, tuned = model_pair
    args = {"--base": str(base), "--tuned": str(tuned), "--k": "20", "--out": str(tmp_path / "o")}
    for a, v in zip(argv[::2], argv[1::2]):
        args[a] = v
    rc = main(["restore", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("sftnb: error:") and msg in err[0]
    assert not (tmp_path / "o").exists()


def test_cli_refuses_existing_out_and_mismatched_models(model_pair, tmp_path, capsys):
    from sftnb.models import save_tiny_model
    base, tuned = model_pair
    out = tmp_path / "o"
    out.mkdir()
    assert main(["restore", "--base", str(base), "--tuned", str(tuned), "--k", "20", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    other = save_tiny_model(tmp_path / "wide", seed=0, hidden=32)
    capsys.readouterr()
    assert main(["restore", "--base", str(other), "--tuned", str(tuned), "--k", "20",
                 "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shape" in err[0] and not (tmp_path / "o2").exists()
    before = sorted(p.name for p in tuned.iterdir())
    assert main(["restore", "--base", str(base), "--tuned", str(tuned), "--k", "20", "--out", str(out),
                 "--overwrite"]) == 0
    assert sorted(p.name for p in tuned.iterdir()) == before          # inputs untouched
