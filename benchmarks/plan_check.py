"""The memory plan against a measured peak: the probe's sampling and the evaluation's greedy decoding, run as the
package runs them (``run.batch_tokens: auto`` unless ``--batch-tokens``), each batch's peak beside the model's
weights next to ``sftnb.lm.memory``'s estimate of it for the same settings (the stage's estimate less the weights).

On CUDA the peak is ``torch.cuda.max_memory_allocated`` (what the plan's formulas count: live tensors), on a CPU the
peak RSS increase over the RSS before the model was built (/proc/self/status VmHWM; run with
MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the process, as tests/test_plan.py does). Prints one line
per stage and ``plan check: ok`` when every estimate is within ``--tolerance`` of its measurement::

    python benchmarks/plan_check.py                               # the embedded model, on the GPU
    python benchmarks/plan_check.py --model tiny-random --prompts 64 --device cpu    # a dry run on a CPU
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def _rss(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


class Peak:
    """The peak bytes allocated while the block runs, above what was allocated before it."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.base = _rss("VmRSS:")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.bytes = _rss("VmHWM:") - self.base


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prompts", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-tokens", type=lambda v: v if v == "auto" else int(v), default="auto")
    ap.add_argument("--tolerance", type=float, default=0.25)
    a = ap.parse_args(argv)

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from bench_probe import probe_prompts

    from sftnb.lm.batching import resolve_budget
    from sftnb.evaluate import answer_questions
    from sftnb.lm.generation import generate, slot_bytes
    from sftnb.lm.memory import PlanSettings, eval_memory, model_shape, probe_memory
    from sftnb.lm.models import load_model, resolve_device, resolve_dtype
    from sftnb.lm.scoring import first_token_logits

    dev = resolve_device(a.device)
    dtype = resolve_dtype("auto", dev)                       # run.inference_dtype auto: bf16 on CUDA, fp32 on CPU
    model, tok = load_model(a.model, device=str(dev), dtype=dtype)
    shape = model_shape(model.config.to_dict())
    prompts = probe_prompts(tok, a.prompts)
    length = max(len(p) for p in prompts)
    b = next(model.parameters()).element_size()
    generate(model, prompts[:8], n=2, temperature=0.7, max_new_tokens=4, progress=False)       # warm-up
    probe_budget = resolve_budget(a.batch_tokens, model, lambda: slot_bytes(model, length, a.max_new_tokens,
                                                                            a.samples, True))
    # one full batch of the longest prompts: the plan's peak is that of a full batch
    rows = max(1, probe_budget // (a.samples * (length + a.max_new_tokens)))
    batch = sorted(prompts, key=len)[-rows:] * (1 + rows // len(prompts))
    with Peak(dev) as probe:
        generate(model, batch[:rows], n=a.samples, temperature=0.7, max_new_tokens=a.max_new_tokens,
                 eos_token_ids=[], batch_tokens=probe_budget, progress=False)
    questions = [tok.decode(p, skip_special_tokens=True) for p in prompts]
    q_len = max(len(p) for p in prompts) + 4                      # prompt_ids adds the QA markers
    eval_budget = resolve_budget(a.batch_tokens, model, lambda: slot_bytes(model, q_len, 16, 1, False))
    n_q = max(1, eval_budget // (q_len + 16))
    with Peak(dev) as evaluation:          # an evaluation unit: greedy answers, then the token-KL first-token logits
        answer_questions(model, tok, (questions * (1 + n_q // len(questions)))[:n_q], max_new_tokens=16,
                         batch_tokens=eval_budget, progress=False)
        rows_kl = max(1, eval_budget // q_len)
        same = [p + [p[-1]] * (q_len - len(p)) for p in prompts]       # full-length rows: one full batch
        first_token_logits(model, (same * (1 + rows_kl // len(same)))[:rows_kl], batch_tokens=eval_budget)
    on_cpu = dev.type != "cuda"
    total = (torch.cuda.get_device_properties(dev).total_memory if not on_cpu else 0) / 2**30
    common = dict(on_cpu=on_cpu, gpu_memory_gb=total or 1.0, infer_bytes=b, train_bytes=b, prompt_tokens=length,
                  probe_samples=a.samples, probe_new_tokens=a.max_new_tokens, eval_new_tokens=16)
    # what a batch adds beside the model's weights (allocated before either measurement)
    weights = shape.params * b
    plans = {"probe": probe_memory(shape, PlanSettings(**common, batch_tokens=probe_budget)).total - weights,
             "eval": eval_memory(shape, PlanSettings(**{**common, "prompt_tokens": q_len},
                                                     batch_tokens=eval_budget)).total - weights}
    measured = {"probe": probe.bytes, "eval": evaluation.bytes}
    ok = True
    for stage in plans:
        err = (plans[stage] - measured[stage]) / measured[stage]
        ok &= abs(err) <= a.tolerance
        print(f"{stage:<6} batch peak beside the weights: plan {plans[stage] / 2**30:8.3f} GiB   measured {measured[stage] / 2**30:8.3f} GiB   "
              f"error {err:+.1%}   (batch_tokens {probe_budget if stage == 'probe' else eval_budget}, "
              f"{'max_memory_allocated' if not on_cpu else 'peak RSS'})")
    print(json.dumps({"device": str(dev), "plans": plans, "measured": measured}))
    print(f"plan check: {'ok' if ok else 'OUTSIDE'} (tolerance {a.tolerance:.0%})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
