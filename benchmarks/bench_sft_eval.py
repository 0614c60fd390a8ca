"""SFT samples/s and evaluation questions/s: sftnb against a naive baseline, side by side in one run.

    python benchmarks/bench_sft_eval.py --model smollm2-135m --samples 64 --questions 128

SFT: sftnb.sft.train (pre-tokenised, right-padded batches, answer-only loss) vs transformers' Trainer with its
default collation (the usual first attempt), same data, batch size, precision and steps.
Evaluation: sftnb's greedy engine (length-sorted, token-budget batches, EOS compaction) vs plain
`model.generate` one question at a time (as the authors' scripts do), 16 new tokens.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from sftnb.config import SFTConfig
from sftnb.data import load_source
from sftnb.evaluate import answer_questions
from sftnb.models import load_model
from sftnb.sft import example_ids, prompt_ids, train


def naive_trainer(model, tok, pairs, bs, precision):
    from transformers import Trainer, TrainingArguments

    rows = [dict(zip(("input_ids", "labels"), example_ids(tok, q, a))) for q, a in pairs]

    def collate(batch):                      # pad to the longest, like DataCollatorForSeq2Seq
        w = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([r["input_ids"] + [tok.pad_token_id] * (w - len(r["input_ids"])) for r in batch])
        lab = torch.tensor([r["labels"] + [-100] * (w - len(r["labels"])) for r in batch])
        return {"input_ids": ids, "labels": lab, "attention_mask": (lab != -100) | (ids != tok.pad_token_id)}

    args = TrainingArguments(output_dir="/tmp/sftnb-bench-trainer", per_device_train_batch_size=bs,
                             learning_rate=1e-5, num_train_epochs=1, lr_scheduler_type="cosine", report_to=[],
                             save_strategy="no", logging_strategy="no", bf16=precision == "bf16-mixed",
                             use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=rows, data_collator=collate).train()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--questions", type=int, default=128)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16-mixed"])
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    model, tok = load_model(a.model, device=a.device, dtype="float32")
    dev = next(model.parameters()).device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    facts = [f for f in load_source("builtin").facts if f.domain == "in"]
    pairs = [(f.question, f.answers[0]) for f in facts[: a.samples]]
    cfg = SFTConfig(batch_size=8, precision=a.precision)
    print(f"{a.model} on {dev}: SFT on {len(pairs)} samples (batch 8, {a.precision}), "
          f"greedy answers to {a.questions} questions")

    timings = {}
    for name, fn in (("naive Trainer", lambda m: naive_trainer(m, tok, pairs, 8, a.precision)),
                     ("sftnb.train", lambda m: train(m, tok, pairs, cfg, progress=False))):
        m = copy.deepcopy(model)
        sync(); t = time.perf_counter()
        fn(m)
        sync(); timings[name] = time.perf_counter() - t
        print(f"  SFT  {name:<18} {len(pairs) / timings[name]:8.1f} samples/s")
        del m
    print(f"  SFT  ratio: {timings['naive Trainer'] / timings['sftnb.train']:.2f}x")

    qs = [f.question for f in facts[1000: 1000 + a.questions]]
    eval_model = model.to(torch.bfloat16)              # inference weights in bf16 for both paths
    sync(); t = time.perf_counter()
    for q in qs:
        ids = torch.tensor([prompt_ids(tok, q)], device=dev)
        eval_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    sync(); naive = time.perf_counter() - t
    sync(); t = time.perf_counter()
    answer_questions(eval_model, tok, qs, max_new_tokens=16, progress=False)
    sync(); ours = time.perf_counter() - t
    print(f"  eval naive generate (1 at a time) {len(qs) / naive:8.1f} questions/s")
    print(f"  eval sftnb engine                 {len(qs) / ours:8.1f} questions/s")
    print(f"  eval ratio: {naive / ours:.2f}x   (both bf16 weights)")


if __name__ == "__main__":
    main()
