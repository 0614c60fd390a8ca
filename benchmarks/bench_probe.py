"""Probe sampling throughput: sftnb.generation against plain `model.generate`, side by side in one run.

    python benchmarks/bench_probe.py --model smollm2-135m --prompts 32 --samples 10 --dtype bfloat16

Both paths get the same mapping-template prompts (built-in facts), T=0.7, the same max new tokens, after one
warm-up call each; prints generations/s and the ratio. Works on CPU and CUDA (--device).
"""
from __future__ import annotations

import argparse
import time

import torch

from sftnb.data import load_source
from sftnb.generation import generate
from sftnb.models import load_model


def prompts_for(tok, n):
    fs = load_source("builtin")
    facts = [f for f in fs.facts if f.split == "train" and f.domain == "in"][:: 37][:n]
    texts = [fs.relations[f.relation].mapping(i % 12, f.subject) for i, f in enumerate(facts)]
    return [[tok.bos_token_id] + tok.encode(t, add_special_tokens=False) for t in texts]


def naive(model, tok, prompts, n, new, batch):
    """Plain transformers sampling, left-padded batches, num_return_sequences=n."""
    tok.padding_side = "left"
    count = 0
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk], device=model.device)
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in chunk])[:, None]).long()
        out = model.generate(ids, attention_mask=mask.to(model.device), do_sample=True, temperature=0.7,
                             top_k=0, top_p=1.0, num_return_sequences=n, max_new_tokens=new,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        count += out.shape[0]
    return count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--naive-batch", type=int, default=32, help="prompts per model.generate call")
    ap.add_argument("--batch-tokens", type=int, default=65536)
    a = ap.parse_args()
    model, tok = load_model(a.model, device=a.device, dtype=a.dtype)
    dev = next(model.parameters()).device
    prompts = prompts_for(tok, a.prompts)
    n, new = a.samples, a.max_new_tokens
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"{a.model} on {dev} ({next(model.parameters()).dtype}), {len(prompts)} prompts x {n} samples, "
          f"{new} new tokens, T=0.7")
    results = {}
    for name, fn in (("naive generate", lambda: naive(model, tok, prompts, n, new, a.naive_batch)),
                     ("sftnb engine", lambda: sum(len(x) for x in generate(
                         model, prompts, n=n, temperature=0.7, max_new_tokens=new, eos_token_ids=[tok.eos_token_id],
                         pad_token_id=tok.pad_token_id, batch_tokens=a.batch_tokens, progress=False)))):
        fn() if dev.type == "cuda" else None          # warm-up (CUDA kernels, allocator)
        sync()
        t = time.perf_counter()
        count = fn()
        sync()
        secs = time.perf_counter() - t
        results[name] = count / secs
        print(f"  {name:<16} {count} generations in {secs:7.2f} s = {count / secs:9.1f} generations/s")
    print(f"  ratio (sftnb / naive): {results['sftnb engine'] / results['naive generate']:.2f}x")


if __name__ == "__main__":
    main()
