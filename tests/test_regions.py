"""Regions from the model's module tree (GPT-2, GPT-NeoX, Qwen2, LLaMA) and the one registry of strategies."""
import json
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from sftnb.cli import build_parser, main
from sftnb.config import RestoreConfig, dump, validate
from sftnb.infra.errors import SftnbError
from sftnb.restoration.regions import BY_NAME, REGIONS, checkpoint_regions, model_regions
from sftnb.restoration.restore import Restorer
from sftnb.restoration.strategies import STRATEGIES, get_strategy

LAYERS = 3


def tiny_config(arch: str):
    """A tiny configuration of each family (vocabulary 96, hidden 32, 3 layers)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config
    ids = {"vocab_size": 96, "bos_token_id": 1, "eos_token_id": 2}
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=LAYERS, n_head=4, n_positions=64, **ids)
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
              "max_position_embeddings": 64, **ids}
    if arch == "neox":
        return GPTNeoXConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(num_key_value_heads=2, **common)
    return LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **common)


def tiny_causal_lm(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch)).eval()


def perturbed(model, seed: int = 1):
    """A "fine-tuned" copy: every tensor moved by a random amount (some elements much more than others)."""
    g = torch.Generator().manual_seed(seed)
    tuned = tiny_causal_lm_like(model)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape, generator=g) * torch.rand(p.shape, generator=g) ** 4)
    return tuned


def tiny_causal_lm_like(model):
    twin = type(model)(model.config)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


@pytest.fixture(scope="module", params=["gpt2", "neox", "qwen2"])
def folder_pair(request, tmp_path_factory):
    """(arch, base folder, tuned folder): a tiny random pre-trained model and a perturbed copy, save_pretrained."""
    root = tmp_path_factory.mktemp(request.param)
    base = tiny_causal_lm(request.param)
    base.save_pretrained(root / "base")
    perturbed(base).save_pretrained(root / "tuned")
    return request.param, root / "base", root / "tuned"


def read_folder(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= load_file(str(f))
    return out


# ----------------------------------------------------------------------------------------------- LLaMA: unchanged
_OLD_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_OLD_MODULE_TYPES = {"mlp.down_proj": "mlp.down", "mlp.up_proj": "mlp.up", "mlp.gate_proj": "mlp.gate",
                     "self_attn.o_proj": "attn.o", "self_attn.q_proj": "attn.q", "self_attn.v_proj": "attn.v",
                     "self_attn.k_proj": "attn.k"}


def old_layer_of(name):
    m = _OLD_LAYER.search(name)
    return int(m.group(1)) if m else None


def old_in_region(name, region):
    """The LLaMA name rules sftnb used before the module tree (sftnb/select.py up to issue 24), verbatim."""
    if region == "all":
        return True
    if region == "embedding":
        return "embed_tokens" in name or name.split(".")[0] == "lm_head"
    parts = name.split(".")
    owner = parts[-2] if len(parts) > 1 else name
    if old_layer_of(name) is None or "norm" in owner:
        return False
    if region == "mlp":
        return ".mlp." in name
    if region == "attention":
        return ".self_attn." in name
    return True


def old_module_type(name):
    return next((label for key, label in _OLD_MODULE_TYPES.items() if f".{key}." in f".{name}"), "other")


@pytest.mark.parametrize("bias", [False, True])
def test_llama_regions_layers_and_labels_are_the_old_ones(tmp_path, bias):
    from transformers import LlamaForCausalLM

    from sftnb.lm.models import tiny_model
    models = [tiny_model(seed=0)[0]]
    config = tiny_config("llama")
    config.attention_bias = config.mlp_bias = bias
    models.append(LlamaForCausalLM(config))
    for model in models:
        names = [n for n, _ in model.named_parameters()]
        model.save_pretrained(tmp_path / "m")
        for regions in (model_regions(model), checkpoint_regions(tmp_path / "m"), BY_NAME):
            for region in REGIONS:
                assert regions.names(names, region) == sorted(n for n in names if old_in_region(n, region)), region
            assert [regions.layer(n) for n in names] == [old_layer_of(n) for n in names]
            assert [regions.label(n) for n in names] == [old_module_type(n) for n in names]
        per_layer = 8 if model.config.attention_bias else 4                 # q, k, v, o (+ their biases)
        assert len(model_regions(model).names(names, "attention")) == per_layer * model.config.num_hidden_layers


# ----------------------------------------------------------------------------------------------- other families
EXPECTED = {
    "gpt2": {"attention": ".attn.", "mlp": ".mlp.", "labels": {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"},
             "embedding": ["transformer.wpe.weight", "transformer.wte.weight"], "layer": "transformer.h.{}."},
    "neox": {"attention": ".attention.", "mlp": ".mlp.",
             "labels": {"attn.query_key_value", "attn.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"},
             "embedding": ["gpt_neox.embed_in.weight", "lm_head.weight"], "layer": "gpt_neox.layers.{}."},
    "qwen2": {"attention": ".self_attn.", "mlp": ".mlp.",
              "labels": {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"},
              "embedding": ["lm_head.weight", "model.embed_tokens.weight"], "layer": "model.layers.{}."},
}


@pytest.mark.parametrize("arch", ["gpt2", "neox", "qwen2", "llama"])
def test_bare_names_read_like_the_module_tree(arch):
    """The cue reading of bare names (a state dict, no model) agrees with the tree on every tensor."""
    model = tiny_causal_lm(arch)
    tree = model_regions(model)
    for name, _ in model.named_parameters(remove_duplicate=False):
        assert BY_NAME.place(name) == tree.place(name), name


@pytest.mark.parametrize("arch", ["gpt2", "neox", "qwen2"])
def test_regions_of_other_families(arch):
    model = tiny_causal_lm(arch)
    regions, want = model_regions(model), EXPECTED[arch]
    names = [n for n, _ in model.named_parameters()]
    norms = {n for n in names if regions.place(n).kind == "norm"}
    assert norms and all(p.ndim == 1 for n, p in model.named_parameters() if n in norms)
    for region in ("attention", "mlp"):
        got = regions.names(names, region)
        assert got == sorted(n for n in names if want[region] in n and n not in norms) and got, region
    assert regions.names(names, "transformer") == sorted(regions.names(names, "attention")
                                                         + regions.names(names, "mlp"))
    assert regions.names(names, "embedding") == want["embedding"]
    assert {regions.label(n) for n in regions.names(names, "transformer")} == want["labels"]
    for layer in range(LAYERS):
        prefix = want["layer"].format(layer)
        assert {n for n in names if regions.layer(n) == layer} == {n for n in names if n.startswith(prefix)}


def test_checkpoint_regions_map_names_with_or_without_the_base_prefix(tmp_path):
    model = tiny_causal_lm("gpt2")
    model.save_pretrained(tmp_path)
    regions = checkpoint_regions(tmp_path)
    assert regions.place("h.1.mlp.c_fc.weight") == regions.place("transformer.h.1.mlp.c_fc.weight")
    assert regions.place("h.1.mlp.c_fc.weight").layer == 1
    (tmp_path / "config.json").unlink()
    with pytest.raises(SftnbError, match="no config.json"):
        checkpoint_regions(tmp_path)


def test_live_restorer_on_gpt2_restores_only_its_region():
    base = tiny_causal_lm("gpt2")
    tuned = perturbed(base)
    pre = {n: p.detach().clone() for n, p in base.named_parameters()}
    ft = {n: p.detach().clone() for n, p in tuned.named_parameters()}
    for region in ("mlp", "attention"):
        r = Restorer(tuned, pre, region=region, swap=False)
        assert r.names and all(f".{'mlp' if region == 'mlp' else 'attn'}." in n for n in r.names)
        with r.restored(100):
            for n, p in tuned.named_parameters():
                assert torch.equal(p.detach(), pre[n] if n in r.names else ft[n]), n
        with r.layers_restored([1]) as sel:
            assert set(sel.per_tensor) == {n for n in r.names if n.startswith("transformer.h.1.")}
        with r.restored(30) as sel:
            per_layer, per_module = r.distribution(sel)
        assert list(per_layer["layer"]) == list(range(LAYERS))
        assert set(per_module["module"]) == {m for m in EXPECTED["gpt2"]["labels"]
                                             if m.startswith("mlp" if region == "mlp" else "attn")}


# ----------------------------------------------------------------------------------------------- sftnb restore
@pytest.mark.parametrize("region", ["mlp", "attention"])
def test_cli_restores_only_the_region(folder_pair, tmp_path, region):
    arch, base, tuned = folder_pair
    out = tmp_path / "out"
    assert main(["restore", "--base", str(base), "--tuned", str(tuned), "--k", "30,100", "--out", str(out),
                 "--region", region]) == 0
    pre, ft = read_folder(base), read_folder(tuned)
    regions = checkpoint_regions(tuned)
    inside = set(regions.names(ft, region))
    assert inside and all(EXPECTED[arch][region] in n for n in inside)
    for k in (30, 100):
        got = read_folder(out / f"k{k}")
        assert set(got) == set(ft)
        changed = set()
        for n, t in got.items():
            if n not in inside:
                assert torch.equal(t, ft[n]), n                    # outside the region: the fine-tuned tensor
                continue
            assert bool(((t == ft[n]) | (t == pre[n])).all()), n   # inside: each element one or the other
            changed |= {n} if not torch.equal(t, ft[n]) else set()
            if k == 100:
                assert torch.equal(t, pre[n]), n
        assert changed == inside if k == 100 else changed
        stats = json.loads((out / f"k{k}" / "restore_stats.json").read_text())
        assert set(stats["per_module"]["module"]) <= EXPECTED[arch]["labels"]
        assert stats["per_layer"]["layer"] == list(range(LAYERS))
        assert stats["total"] == sum(ft[n].numel() for n in inside)


def test_empty_region_is_one_line_naming_what_the_model_has(folder_pair, tmp_path, capsys):
    """A checkpoint without the region's tensors (its MLP left out of both files): one line, the regions it has."""
    arch, base, tuned = folder_pair
    regions = checkpoint_regions(tuned)
    for name, src in (("base", base), ("tuned", tuned)):
        dst = tmp_path / name
        dst.mkdir()
        (dst / "config.json").write_text((src / "config.json").read_text())
        sd = read_folder(src)
        save_file({n: t for n, t in sd.items() if regions.place(n).kind != "mlp"}, str(dst / "model.safetensors"),
                  metadata={"format": "pt"})
    capsys.readouterr()
    rc = main(["restore", "--base", str(tmp_path / "base"), "--tuned", str(tmp_path / "tuned"), "--k", "20",
               "--out", str(tmp_path / "o"), "--region", "mlp"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"sftnb: error: region 'mlp' holds no tensor of {tmp_path / 'tuned'}; it has: "
                               "transformer, attention, embedding, all"]
    assert not (tmp_path / "o").exists()
    live = tiny_causal_lm(arch)
    with pytest.raises(SftnbError, match=r"^unknown region 'ffn' \(one of transformer, mlp, attention, embedding, all\)$"):
        Restorer(live, {}, region="ffn")


# ----------------------------------------------------------------------------------------------- strategies
def test_one_registry_of_strategies():
    assert list(STRATEGIES) == ["top", "bottom", "random"]
    argv = ["restore", "--base", "b", "--tuned", "t", "--k", "1", "--out", "o"]
    assert build_parser().parse_args(argv).strategy == "top"
    for name in STRATEGIES:                                        # the command line takes every registered name
        assert build_parser().parse_args([*argv, "--strategy", name]).strategy == name
    with pytest.raises(SftnbError, match="invalid choice: 'sideways' \\(choose from 'top', 'bottom', 'random'\\)"):
        build_parser().parse_args([*argv, "--strategy", "sideways"])
    assert RestoreConfig().strategies == ["top"] and yaml.safe_load(dump(validate({})))["restore"]["strategies"] == ["top"]
    assert validate({"restore": {"strategies": ["top", "bottom", "random"]}}).restore.strategies == list(STRATEGIES)
    with pytest.raises(SftnbError) as e:
        validate({"restore": {"strategies": ["top", "sideways"]}})
    assert str(e.value) == ("params: restore.strategies.1: unknown strategy 'sideways' "
                            "(known: top, bottom, random)")
    with pytest.raises(SftnbError, match=r"^unknown strategy 'sideways' \(known: top, bottom, random\)$"):
        get_strategy("sideways")
    assert get_strategy("random").uses_seed and not get_strategy("top").uses_seed
    assert [get_strategy(s).largest_first for s in ("top", "bottom")] == [True, False]


def test_config_regions_are_the_registry_of_regions():
    import typing
    assert typing.get_args(RestoreConfig.model_fields["region"].annotation) == REGIONS
