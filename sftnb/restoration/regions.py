"""Restoration regions and the module labels of Tables 9-10, from the model's own module tree (paper §5.1, App. B.2).

Each parameter takes the kind of the innermost classified module on its path in ``model.named_modules()``:

* embedding: the input embeddings and the output head (``get_input_embeddings`` / ``get_output_embeddings``), and
  any ``nn.Embedding`` (GPT-2's position table);
* norm: ``nn.LayerNorm`` / ``nn.RMSNorm`` / ``nn.GroupNorm`` or a class named ...Norm (LlamaRMSNorm);
* attention / mlp: a class named ...Attention / ...Attn / ...MLP (LlamaAttention, GPT2Attention, GPTNeoXMLP,
  Qwen2MLP, ...) or, for a container whose class names neither (a mixture-of-experts block), its attribute name
  (attn, attention, mlp, feed_forward, ffn, moe);
* other: the rest.

Innermost wins, so a norm inside an attention block (Qwen3's q_norm) is a norm, as the LLaMA name rules had it.
A parameter's decoder layer is its index in the first ``nn.ModuleList`` on its path (model.layers.3,
transformer.h.3, gpt_neox.layers.3). Regions: transformer = attention + mlp of the decoder layers; mlp, attention:
each alone; embedding; all. On LLaMA these are exactly the sets of the earlier LLaMA name rules
(tests/test_regions.py), so restorations and store keys are unchanged.

On disk (``sftnb restore``) the tree comes from the checkpoint's config.json: the model is built on the meta device
(no memory, no weights read) and a tensor name is looked up by its owning module's path, with or without the base
model prefix. A bare list of names with no model at hand (a state dict) is read with the same cues taken from the
names' path components (``BY_NAME``, ``place_of_name``); tests check that it agrees with the tree on LLaMA,
GPT-2, NeoX and Qwen2.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch
from torch import nn

from ..infra.errors import SftnbError

REGIONS = ("transformer", "mlp", "attention", "embedding", "all")
LAYER_REGIONS = {"transformer": ("attention", "mlp"), "mlp": ("mlp",), "attention": ("attention",)}
OTHER = "other"
LABEL_PREFIX = {"attention": "attn", "mlp": "mlp"}
# the paper's short labels for LLaMA-style projections (Tables 9-10); other modules keep their own names
SHORT_NAMES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
               "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
PAPER_MODULE_ORDER = ("mlp.down", "mlp.up", "mlp.gate", "attn.o", "attn.q", "attn.v", "attn.k")
NORM_CLASSES = tuple(c for c in (nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None)) if c is not None)


def kind_of_class(class_name: str) -> str | None:
    """The module kind a class name announces (LlamaRMSNorm, GPT2Attention, GPTNeoXMLP), if any."""
    t = class_name.lower()
    if "norm" in t:
        return "norm"
    if "attention" in t or "attn" in t:
        return "attention"
    if "mlp" in t or "feedforward" in t:
        return "mlp"
    return None


def kind_of_attribute(attr: str) -> str | None:
    """The module kind an attribute name announces (self_attn, mlp, ln_1, block_sparse_moe), if any. Only for
    containers and bare names: a class name such as Qwen2MoeModel would wrongly read as an MLP."""
    t = attr.lower()
    if "norm" in t or t == "ln" or t.startswith("ln_"):
        return "norm"
    if "attention" in t or "attn" in t:
        return "attention"
    if any(w in t for w in ("mlp", "feed_forward", "ffn", "moe")):
        return "mlp"
    return None


def kind_of_name_part(part: str) -> str | None:
    """A path component of a bare tensor name: the attribute cues, plus the usual names of embeddings and heads."""
    kind = kind_of_attribute(part)
    if kind is None and ("embed" in part.lower() or part in ("wte", "wpe", "lm_head")):
        return "embedding"
    return kind


@dataclass(frozen=True)
class Place:
    """Where a tensor sits: its kind (attention, mlp, embedding, norm, other), decoder layer and table label."""
    kind: str
    layer: int | None
    label: str


def place_of(parts: list[str], kinds: list[str | None], is_list: list[bool]) -> Place:
    """The place of what the module ``parts`` owns; ``kinds[i]`` / ``is_list[i]``: the kind of module parts[:i+1]
    and whether it is the list of decoder layers (a ModuleList)."""
    kind = next((k for k in reversed(kinds) if k), OTHER)
    layer = next((int(parts[i + 1]) for i in range(len(parts) - 1) if is_list[i] and parts[i + 1].isdigit()), None)
    label = OTHER
    if kind in LABEL_PREFIX:
        rest = [p for p in parts[kinds.index(kind) + 1:] if not p.isdigit()]   # below the outermost such block
        if rest:
            rest[-1] = SHORT_NAMES.get(rest[-1], rest[-1])
        label = ".".join([LABEL_PREFIX[kind], *rest])
    return Place(kind, layer, label)


class ModelRegions:
    """The places of one architecture's tensors, keyed by the path of the module that owns them."""

    def __init__(self, places: dict[str, Place], prefix: str = ""):
        self.places = places
        self.prefix = prefix            # the base model's attribute (model, transformer, gpt_neox)

    def place(self, name: str) -> Place:
        """The place of the module owning ``name``; a name no module of the tree owns (a stand-in, a stray
        tensor of a checkpoint) is read by the cues of its path components."""
        owner = name.rpartition(".")[0]
        candidates = [owner]
        if self.prefix:                 # checkpoints of the bare base model lack the prefix, or have it extra
            candidates.append(f"{self.prefix}.{owner}" if owner else self.prefix)
            if owner.startswith(self.prefix + "."):
                candidates.append(owner[len(self.prefix) + 1:])
        found = next((self.places[c] for c in candidates if c in self.places), None)
        return found if found is not None else place_of_name(owner)

    def layer(self, name: str) -> int | None:
        return self.place(name).layer

    def label(self, name: str) -> str:
        return self.place(name).label

    def contains(self, name: str, region: str) -> bool:
        check_region(region)
        if region == "all":
            return True
        place = self.place(name)
        if region == "embedding":
            return place.kind == "embedding"
        return place.kind in LAYER_REGIONS[region] and place.layer is not None

    def names(self, names: Iterable[str], region: str) -> list[str]:
        """The region's names in canonical order (sorted): the order that breaks ties."""
        check_region(region)
        return sorted(n for n in names if self.contains(n, region))

    def present(self, names: Iterable[str]) -> list[str]:
        """The regions that hold at least one of ``names``."""
        names = list(names)
        return [r for r in REGIONS if any(self.contains(n, r) for n in names)]

    def require(self, names: Iterable[str], region: str, what: str) -> list[str]:
        """``names(names, region)``, or one line naming the regions ``what`` does have."""
        names = list(names)
        found = self.names(names, region)
        if not found:
            raise SftnbError(f"region {region!r} holds no tensor of {what}; it has: "
                             f"{', '.join(self.present(names)) or 'no tensor at all'}")
        return found


def check_region(region: str) -> None:
    if region not in REGIONS:
        raise SftnbError(f"unknown region {region!r} (one of {', '.join(REGIONS)})")


# ============================================================================================= building them
def model_regions(model: nn.Module) -> ModelRegions:
    """The regions of a model (live or on the meta device) from its module tree."""
    heads = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            module = None
        if module is not None:
            heads.add(id(module))
    modules = dict(model.named_modules(remove_duplicate=False))
    kinds, lists = {}, set()
    for path, module in modules.items():
        if not path:
            continue
        if isinstance(module, nn.ModuleList):
            lists.add(path)
        if id(module) in heads or isinstance(module, nn.Embedding):
            kinds[path] = "embedding"
        elif isinstance(module, NORM_CLASSES):
            kinds[path] = "norm"
        else:
            kinds[path] = kind_of_class(type(module).__name__)
            if kinds[path] is None and not isinstance(module, (nn.ModuleList, nn.ModuleDict)) \
                    and next(module.children(), None) is not None:
                kinds[path] = kind_of_attribute(path.rpartition(".")[2])
    places = {}
    for path in modules:
        parts = path.split(".") if path else []
        prefixes = [".".join(parts[:i + 1]) for i in range(len(parts))]
        places[path] = place_of(parts, [kinds.get(p) for p in prefixes], [p in lists for p in prefixes])
    return ModelRegions(places, getattr(model, "base_model_prefix", "") or "")


def checkpoint_regions(folder: str | Path) -> ModelRegions:
    """The regions of a Hugging Face checkpoint, from the module tree its config.json describes (built on the meta
    device: nothing is allocated, no weight is read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise SftnbError(f"{folder}: no config.json (the regions come from the model's architecture)")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:   # RuntimeError: meta
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SftnbError(f"{folder / 'config.json'}: transformers cannot build this causal LM ({msg})") from None
    return model_regions(model)


def place_of_name(owner: str) -> Place:
    """The place of what the module path ``owner`` owns, read from the attribute cues of its components; the
    decoder layer is the first numeric component."""
    parts = owner.split(".") if owner else []
    return place_of(parts, [kind_of_name_part(p) for p in parts], [True] * len(parts))


BY_NAME = ModelRegions({})             # no module tree at hand (a state dict): every name read by its path's cues


# ============================================================================================= name-level helpers
def in_region(name: str, region: str, regions: ModelRegions | None = None) -> bool:
    return (regions or BY_NAME).contains(name, region)


def region_names(names: Iterable[str], region: str, regions: ModelRegions | None = None) -> list[str]:
    """The region's names in canonical order (sorted); ``regions``: the model's (default: read from the names)."""
    names = list(names)
    return (regions or BY_NAME).names(names, region)


def layer_of(name: str, regions: ModelRegions | None = None) -> int | None:
    return (regions or BY_NAME).layer(name)


def distribution(selection, regions: ModelRegions | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 9 and 10: the share of a selection's elements (``sftnb.restoration.selection.Selection``) per decoder layer and per
    module label (the paper's for LLaMA-style projections first, then the others as they come, then "other")."""
    regions = regions or BY_NAME
    total = sum(selection.per_tensor.values()) or 1
    by_layer: dict[int, int] = {}
    by_module: dict[str, int] = {}
    for name, n in selection.per_tensor.items():
        place = regions.place(name)
        if place.layer is not None:
            by_layer[place.layer] = by_layer.get(place.layer, 0) + n
        by_module[place.label] = by_module.get(place.label, 0) + n
    layers = sorted(by_layer)
    per_layer = pd.DataFrame({"layer": layers, "count": [by_layer[k] for k in layers]})
    per_layer["share"] = per_layer["count"] / total
    order = [m for m in PAPER_MODULE_ORDER if m in by_module]
    order += [m for m in by_module if m not in order and m != OTHER] + [OTHER] * (OTHER in by_module)
    per_module = pd.DataFrame({"module": order, "count": [by_module[m] for m in order]})
    per_module["share"] = per_module["count"] / total
    return per_layer, per_module
