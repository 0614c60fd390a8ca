"""The restoration engine against a brute-force reference (flatten every r, stable sort)."""
import json

import pytest
import torch

import sftnb.restoration.restore as rmod
import sftnb.restoration.selection as smod
from sftnb.cli import main
from sftnb.restoration.restore import Restorer
from sftnb.restoration.selection import FLIP, radix_thresholds, region_names, relative_change

SHAPES = [(7, 13), (128,), (3, 5, 11), (64, 9), (1,), (200,), (2, 50)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


class Params(torch.nn.Module):
    """A stand-in model: LLaMA-style decoder-layer names, mixed shapes and (per tensor) mixed dtypes."""

    def __init__(self, seed, ties=False, dtypes=DTYPES):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.names = []
        for i, shape in enumerate(SHAPES):
            x = torch.randn(shape, generator=g)
            if ties:                       # few distinct values: many ties at every threshold
                x = (x * 2).round() / 2 + 3
            self.register_parameter(f"p{i}", torch.nn.Parameter(x.to(dtypes[i % len(dtypes)])))
            self.names.append(f"model.layers.{i % 3}.mlp.{['up', 'down', 'gate'][i % 3]}_proj.w{i}")
        self.register_parameter("norm", torch.nn.Parameter(torch.ones(4)))   # outside the region

    def named_parameters(self, *a, **k):   # LLaMA-style names, so the "transformer" region holds them
        for (n, p) in super().named_parameters(*a, **k):
            yield (self.names[int(n[1:])] if n != "norm" else "model.layers.0.input_layernorm.weight"), p


def pair(ties, seed=0, dtypes=DTYPES):
    tuned, base = Params(seed, ties, dtypes), Params(seed + 100, ties, dtypes)
    if not ties:                           # some untouched elements (r = 0 ties) and some huge changes
        with torch.no_grad():
            for (n, p), (_, q) in zip(tuned.named_parameters(), base.named_parameters()):
                p.view(-1)[::5] = q.view(-1)[::5]
                q.view(-1)[1::17] = 0
    base_sd = {n: p.detach().clone() for n, p in base.named_parameters()}
    return tuned, base_sd, region_names([n for n, _ in tuned.named_parameters()], "transformer")


def brute_force(ft, base, names, k, strategy):
    """Selected elements as one bool vector over the region in canonical order (sorted names, flat index)."""
    r = torch.cat([relative_change(ft[n], base[n]).reshape(-1) for n in names])
    keys = r.view(torch.int32).long()
    if strategy == "bottom":
        keys = FLIP - keys
    count = int(r.numel() * k // 100)
    order = torch.sort(-keys, stable=True).indices[:count]      # stable: ties go to the earliest position
    sel = torch.zeros(r.numel(), dtype=torch.bool)
    sel[order] = True
    return sel


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def selected_now(model, ft, names):
    now = dict(model.named_parameters())
    return torch.cat([(now[n].detach() != ft[n]).reshape(-1) for n in names])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("strategy", ["top", "bottom"])
@pytest.mark.parametrize("swap", [True, False])
def test_selection_equals_brute_force(ties, strategy, swap, monkeypatch):
    monkeypatch.setattr(smod, "CHUNK", 150)             # larger tensors split: ties cross chunk borders
    monkeypatch.setattr(smod, "PIECE", 40)              # ... and pieces (40, 40, 40, 30 per chunk)
    tuned, base, names = pair(ties)
    base_before = {n: t.clone() for n, t in base.items()}
    restorer = Restorer(tuned, base, swap=swap)
    assert restorer.swap is swap
    ft = snapshot(tuned)
    differs = torch.cat([(ft[n] != base[n]).reshape(-1) for n in names])
    restorer.prepare([0.5, 1, 7, 33.3, 50, 99, 100], strategy)
    for k in (0.5, 1, 7, 33.3, 50, 99, 100):
        want = brute_force(ft, base_before, names, k, strategy)
        with restorer.restored(k, strategy) as sel:
            assert sel.count == int(want.sum()) == sum(sel.per_tensor.values()) == restorer.total * k // 100
            now = dict(tuned.named_parameters())
            got = torch.cat([(now[n].detach() == base_before[n]).reshape(-1) for n in names])
            assert torch.equal(selected_now(tuned, ft, names), want & differs)   # nothing else moved
            assert bool(got[want].all())                                    # selected = pre-trained values
            off = 0
            for n in names:                                                 # per-tensor counts
                assert sel.per_tensor[n] == int(want[off:off + ft[n].numel()].sum())
                off += ft[n].numel()
        assert all(torch.equal(p.detach(), ft[n]) for n, p in tuned.named_parameters())   # undo: bit-exact
        assert all(torch.equal(base[n], base_before[n]) for n in names)                 # base back too


def test_k100_gives_pretrained_and_tiny_k_gives_finetuned():
    tuned, base, names = pair(False)
    ft, pre = snapshot(tuned), {n: t.clone() for n, t in base.items()}
    r = Restorer(tuned, base)                      # swap mode: ``base`` holds fine-tuned values while restored
    with r.restored(100):
        for n, p in tuned.named_parameters():
            assert torch.equal(p.detach(), pre[n] if n in names else ft[n])       # the norm is not in the region
    with r.restored(1e-6) as sel:
        assert sel.count == 0
        assert all(torch.equal(p.detach(), ft[n]) for n, p in tuned.named_parameters())


def test_random_is_exact_and_reproducible(monkeypatch):
    monkeypatch.setattr(smod, "CHUNK", 64)
    tuned, base, names = pair(False)
    r = Restorer(tuned, base)
    ft = snapshot(tuned)
    differs = torch.cat([(ft[n] != base[n]).reshape(-1) for n in names])

    def picked(seed):
        with r.restored(25, "random", seed=seed) as sel:
            return sel.count, sel.per_tensor, selected_now(tuned, ft, names)
    c1, per1, g1 = picked(3)
    c2, per2, g2 = picked(3)
    _, per3, g3 = picked(4)
    assert c1 == r.total * 25 // 100 == sum(per1.values())
    assert per1 == per2 and torch.equal(g1, g2) and not torch.equal(g1, g3)
    assert int(g1.sum()) <= c1 and int((g1 | ~differs).sum()) >= c1
    other = Restorer(tuned, base)                               # a fresh object draws the same selection
    assert other.restore(25, "random", seed=3).per_tensor == per1
    other.undo()
    monkeypatch.setattr(smod, "PIECE", 24)                      # ... also when it walks smaller pieces
    small = Restorer(tuned, base)
    with small.restored(25, "random", seed=3) as sel:
        assert sel.per_tensor == per1 and torch.equal(selected_now(tuned, ft, names), g1)
    other.undo()


def test_concentration_and_stats_match_brute_force():
    tuned, base, names = pair(True)
    r = torch.cat([relative_change(dict(tuned.named_parameters())[n].detach(), base[n]).reshape(-1) for n in names])
    ranked = r.double().sort(descending=True).values
    restorer = Restorer(tuned, base)
    table = restorer.concentration((1, 10, 33, 60, 100))
    for x, share, count in zip(table["top_percent"], table["share"], table["count"]):
        c = int(r.numel() * x // 100)
        assert count == c and abs(share - float(ranked[:c].sum() / ranked.sum())) < 1e-9
    st = restorer.stats((5,))
    assert st["n"] == r.numel() and abs(st["sum_r"] - float(ranked.sum())) < 1e-6 * float(ranked.sum())
    assert st["per_k"][0]["threshold"] == float(ranked[int(r.numel() * 5 // 100) - 1])


def test_concentration_without_pretrained_zeros_matches_brute_force(monkeypatch):
    monkeypatch.setattr(smod, "CHUNK", 100)
    tuned, base, names = pair(False)                       # base has exact zeros at [1::17] of every tensor
    live = dict(tuned.named_parameters())
    nonzero = torch.cat([(base[n] != 0).reshape(-1) for n in names])
    r = torch.cat([relative_change(live[n].detach(), base[n]).reshape(-1) for n in names])
    assert 0 < int((~nonzero).sum()) and float(r[~nonzero].sum()) > 0.9 * float(r.sum())   # zeros dominate Σr
    kept = r[nonzero].double().sort(descending=True).values
    restorer = Restorer(tuned, base)
    assert restorer.zero_base_count() == int((~nonzero).sum())
    table = restorer.concentration((1, 5, 20, 60, 100), exclude_zero_base=True)
    for x, share, count in zip(table["top_percent"], table["share"], table["count"]):
        c = int(kept.numel() * x // 100)
        assert count == c and abs(share - float(kept[:c].sum() / kept.sum())) < 1e-9
    st = restorer.stats((5,), exclude_zero_base=True)
    assert st["n"] == kept.numel() and abs(st["sum_r"] - float(kept.sum())) < 1e-6 * float(kept.sum())
    paper = restorer.concentration((1,))                   # the paper's definition is unchanged, and cached apart
    ranked = r.double().sort(descending=True).values
    assert paper["count"][0] == r.numel() // 100
    assert abs(paper["share"][0] - float(ranked[:r.numel() // 100].sum() / ranked.sum())) < 1e-9
    with pytest.raises(rmod.SftnbError):
        restorer.thresholds([5], "random", exclude_zero_base=True)


def test_radix_thresholds_counts_and_ties():
    chunks = [torch.tensor([5, 5, 5, 1, 9, 70000], dtype=torch.int32), torch.tensor([5, 0, 9], dtype=torch.int32)]
    th = radix_thresholds(lambda: ((c, None) for c in chunks), [0, 1, 2, 3, 4, 6, 9])
    assert [(t.key, t.ties) for t in th[1:]] == [(70000, 1), (9, 1), (9, 2), (5, 1), (5, 3), (0, 1)]
    assert th[0].count == 0 and th[0].ties == 0


def test_layer_groups_and_distribution():
    from sftnb.lm.models import tiny_model
    model, _ = tiny_model(seed=0)
    base_model, _ = tiny_model(seed=1)
    base = snapshot(base_model)
    ft = snapshot(model)
    r = Restorer(model, base_model)                              # a model as the base: swap mode
    group = {n for n in r.names if ".layers.0." in n or ".layers.1." in n}
    with r.layers_restored([0, 1]) as sel:
        for n, p in model.named_parameters():
            assert torch.equal(p.detach(), base[n] if n in group else ft[n]), n
        assert sel.count == sum(base[n].numel() for n in group)
    assert all(torch.equal(p.detach(), ft[n]) for n, p in model.named_parameters())
    assert all(torch.equal(p.detach(), base[n]) for n, p in base_model.named_parameters())
    with r.restored(20) as sel:
        per_layer, per_module = r.distribution(sel)
    assert abs(per_layer["share"].sum() - 1) < 1e-12 and abs(per_module["share"].sum() - 1) < 1e-12
    assert list(per_layer["layer"]) == [0, 1, 2, 3]
    assert set(per_module["module"]) == {"mlp.down", "mlp.up", "mlp.gate", "attn.o", "attn.q", "attn.v", "attn.k"}
    assert r.names == region_names(r.names, "transformer") and not any("norm" in n for n in r.names)
    assert region_names(ft, "embedding") == ["lm_head.weight", "model.embed_tokens.weight"]
    assert all(".mlp." in n for n in region_names(ft, "mlp")) and len(region_names(ft, "attention")) == 16


# ----------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def model_pair(tmp_path_factory):
    from sftnb.lm.models import save_tiny_model
    root = tmp_path_factory.mktemp("pair")
    base = save_tiny_model(root / "base", seed=0)
    tuned = save_tiny_model(root / "tuned", seed=1, max_shard_size="200KB")   # sharded, with an index
    return base, tuned


@pytest.mark.parametrize("strategy,region", [("top", "transformer"), ("random", "all")])
def test_cli_matches_live_restorer(model_pair, tmp_path, strategy, region):
    from sftnb.lm.models import load_model
    base, tuned = model_pair
    out = tmp_path / "restored"
    assert main(["restore", "--base", str(base), "--tuned", str(tuned), "--k", "5,20", "--out", str(out),
                 "--shard-size", "300KB", "--strategy", strategy, "--region", region, "--seed", "7"]) == 0
    model, _ = load_model(str(tuned), device="cpu", dtype="float32")
    r = Restorer(model, str(base), region=region)                  # the base read from its folder
    assert not r.swap
    for k in (5, 20):
        folder = out / f"k{k}"
        restored, _ = load_model(str(folder), device="cpu", dtype="float32")
        stats = json.loads((folder / "restore_stats.json").read_text())
        with r.restored(k, strategy, seed=7) as sel:
            assert stats["count"] == sel.count and stats["per_tensor"] == sel.per_tensor
            live = dict(model.named_parameters())
            for n, p in restored.named_parameters():
                assert torch.equal(p, live[n]), n
        assert (folder / "tokenizer_config.json").is_file() and (folder / "config.json").is_file()
        assert (folder / "restore_stats.csv").read_text().startswith("tensor,numel,restored")
        assert len(list(folder.glob("*.safetensors"))) > 1 and (folder / "model.safetensors.index.json").is_file()
    assert (out / "restore_stats.csv").is_file()


def _run(argv, capsys):
    capsys.readouterr()
    rc = main(["restore", *argv])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv,msg", [
    (["--k", "0"], "(0, 100]"),
    (["--k", "150"], "(0, 100]"),
    (["--k", "abc"], "expected percents"),
    (["--base", "/nonexistent/folder"], "not found"),
    (["--shard-size", "lots"], "--shard-size"),
    (["--base", "NOSAFE"], "not a safetensors checkpoint"),
])
def test_cli_bad_inputs(model_pair, tmp_path, capsys, argv, msg):
    base, tuned = model_pair
    (tmp_path / "nosafe").mkdir()
    (tmp_path / "nosafe" / "config.json").write_text("{}")
    args = {"--base": str(base), "--tuned": str(tuned), "--k": "20", "--out": str(tmp_path / "o")}
    for a, v in zip(argv[::2], argv[1::2]):
        args[a] = str(tmp_path / "nosafe") if v == "NOSAFE" else v
    rc, err = _run([x for kv in args.items() for x in kv], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("sftnb: error:") and msg in err[0], err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_cli_refuses_existing_out_and_mismatched_models(model_pair, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from sftnb.lm.models import save_tiny_model
    base, tuned = model_pair
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc, err = _run(["--base", str(base), "--tuned", str(tuned), "--k", "20", "--out", str(out)], capsys)
    assert rc == 2 and len(err) == 1 and "--overwrite" in err[0] and (out / "keep.txt").is_file()
    wide = save_tiny_model(tmp_path / "wide", seed=0, hidden=32)
    rc, err = _run(["--base", str(wide), "--tuned", str(tuned), "--k", "20", "--out", str(tmp_path / "o2")], capsys)
    assert rc == 2 and len(err) == 1 and "shape" in err[0] and not (tmp_path / "o2").exists()
    half = tmp_path / "half"                                          # same shapes, another dtype
    shutil_copy(base, half)
    sd = load_file(str(half / "model.safetensors"))
    save_file({n: t.half() for n, t in sd.items()}, str(half / "model.safetensors"), metadata={"format": "pt"})
    rc, err = _run(["--base", str(half), "--tuned", str(tuned), "--k", "20", "--out", str(tmp_path / "o3")], capsys)
    assert rc == 2 and len(err) == 1 and "dtype" in err[0] and not (tmp_path / "o3").exists()
    rc, err = _run(["--base", str(base), "--tuned", str(tuned), "--k", "20", "--out", str(tuned / "sub")], capsys)
    assert rc == 2 and len(err) == 1 and "inside the input" in err[0] and not (tuned / "sub").exists()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tuned.iterdir())
    rc, _ = _run(["--base", str(base), "--tuned", str(tuned), "--k", "100", "--out", str(out), "--overwrite"],
                 capsys)
    assert rc == 0 and not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tuned.iterdir()) == before          # inputs untouched
    restored, base_sd = load_file(str(out / "model.safetensors")), load_file(str(base / "model.safetensors"))
    tuned_sd = {}
    for f in tuned.glob("*.safetensors"):
        tuned_sd |= load_file(str(f))
    for n, t in restored.items():                                    # k = 100: the region is pre-trained
        want = base_sd[n] if n in region_names([n], "transformer") else tuned_sd[n]
        assert torch.equal(t, want), n


def shutil_copy(src, dst):
    import shutil
    shutil.copytree(src, dst)


@pytest.mark.parametrize("n", [1, 7, 8, 13, 1000])
def test_pack_mask_is_lsb_first_and_round_trips(n):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.4
    packed = rmod.pack_mask(mask)
    padded = torch.nn.functional.pad(mask.to(torch.int64), (0, (-n) % 8)).view(-1, 8)
    assert torch.equal(packed.long(), (padded << torch.arange(8)).sum(1))      # bit i of byte j = element 8j + i
    assert torch.equal(rmod.unpack_mask(packed, n), mask)


@pytest.mark.parametrize("target_dtype", [torch.bfloat16, torch.float32])
def test_restoring_a_cast_target_from_separate_fine_tuned_values_is_the_cast_of_restoring(target_dtype):
    """Issue 23 (no fp32 copy beside the evaluation copy on a GPU): a Restorer whose target is an evaluation copy
    (bf16) and whose fine-tuned values come from elsewhere (``tuned=``, the fp32 checkpoint on the host) selects
    exactly what restoring the fp32 model selects, and leaves the target equal, bit for bit, to the cast of the
    restored fp32 model: for top / bottom / random k, for layer groups, and after undo."""
    from sftnb.lm.models import copy_model, tiny_model
    model, _ = tiny_model(seed=0)
    base = snapshot(tiny_model(seed=1)[0])
    tuned = snapshot(model)
    fp32 = Restorer(model, {n: b.clone() for n, b in base.items()})
    target = copy_model(model, "cpu", target_dtype)
    cast = Restorer(target, base, tuned=tuned)
    assert fp32.swap and not cast.swap

    def same():
        ref = dict(model.named_parameters())
        return all(torch.equal(p.detach(), ref[n].detach().to(target_dtype)) for n, p in target.named_parameters())
    for k, strategy in ((1, "top"), (5, "top"), (20, "bottom"), (60, "top"), (5, "random")):
        a, b = fp32.restore(k, strategy, seed=3), cast.restore(k, strategy, seed=3)
        assert a.to_dict() == b.to_dict() and same(), (k, strategy)
        fp32.undo(), cast.undo()
        assert same()
    with fp32.layers_restored([1, 2]), cast.layers_restored([1, 2]):
        assert same()
    assert same() and all(torch.equal(p.detach(), tuned[n].to(target_dtype)) for n, p in target.named_parameters())
    with pytest.raises(rmod.SftnbError, match="differs from the fine-tuned"):
        Restorer(target, base, tuned={**tuned, "model.layers.0.mlp.up_proj.weight": torch.zeros(3)})
