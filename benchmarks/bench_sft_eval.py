"""SFT samples/s and evaluation questions/s: sftnb against a naive baseline, side by side in one run.

    python benchmarks/bench_sft_eval.py --model smollm2-135m --samples 64 --questions 128

SFT: sftnb.sft.train (pre-tokenised, left-padded batches, loss projected only on answer columns) vs transformers' Trainer with its
default collation (the usual first attempt), same data, batch size, precision and steps.
Evaluation: sftnb's greedy engine (length-sorted, token-budget batches, EOS compaction) vs plain
`model.generate(do_sample=False)` over left-padded batches of --naive-batch questions (the baseline of
../shared/reference/baselines.md: 4096 per call on an H100) and, for reference, one question at a time (as the
authors' scripts do); 16 new tokens, the same inference dtype for every path (``--eval-dtype``, default
``fastest``: bf16 on a GPU or a CPU with native bf16, fp32 on other CPUs), warmed up first.

    python benchmarks/bench_sft_eval.py --samples 64 --questions 256                    # CPU
    python benchmarks/bench_sft_eval.py --samples 1920 --questions 16384 --naive-batch 4096 --skip-one-by-one   # H100
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from sftnb.config import SFTConfig
from sftnb.data.sources import load_source
from sftnb.evaluate import answer_questions
from sftnb.lm.models import cast_parameters, load_model, resolve_dtype, stop_token_ids
from sftnb.sft import example_ids, prompt_ids, resolve_precision, train

from bench_probe import static_failed     # benchmarks/ is on sys.path when a script there runs


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
    return Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)   # built outside the timing


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--questions", type=int, default=128)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16-mixed"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--eval-dtype", default="fastest", choices=["auto", "fastest", "float32", "bfloat16", "float16"],
                    help="inference weights for every evaluation path")
    ap.add_argument("--naive-batch", type=int, default=None, help="questions per generate call (default: all)")
    ap.add_argument("--batch-tokens", type=lambda v: v if v == "auto" else int(v), default="auto",
                    help="engine token budget; auto (default): what the free GPU memory holds, 16384 on a CPU")
    ap.add_argument("--stop-rule", action="store_true",
                    help="the engine stops an answer once it contains the expected one (as evaluate_sets does)")
    ap.add_argument("--static", action="store_true", help="the engine's static KV cache + CUDA graphs path (CUDA)")
    ap.add_argument("--skip-sft", action="store_true", help="evaluation only")
    ap.add_argument("--skip-one-by-one", action="store_true", help="skip the 1-question-per-call reference path")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = load_model(a.model, device=a.device, dtype="float32")
    dev = next(model.parameters()).device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    facts = [f for f in load_source("builtin").facts if f.domain == "in"]
    pairs = [(f.question, f.answers[0]) for f in facts[: a.samples]]
    # both paths train in the same precision: "auto" is bf16-mixed on CUDA, fp32 on CPU (resolved once, here)
    precision = resolve_precision(a.precision, dev)
    cfg = SFTConfig(batch_size=8, precision=precision)
    print(f"{a.model} on {dev}: SFT on {len(pairs)} samples (batch 8, {precision}), "
          f"greedy answers to {a.questions} questions")

    timings = {}
    # each path gets a fresh copy of the model; only the training loop is timed (Trainer() construction is not)
    for name, make in (() if a.skip_sft else (
            ("naive Trainer", lambda m: naive_trainer(m, tok, pairs, 8, precision).train),
            ("sftnb.train", lambda m: lambda: train(m, tok, pairs, cfg, progress=False)))):
        m = copy.deepcopy(model)
        run = make(m)
        sync(); t = time.perf_counter()
        run()
        sync(); timings[name] = time.perf_counter() - t
        print(f"  SFT  {name:<18} {len(pairs) / timings[name]:8.1f} samples/s")
        del m
    if timings:
        print(f"  SFT  ratio: {timings['naive Trainer'] / timings['sftnb.train']:.2f}x")

    facts_q = [f for f in load_source("builtin").facts if f.split == "test"]
    qs = [facts_q[i % len(facts_q)].question for i in range(a.questions)]
    answers = [facts_q[i % len(facts_q)].answers for i in range(a.questions)] if a.stop_rule else None
    eval_dtype = resolve_dtype(a.eval_dtype, dev)
    eval_model = cast_parameters(model, eval_dtype)    # the same inference weights for every path, the rotary
    eos = list(stop_token_ids(tok))                    # frequencies float32 as in the pipeline; the engine's stops

    def batched_generate(questions):
        for s in range(0, len(questions), a.naive_batch or len(questions)):
            chunk = [prompt_ids(tok, q) for q in questions[s:s + (a.naive_batch or len(questions))]]
            w = max(len(p) for p in chunk)
            ids = torch.tensor([[tok.pad_token_id] * (w - len(p)) + p for p in chunk], device=dev)
            mask = torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in chunk], device=dev)
            with torch.inference_mode():
                eval_model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                                    pad_token_id=tok.pad_token_id, eos_token_id=eos)

    def one_by_one(questions):
        for q in questions:
            ids = torch.tensor([prompt_ids(tok, q)], device=dev)
            with torch.inference_mode():
                eval_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                                    pad_token_id=tok.pad_token_id, eos_token_id=eos)

    def engine(questions, model=None):
        answer_questions(model or eval_model, tok, questions, max_new_tokens=16, batch_tokens=a.batch_tokens,
                         progress=False, answers=answers[:len(questions)] if answers else None, static=a.static)

    paths = {"naive generate, batched": batched_generate, "sftnb engine": engine}
    if not a.skip_one_by_one:
        paths["naive generate, 1 at a time"] = one_by_one
    rates = {}
    for name, fn in paths.items():
        sync(); t = time.perf_counter()
        fn(qs if fn is not one_by_one else qs[:8])   # warm-up on the timed workload: kernels, allocator, and
                                                       # the static path's compile + graphs for the call's shapes
        sync(); print(f"  eval {name:<28} first call {time.perf_counter() - t:6.2f} s (untimed warm-up)")
        sync(); t = time.perf_counter()
        fn(qs)
        sync(); rates[name] = len(qs) / (time.perf_counter() - t)
        print(f"  eval {name:<28} {rates[name]:9.1f} questions/s")
    # the grid evaluates one new model after another: what does the next model's first call cost (with the
    # static path, whether its compile and graphs are reused or made again)?
    from sftnb.lm.models import copy_model
    other = copy_model(eval_model, dev)
    sync(); t = time.perf_counter()
    engine(qs, other)
    sync(); print(f"  eval sftnb engine, another model's first call {time.perf_counter() - t:6.2f} s "
                  f"(the timed workload: {len(qs) / rates['sftnb engine']:.2f} s)")
    del other
    print(f"  eval ratio vs batched generate: {rates['sftnb engine'] / rates['naive generate, batched']:.2f}x"
          + (f"; vs 1 at a time: {rates['sftnb engine'] / rates['naive generate, 1 at a time']:.2f}x"
             if "naive generate, 1 at a time" in rates else "") + f"   ({str(eval_dtype).removeprefix('torch.')} weights"
          f"{', stop rule on' if answers else ''}{', static cache + CUDA graphs' if a.static else ''}"
          f"{static_failed(a.static)})")

if __name__ == "__main__":
    main()
