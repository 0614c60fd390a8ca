"""Fully sharded SFT (``sft.strategy: fsdp``) for models too big for one device, through torch FSDP2.

``train_fsdp`` is ``sftnb.sft.train`` with the model sharded over the ranks of the run: ``fully_shard`` on each
decoder layer (the model's ``_no_split_modules``), then on the root (embeddings, final norm, head) -- torch does
all the sharding, gathering and gradient reduction; nothing here is hand-written sharding.

Same semantics as ``sftnb.sft.train``: the example order is drawn from the seed in the same way, the batches
are the same global batches of ``cfg.batch_size`` examples, the same AdamW, schedule, precision (autocast) and
gradient clipping (``clip_grad_norm_`` on the sharded gradients computes the global norm). Each global batch is
split across the ranks (rank r takes examples r, r+N, ... of it). The loss is normalised by the GLOBAL number of
answer tokens: each rank backpropagates ``(sum of its token losses) * N / global token count``; FSDP averages the
gradients over the N ranks, so the update is the gradient of ``sum over all tokens / global count`` -- exactly the
single-process answer-token mean. (The global count needs no communication: every rank knows the whole batch.)
The reported per-step loss is the all-reduced sum over ranks divided by that count, so the loss trajectory equals
a single process's. A rank whose share of a (last, small) batch is empty still takes part in the collectives with
a zero-weighted forward/backward of the batch's first example.

After training, ``full_state_dict`` gathers the full weights on rank 0 (``get_model_state_dict`` with
``full_state_dict=True, cpu_offload=True``; the other ranks get ``{}``) for saving and evaluation in a plain
(unsharded) model.

Pass the model on the CPU (e.g. a copy of the experiment's CPU template): ``fully_shard`` moves each layer to
the rank's GPU and shards it there, so a GPU never holds more than its shards plus one gathered layer.

Such an SFT unit spans every rank: see ``sftnb.distributed.compute_collective`` (rank 0 claims, computes the
rest of the unit and publishes; the others train with it and receive the result). Validation: a run with
``sft.strategy: fsdp`` started as one process is refused when it starts (``distributed.check_strategy``).
"""
from __future__ import annotations

import random
import time

import torch

from .errors import SftnbError
from .sft import IGNORE, TrainReport, answer_loss, autocast_for, collate, example_ids, make_optimizer


def _dist():
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise SftnbError("sft.strategy fsdp needs several processes: launch with torchrun --nproc_per_node N")
    return dist


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def shard(model: torch.nn.Module, mesh=None) -> torch.nn.Module:
    """Apply FSDP2 ``fully_shard`` to every decoder layer, then to the root module (in place)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist = _dist()
    mesh = mesh or init_device_mesh(device().type, (dist.get_world_size(),))
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in blocks]
    if not layers:
        raise SftnbError(f"sft.strategy fsdp: {type(model).__name__} names no decoder layer class "
                         f"(_no_split_modules) to shard")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights on rank 0's CPU; ``{}`` on the other ranks. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def train_fsdp(model, tokenizer, pairs: list[tuple[str, str]], cfg, seed: int = 0,
               learning_rate: float | None = None, progress: bool = True, desc: str = "sft-fsdp",
               mesh=None) -> tuple[TrainReport, dict[str, torch.Tensor]]:
    """Fine-tune ``model`` sharded over all ranks (every rank calls this with the same arguments); returns
    (report, full state dict on rank 0 / ``{}`` elsewhere). ``model`` is sharded in place and stays sharded."""
    from transformers import get_scheduler
    from tqdm.auto import tqdm

    dist = _dist()
    rank, size = dist.get_rank(), dist.get_world_size()
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

    shard(model, mesh)
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
        with autocast_for(cfg.precision, dev):
            mean = answer_loss(model, batch)
        local_sum = mean * (batch["labels"] != IGNORE).sum() if mine else mean * 0.0
        (local_sum * (size / n_global)).backward()     # FSDP averages over ranks: the global token mean
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        total = local_sum.detach().float().clone()
        dist.all_reduce(total)
        losses.append(round(total.item() / n_global, 5))
    model.eval()
    report = TrainReport(len(batches), len(order), time.perf_counter() - t0, losses)
    return report, full_state_dict(model)
