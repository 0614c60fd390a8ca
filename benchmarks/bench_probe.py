"""Probe-sampling throughput: sftnb's generation engine vs plain ``model.generate``, side by side in one run.

Workload (the mastery probe's, paper §3.3): knowledge-probe prompts ("<s>Paris is the capital of" style, built
from the built-in facts and their relations' mapping templates), ``--samples`` completions per prompt at
temperature ``--temperature``, at most ``--max-new-tokens`` new tokens, stopping at EOS.

* naive: ``model.generate(do_sample=True, temperature=T, top_k=0, top_p=1.0, num_return_sequences=n,
  max_new_tokens=M)`` over left-padded batches of ``--naive-batch`` prompts (top_k=0 / top_p=1 so both paths draw
  from the same distribution, softmax(logits / T); Hugging Face's default top_k=50 would otherwise apply);
* ours: ``sftnb.lm.generation.generate(model, prompts, n=n, temperature=T, max_new_tokens=M, batch_tokens=...)``.

Both paths are warmed up first (a small call of each), then timed on the same prompts; the figure is
generations/s = prompts x samples / wall time. Examples::

    python benchmarks/bench_probe.py --prompts 32 --samples 10 --batch-tokens 32768      # CPU: one batch
    python benchmarks/bench_probe.py --prompts 4096 --samples 10 --naive-batch 1024       # H100 (bf16 auto)
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch


def probe_prompts(tokenizer, count: int, with_answers: bool = False):
    """``count`` probe prompts (BOS + mapping-template text), cycling over relations, templates and subjects
    (and, ``with_answers``, each prompt's answers)."""
    from sftnb.data.builtin import load_builtin
    from sftnb.data.relations import builtin_relations

    rels = builtin_relations()
    facts = load_builtin().facts
    by_rel: dict[str, list] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    streams = []
    for rid, fl in sorted(by_rel.items()):
        rel = rels[rid]
        streams.append(((f, t) for f in fl for t in range(len(rel.mapping_templates))))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out, answers = [], []
    for pair in itertools.chain.from_iterable(zip(*streams)):     # round robin over relations
        f, t = pair
        out.append(bos + tokenizer.encode(rels[f.relation].mapping(t, f.subject), add_special_tokens=False))
        answers.append(f.answers)
        if len(out) == count:
            break
    return (out, answers) if with_answers else out


def static_failed(asked: bool) -> str:
    """What a result line adds when the static path was asked for but fell back to the dynamic one."""
    from sftnb.lm.generation import static_fell_back
    return "   STATIC PATH FAILED: decoded dynamically (see the warning above)" if asked and static_fell_back() else ""


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_naive(model, tok, prompts, n, temperature, max_new, batch, eos, seed):
    dev = next(model.parameters()).device
    torch.manual_seed(seed)
    outs = []
    for s in range(0, len(prompts), batch):
        chunk = prompts[s:s + batch]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        with torch.inference_mode():
            o = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=True,
                               temperature=temperature, top_k=0, top_p=1.0, num_return_sequences=n,
                               max_new_tokens=max_new, eos_token_id=eos, pad_token_id=tok.pad_token_id)
        outs.append(o[:, width:].cpu())
    _sync(dev)
    return outs


def run_ours(model, prompts, n, temperature, max_new, batch_tokens, eos, seed, stop=None, static=False):
    from sftnb.lm.generation import generate

    out = generate(model, prompts, n=n, temperature=temperature, max_new_tokens=max_new, eos_token_ids=eos,
                   seed=seed, batch_tokens=batch_tokens, progress=False, stop=stop, static=static)
    _sync(next(model.parameters()).device)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--dtype", default="fastest",
                    help="fastest (bf16 on a GPU or a CPU with native bf16, else fp32), auto, float32, bfloat16, float16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-tokens", type=lambda v: v if v == "auto" else int(v), default="auto",
                    help="engine token budget per batch; auto (default): what the free GPU memory holds "
                         "(sftnb.lm.batching.resolve_budget), 16384 on a CPU")
    ap.add_argument("--stop-rule", action="store_true",
                    help="the engine ends a sample once it contains its answer, as the mastery probe does "
                         "(model.generate runs every sample to EOS or max_new_tokens)")
    ap.add_argument("--static", action="store_true",
                    help="the engine's static KV cache + CUDA graphs path (sftnb.lm.generation, CUDA only)")
    ap.add_argument("--naive-batch", type=int, default=None,
                    help="prompts per model.generate call (default: all prompts on CPU, 1024 on CUDA)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (on a shared, oversubscribed CPU use 1: OpenMP spin-waits otherwise "
                         "slow both paths down by 10x or more)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sftnb.lm.models import load_model

    t0 = time.perf_counter()
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    cuda = dev.type == "cuda"
    # on an H200, 2,097,152 token slots beat 524,288 and 65,536 (1.24x vs 0.89x vs 0.31x of model.generate:
    # benchmarks/results/h200-2026-11-26/call2_probe_*.log); "auto" takes what the free memory holds
    from sftnb.lm.batching import resolve_budget
    from sftnb.lm.generation import StopRule, slot_bytes
    from sftnb.data.matching import answer_in_text
    from sftnb.lm.models import word_start_tokens

    batch_tokens = resolve_budget(args.batch_tokens, model, lambda: slot_bytes(model, 24, args.max_new_tokens,
                                                                               args.samples, True))
    naive_batch = args.naive_batch or (1024 if cuda else args.prompts)
    eos = tok.eos_token_id
    prompts, answers = probe_prompts(tok, args.prompts, with_answers=True)
    stop = StopRule(word_start_tokens(tok), lambda p, toks: answer_in_text(
        answers[p], tok.decode(toks, skip_special_tokens=True))) if args.stop_rule else None
    gens = len(prompts) * args.samples
    lens = [len(p) for p in prompts]
    print(f"model {args.model} on {dev} ({torch.cuda.get_device_name(dev) if cuda else 'cpu'}), {dtype}, "
          f"torch threads {torch.get_num_threads()}, loaded in {time.perf_counter() - t0:.1f} s")
    print(f"{len(prompts)} prompts (length {min(lens)}-{max(lens)} tokens, e.g. {tok.decode(prompts[0])!r}) x "
          f"{args.samples} samples, T={args.temperature}, max {args.max_new_tokens} new tokens; "
          f"engine batch_tokens={batch_tokens}{' (auto)' if args.batch_tokens == 'auto' else ''}, stop rule "
          f"{'on' if stop else 'off'}{', static cache + CUDA graphs' if args.static else ''}, "
          f"naive {naive_batch} prompts/call")

    # each path runs the timed workload once untimed first: kernels, the allocator and, for the static path, the
    # compile and graph capture of the call's shapes (once per shape in a run; a smaller warm-up has other shapes)
    kw = dict(n=args.samples, temperature=args.temperature, max_new=args.max_new_tokens, eos=eos, seed=args.seed)
    if not args.skip_naive:
        run_naive(model, tok, prompts, batch=naive_batch, **kw)
    t = time.perf_counter()
    run_ours(model, prompts, batch_tokens=batch_tokens, stop=stop, static=args.static, **kw)
    print(f"sftnb first call     : {time.perf_counter() - t:8.2f} s  (untimed warm-up: kernels, allocator"
          f"{', compile + graph capture' if args.static and cuda else ''})")

    rates = {}
    if not args.skip_naive:
        t = time.perf_counter()
        naive = run_naive(model, tok, prompts, batch=naive_batch, **kw)
        dt = time.perf_counter() - t
        rates["naive"] = gens / dt
        new_tok = sum(int(((o != tok.pad_token_id) & (o != eos)).sum()) for o in naive)
        print(f"naive model.generate : {dt:8.2f} s  {rates['naive']:10.1f} generations/s  "
              f"(~{new_tok / gens:.1f} new tokens/generation)")
    t = time.perf_counter()
    ours = run_ours(model, prompts, batch_tokens=batch_tokens, stop=stop, static=args.static, **kw)
    dt = time.perf_counter() - t
    rates["ours"] = gens / dt
    mean_len = sum(len(c) for per in ours for c in per) / gens
    print(f"sftnb generate       : {dt:8.2f} s  {rates['ours']:10.1f} generations/s  "
          f"(~{mean_len:.1f} new tokens/generation)")
    if "naive" in rates:
        print(f"speed-up             : {rates['ours'] / rates['naive']:.2f}x{static_failed(args.static)}")
    print("example:", repr(tok.decode(prompts[0])), "->", repr(tok.decode(ours[0][0])))
    return rates


if __name__ == "__main__":
    main()
