"""Supervised fine-tuning on closed-book QA (paper §3.3, App. A).

Every example is ``<start><|question|> {question} <|answer|> {answer}<eos>`` (App. A's template, whose
``bos_token`` is the model's prompt start: ``sftnb.lm.models.encode_prompt``); the markers are plain text (no new
tokens) and the loss covers the answer tokens only (prompt tokens carry label -100). Prompt and answer are
tokenised separately so that evaluation, which feeds the prompt alone, sees exactly the training prompt ids.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .config import LoraConfig, SFTConfig
from .infra.errors import SftnbError
from .lm.batching import left_pad
from .lm.models import cast_parameters, encode_prompt

IGNORE = -100


# --------------------------------------------------------------------------------------------- the format
def qa_prompt(question: str) -> str:
    return f"<|question|> {question} <|answer|>"


def prompt_ids(tokenizer, question: str) -> list[int]:
    return encode_prompt(tokenizer, qa_prompt(question))


def example_ids(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one training example; labels are -100 over the prompt."""
    if tokenizer.eos_token_id is None:
        raise SftnbError("the tokenizer has no EOS token; SFT needs one to end answers")
    prompt = prompt_ids(tokenizer, question)
    target = tokenizer.encode(" " + answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt + target, [IGNORE] * len(prompt) + target


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad a batch (``sftnb.lm.batching.left_pad``): padding is masked out of attention and loss, and every
    row's answer ends in the last column (see ``answer_loss``)."""
    input_ids, mask, position_ids = left_pad([ids for ids, _ in examples], pad_id)
    labels, _, _ = left_pad([lab for _, lab in examples], IGNORE)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "position_ids": position_ids}


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the labelled (answer) tokens of a ``collate`` batch: what ``model(**batch).loss``
    computes, but the vocabulary projection runs only on the last columns, the ones that predict an answer token
    (~4 of ~22 on QA prompts; the head is ~20 % of a 135M model's forward and backward)."""
    labels = batch["labels"]
    width = labels.shape[1]
    first = int((labels != IGNORE).int().argmax(-1).min())      # earliest labelled column of any row
    keep = min(width, width - first + 1)                          # columns first-1 .. width-1 predict them
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=keep).logits
    targets = labels[:, width - keep + 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1), ignore_index=IGNORE)


# --------------------------------------------------------------------------------------------- training
@dataclass
class TrainReport:
    steps: int
    samples: int
    seconds: float
    losses: list[float]

    def to_dict(self) -> dict:
        return {"steps": self.steps, "samples": self.samples, "seconds": round(self.seconds, 3),
                "samples_per_s": round(self.samples / max(self.seconds, 1e-9), 2),
                "loss_first": self.losses[0] if self.losses else None,
                "loss_last": self.losses[-1] if self.losses else None, "losses": self.losses}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16-mixed`` for this device (see ``SFTConfig.precision``)."""
    if precision in ("auto", "fastest"):
        from .lm.models import cpu_has_native_bf16
        fast_cpu = precision == "fastest" and cpu_has_native_bf16()
        return "bf16-mixed" if device.type == "cuda" or fast_cpu else "fp32"
    return precision


def autocast_for(precision: str, device: torch.device):
    if resolve_precision(precision, device) == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _adamw(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one for these parameters (CPU and CUDA: on a 135M model the
    step drops from ~0.36 s to ~0.08 s on 2 CPU cores), the per-tensor loop otherwise."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``sft.optimizer``: torch AdamW, or bitsandbytes' 8-bit AdamW (``adamw_8bit``) / paged 8-bit AdamW
    (``paged_adamw_8bit``), whose two states take ~2 bytes per parameter instead of 8."""
    if name == "adamw":
        return _adamw(params, lr, weight_decay)
    params = list(params)
    if not params or params[0].device.type != "cuda":
        raise SftnbError(f"sft.optimizer {name} runs on a CUDA GPU (bitsandbytes); use adamw on this device")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise SftnbError(f"sft.optimizer {name} needs bitsandbytes (pip install bitsandbytes)") from None
    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=lr, weight_decay=weight_decay)


def train(model, tokenizer, pairs: list[tuple[str, str]], cfg: SFTConfig, seed: int = 0,
          learning_rate: float | None = None, progress: bool = True, desc: str = "sft") -> TrainReport:
    """Fine-tune ``model`` in place on (question, answer) pairs: AdamW, the configured schedule, ``epochs``
    passes in an order shuffled by ``seed``. Weights stay in their dtype (fp32 for full fine-tuning)."""
    if not pairs:
        raise SftnbError("SFT needs at least one training example")
    encoded = [example_ids(tokenizer, q, a) for q, a in pairs]
    return train_encoded(model, tokenizer, encoded, cfg, seed, learning_rate, progress, desc)


def train_encoded(model, tokenizer, encoded: list[tuple[list[int], list[int]]], cfg: SFTConfig, seed: int = 0,
                  learning_rate: float | None = None, progress: bool = True, desc: str = "train",
                  shuffle: bool = True) -> TrainReport:
    """The training loop on encoded (input_ids, labels) examples (labels -100 where no loss is taken): SFT uses
    it with answer-only labels, knowledge injection (``sftnb.inject``) with every statement token labelled.
    ``shuffle=False`` keeps the given order (one epoch per ``cfg.epochs``)."""
    from transformers import get_scheduler

    if not encoded:
        raise SftnbError("training needs at least one example")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rng = random.Random(seed)
    torch.manual_seed(seed)
    order = [i for _ in range(cfg.epochs)
             for i in (rng.sample(range(len(encoded)), len(encoded)) if shuffle else range(len(encoded)))]
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]

    if cfg.precision == "bf16":                       # pure bf16: weights, gradients and optimizer states
        cast_parameters(model, torch.bfloat16)        # (the rotary frequencies stay float32, as in a bf16 load)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(cfg.optimizer, params, learning_rate or cfg.learning_rate, cfg.weight_decay)
    sched = get_scheduler(cfg.scheduler, opt, num_warmup_steps=int(cfg.warmup_ratio * len(batches)),
                          num_training_steps=len(batches))
    if cfg.gradient_checkpointing:                    # same results, activations recomputed in the backward pass
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for batch_idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in batch_idx], pad).items()}
        with autocast_for(cfg.precision, device):
            loss = answer_loss(model, batch)
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 5))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    return TrainReport(len(batches), len(order), time.perf_counter() - t0, losses)


def train_lora(model, tokenizer, pairs: list[tuple[str, str]], cfg: SFTConfig, seed: int = 0,
               progress: bool = True):
    """Table 7's LoRA baseline through peft; returns (merged plain model, report)."""
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    lc: LoraConfig = cfg.lora
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in lc.target_modules if t in names]
    if not targets:
        raise SftnbError(f"sft.lora.target_modules {lc.target_modules} match no module of this model")
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, PeftLora(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))
    report = train(peft_model, tokenizer, pairs, cfg, seed=seed, learning_rate=lc.learning_rate,
                   progress=progress, desc="sft-lora")
    return peft_model.merge_and_unload().eval(), report
