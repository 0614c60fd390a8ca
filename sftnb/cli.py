"""``sftnb`` command line: thin wrappers over library calls that the notebooks and tests use too.

    sftnb data summary --source entityquestions --path DIR | --source builtin
    sftnb probe   --model M --facts F --out results.jsonl [--templates N --samples S ...]
    sftnb restore --base DIR --tuned DIR --k 20[,40,...] --out DIR [--strategy top|bottom|random] [--region R]
    sftnb run     params/<name>.yaml [--only 01,03] [--out runs/<name>]
    sftnb plan    params/<name>.yaml [--gpus N] [--gpu-memory GB] [--host-memory GB]

``sftnb plan`` prints the memory plan (sftnb.plan) and exits 0 when it fits, 1 when it does not.

A bad input (path, file, parameter) prints one line ``sftnb: error: ...`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys

from .errors import SftnbError


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # argparse's usage dump becomes our one-line error
        raise SftnbError(message if self.prog == "sftnb" else f"{self.prog}: {message}")


def _cmd_data_summary(args) -> int:
    from .data import domain_totals, load_source, summary_table

    if args.source == "entityquestions" and not args.path:
        raise SftnbError("--source entityquestions needs --path DIR")
    fs = load_source(args.source, args.path)
    table = summary_table(fs)
    totals = domain_totals(table)
    print(f"source: {fs.source}  relations: {len(table)}  facts: {len(fs.facts)}  "
          f"unmatched questions: {sum(fs.unmatched.values())}")
    print(table.to_string(index=False))
    print()
    print(totals.to_string())
    for ex in fs.unmatched_examples[:5]:
        print(f"unmatched: {ex}")
    return 0


def _cmd_probe(args) -> int:
    from .mastery import probe_cli
    return probe_cli(args)


def _cmd_restore(args) -> int:
    from .restore import restore_cli
    return restore_cli(args)


def _cmd_run(args) -> int:
    from .runner import run_cli
    return run_cli(args)


def _cmd_plan(args) -> int:
    from .config import load_config
    from .plan import format_plan, plan_from_config

    cfg = load_config(args.params)
    p = plan_from_config(cfg, args.gpus, args.gpu_memory, args.host_memory)
    print(format_plan(p))
    return 0 if p.fits else 1


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sftnb", description="Effects of SFT on model knowledge (Ye et al., EMNLP 2025)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = sub.add_parser("data", help="inspect a data source")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    s = dsub.add_parser("summary", help="facts per relation, split and domain")
    s.add_argument("--source", choices=["entityquestions", "builtin", "file"], required=True)
    s.add_argument("--path", help="EntityQuestions folder or JSONL facts file")
    s.set_defaults(func=_cmd_data_summary)

    pr = sub.add_parser("probe", help="knowledge mastery of facts (paper App. F.1)")
    pr.add_argument("--model", required=True, help="smollm2-135m, tiny-random or a local HF folder")
    pr.add_argument("--facts", required=True,
                    help="JSONL facts file, or builtin[:split] / entityquestions:PATH[:split]")
    pr.add_argument("--out", required=True, help="output JSONL (one line per fact)")
    pr.add_argument("--templates", type=int, default=21, help="mapping templates per fact (N_map)")
    pr.add_argument("--samples", type=int, default=10, help="samples per template (N_sample)")
    pr.add_argument("--temperature", type=float, default=0.7)
    pr.add_argument("--max-new-tokens", type=int, default=32)
    pr.add_argument("--method", choices=["sampling", "likelihood"], default="sampling")
    pr.add_argument("--limit", type=int, default=None, help="probe only the first N facts")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--dtype", default="auto", choices=["auto", "fastest", "float32", "bfloat16", "float16"],
                    help="auto: bf16 on GPU, fp32 on CPU; fastest: also bf16 on a CPU with native bf16 (AMX ...)")
    pr.add_argument("--batch-tokens", type=int, default=16384, help="tokens per generation batch (GPU: 2**19)")
    pr.add_argument("--chunk-facts", type=int, default=1024,
                    help="facts per saved chunk: an interrupted probe resumes at the first unfinished chunk")
    pr.set_defaults(func=_cmd_probe)

    rs = sub.add_parser("restore", help="restore the most-changed parameters of a fine-tuned model (§5)")
    rs.add_argument("--base", required=True, help="pre-trained model folder (safetensors), or smollm2-135m")
    rs.add_argument("--tuned", required=True, help="fine-tuned model folder (safetensors)")
    rs.add_argument("--k", required=True, help="percent(s) of the region to restore, e.g. 20 or 1,5,20")
    rs.add_argument("--out", required=True, help="output folder (one sub-folder per k when several)")
    rs.add_argument("--strategy", choices=["top", "bottom", "random"], default="top")
    rs.add_argument("--region", choices=["transformer", "mlp", "attention", "embedding", "all"],
                    default="transformer")
    rs.add_argument("--seed", type=int, default=0, help="for --strategy random")
    rs.add_argument("--shard-size", default="2GB", help="output shard budget, e.g. 500MB, 2GB")
    rs.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    rs.set_defaults(func=_cmd_restore)

    rn = sub.add_parser("run", help="run notebooks 01-06 headless with papermill")
    rn.add_argument("params", help="params/<name>.yaml")
    rn.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,03")
    rn.add_argument("--out", help="folder for executed notebooks and the store (default runs/<run_name>)")
    rn.add_argument("--force", action="store_true",
                    help="execute every notebook, also those whose inputs are unchanged since they last succeeded")
    rn.set_defaults(func=_cmd_run)

    pl = sub.add_parser("plan", help="peak memory of every stage per device, from config.json alone (no weights)")
    pl.add_argument("params", help="params/<name>.yaml")
    pl.add_argument("--gpus", type=int, help="devices (ranks of an fsdp run; default: this machine's GPUs)")
    pl.add_argument("--gpu-memory", type=float, help="GB (2**30 bytes) per device; default: this machine's GPU, "
                                                     "or its RAM (MemTotal) for a CPU run")
    pl.add_argument("--host-memory", type=float, help="GB of host RAM to check the pre-trained reference against")
    pl.set_defaults(func=_cmd_plan)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except SftnbError as e:
        print(f"sftnb: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sftnb: interrupted (finished units are kept; rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
