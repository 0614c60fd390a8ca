"""Fully sharded SFT (``sft.strategy: fsdp``) for models too big for one device, through torch FSDP2.

``train_fsdp`` is ``sftnb.sft.train`` with the model sharded over the ranks of the run: ``fully_shard`` on each
decoder layer (the model's ``_no_split_modules``), then on the root (embeddings, final norm, head) -- torch does
all the sharding, gathering and gradient reduction; nothing here is hand-written sharding.

Same semantics as ``sftnb.sft.train``: the example order is drawn from the seed in the same way, the batches
are the same global batches of ``cfg.batch_size`` examples, the same AdamW, schedule, precision and
gradient clipping (``clip_grad_norm_`` on the sharded gradients computes the global norm). Each global batch is
split across the ranks (rank r takes examples r, r+N, ... of it). The loss is normalised by the GLOBAL number of
answer tokens: each rank backpropagates ``(sum of its token losses) * N / global token count``; FSDP averages the
gradients over the N ranks, so the update is the gradient of ``sum over all tokens / global count`` -- exactly the
single-process answer-token mean. (The global count needs no communication: every rank knows the whole batch.)
The reported per-step loss is the all-reduced sum over ranks divided by that count, so the loss trajectory equals
a single process's. A rank whose share of a (last, small) batch is empty still takes part in the collectives with
a zero-weighted forward/backward of the batch's first example.

Precision comes from FSDP2's ``MixedPrecisionPolicy`` (``mixed_precision``): bf16 compute and all-gathers with
fp32 gradient reduction into fp32 shards for ``bf16-mixed`` (a GPU's ``auto``), plain fp32 otherwise -- no
autocast, which kept a bf16 copy of every gathered weight until the backward pass.

The model is built empty on the meta device, sharded, and given its weights shard by shard
(``sharded_from_rank0``: ``set_model_state_dict(..., full_state_dict=True, broadcast_from_rank0=True)`` from rank
0's pre-trained template, or each rank's own template in a group without rank 0): no rank copies the whole model
for a run, and a GPU never holds more than its shards plus the gathered layers.

After training, ``full_state_dict`` gathers the full weights on the CPU of the mesh's first rank (the other ranks
get ``{}``) for saving and evaluation in a plain (unsharded) model.

Such an SFT unit spans a group of ranks (``mesh``; all of them by default): see
``sftnb.infra.distributed.compute_collective`` (the group's first rank claims, computes the rest of the unit and
publishes; the others train with it and receive the result). Validation: a run with ``sft.strategy: fsdp``
started as one process is refused when it starts (``distributed.check_fsdp_launch``).
"""
from __future__ import annotations

import random
import time

import torch

from .infra.errors import SftnbError
from .infra.launch import device
from .sft import IGNORE, TrainReport, answer_loss, collate, example_ids, make_optimizer, resolve_precision


def _dist():
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise SftnbError("sft.strategy fsdp needs several processes: launch with torchrun --nproc_per_node N")
    return dist


def mixed_precision(precision: str, dev: torch.device):
    """FSDP2's ``MixedPrecisionPolicy`` for ``sft.precision`` on ``dev``: with bf16-mixed (a GPU's ``auto``) the
    gathered weights and the forward/backward compute in bf16 and the gradients are reduce-scattered in fp32 into
    the fp32 shards the optimizer updates -- no autocast, whose bf16 copies of every gathered weight lived until
    the backward pass, and all-gathers of half the bytes. fp32 (a CPU's ``auto``) keeps everything fp32: the
    result equals a single process's. Pure bf16 weights need no policy (they are bf16 already)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if resolve_precision(precision, dev) == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model: torch.nn.Module, mesh=None, mp_policy=None) -> torch.nn.Module:
    """Apply FSDP2 ``fully_shard`` to every decoder layer, then to the root module (in place), with the mixed
    precision policy ``mp_policy`` (``mixed_precision``); ``mesh`` defaults to every rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dist = _dist()
    mesh = mesh or init_device_mesh(device().type, (dist.get_world_size(),))
    mp_policy = mp_policy or MixedPrecisionPolicy()
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in blocks]
    if not layers:
        raise SftnbError(f"sft.strategy fsdp: {type(model).__name__} names no decoder layer class "
                         f"(_no_split_modules) to shard")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp_policy)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy)
    return model


def sharded_from_rank0(config, state: dict[str, torch.Tensor] | None, mesh=None, mp_policy=None,
                       dtype: torch.dtype = torch.float32, broadcast: bool = True) -> torch.nn.Module:
    """A model built on the meta device (no memory) from ``config``, sharded (``shard``), then given the weights
    ``state`` that rank 0 holds (its CPU template's; the other ranks pass None): ``set_model_state_dict`` with
    ``broadcast_from_rank0`` sends each rank only its shards. So the full weights are read and held once, on rank
    0's host, and no rank ever copies the whole model. With ``broadcast=False`` every rank passes a full ``state``
    (its own template) and takes its shards from it: a mesh of some of the ranks, without rank 0, cannot receive
    a broadcast from rank 0."""
    from accelerate import init_empty_weights
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):     # parameters on meta; buffers (rotary freqs) computed
        model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    shard(model, mesh, mp_policy)
    model.to_empty(device=device())
    with torch.no_grad():                               # to_empty also emptied the buffers: put them back
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    set_model_state_dict(model, state or {}, options=StateDictOptions(full_state_dict=True,
                                                                      broadcast_from_rank0=broadcast))
    return model


def full_state_dict(model: torch.nn.Module, mesh=None) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights on the CPU of the mesh's first rank (rank 0 without a mesh); ``{}`` on the
    other ranks. Every rank of the mesh must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if mesh is None:
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first = _dist().get_rank(mesh.get_group()) == 0
    out = {}
    for name, t in model.state_dict().items():          # one tensor gathered at a time (a group collective)
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        if first:
            out[name] = full.detach().cpu().clone()
        del full
    return out


def train_fsdp(model, tokenizer, pairs: list[tuple[str, str]], cfg, seed: int = 0,
               learning_rate: float | None = None, progress: bool = True, desc: str = "sft-fsdp",
               mesh=None) -> tuple[TrainReport, dict[str, torch.Tensor]]:
    """Fine-tune ``model`` sharded over all ranks (every rank calls this with the same arguments); returns
    (report, full state dict on rank 0 / ``{}`` elsewhere). ``model`` is sharded in place and stays sharded."""
    from transformers import get_scheduler
    from tqdm.auto import tqdm

    dist = _dist()
    group = mesh.get_group() if mesh is not None else None      # a sub-group of the ranks, or all of them
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    if not pairs:
        raise SftnbError("SFT needs at least one training example")
    dev = device()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [example_ids(tokenizer, q, a) for q, a in pairs]
    answer_tokens = [sum(t != IGNORE for t in labels) for _, labels in encoded]
    # exactly sftnb.sft.train's order and batches
    rng = random.Random(seed)
    torch.manual_seed(seed)
    order = [i for _ in range(cfg.epochs) for i in rng.sample(range(len(encoded)), len(encoded))]
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]

    if not hasattr(model, "reshard"):                   # not sharded yet (sharded_from_rank0 shards itself)
        shard(model, mesh, mixed_precision(cfg.precision, dev))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(cfg.optimizer, params, learning_rate or cfg.learning_rate, cfg.weight_decay)
    sched = get_scheduler(cfg.scheduler, opt, num_warmup_steps=int(cfg.warmup_ratio * len(batches)),
                          num_training_steps=len(batches))
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for batch_idx in tqdm(batches, desc=desc, disable=not progress or rank != 0, leave=False):
        n_global = sum(answer_tokens[i] for i in batch_idx)
        mine = batch_idx[rank::size]
        batch = {k: v.to(dev) for k, v in collate([encoded[i] for i in (mine or batch_idx[:1])], pad).items()}
        mean = answer_loss(model, batch).float()      # the policy casts; the loss is summed in fp32
        local_sum = mean * (batch["labels"] != IGNORE).sum() if mine else mean * 0.0
        (local_sum * (size / n_global)).backward()     # FSDP averages over ranks: the global token mean
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        total = local_sum.detach().float().clone()
        dist.all_reduce(total, group=group)
        losses.append(round(total.item() / n_global, 5))
    model.eval()
    report = TrainReport(len(batches), len(order), time.perf_counter() - t0, losses)
    return report, full_state_dict(model, mesh)
