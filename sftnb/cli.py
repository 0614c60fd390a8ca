"""``sftnb`` command line: thin wrappers over library calls that the notebooks and tests use too.

    sftnb data summary --source entityquestions --path DIR | --source builtin
    sftnb probe   --model M --facts F --out results.jsonl [--templates N --samples S ...]
    sftnb restore --base DIR --tuned DIR --k 20[,40,...] --out DIR [--strategy top|bottom|random] [--region R]
    sftnb inject  --model M --facts F --exposures 0,1,2,4,8,16 --out DIR [--train-per-count N ...]
    sftnb run     params/<name>.yaml [--only 01,03] [--out runs/<name>]
    sftnb report  figures/<run> [--readme README.md]  |  sftnb report --paper
    sftnb plan    params/<name>.yaml [--gpus N] [--gpu-memory GB] [--host-memory GB]

``sftnb plan`` prints the memory plan (sftnb.plan) and exits 0 when it fits, 1 when it does not.

This module is the only one that parses arguments, prints and picks exit codes; the science modules return
values. Defaults and choices come from the params schema (``sftnb.config``) and the modules' constants, so the
command line and a params file can never disagree.
A bad input (path, file, parameter) prints one line ``sftnb: error: ...`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import socket
import sys
import typing

from .config import InjectConfig, ProbeConfig, RestoreConfig, RunOptions
from .infra.errors import SftnbError
from .lm.models import DTYPE_CHOICES
from .restoration.regions import REGIONS
from .restoration.strategies import DEFAULT_STRATEGY, STRATEGIES


def _default(section, name: str):
    """A schema field's default: the one source of every default the command line shares with params files."""
    return section.model_fields[name].default


def _choices(section, name: str) -> tuple:
    return typing.get_args(section.model_fields[name].annotation)


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # argparse's usage dump becomes our one-line error
        raise SftnbError(message if self.prog == "sftnb" else f"{self.prog}: {message}")


def _cmd_data_summary(args) -> int:
    from .data.sources import source_summary

    if args.source == "entityquestions" and not args.path:
        raise SftnbError("--source entityquestions needs --path DIR")
    fs, table, totals = source_summary(args.source, args.path)
    print(f"source: {fs.source}  relations: {len(table)}  facts: {len(fs.facts)}  "
          f"unmatched questions: {sum(fs.unmatched.values())}")
    print(table.to_string(index=False))
    print()
    print(totals.to_string())
    for ex in fs.unmatched_examples[:5]:
        print(f"unmatched: {ex}")
    return 0


def _cmd_probe(args) -> int:
    """Probe any facts file or data source, one JSON line per fact (``probe_file.probe_to_jsonl``). Resumable: facts
    are probed in chunks of ``--chunk-facts``, each saved as a store unit in a hidden folder beside ``--out``
    (``.<out name>.units/``) the moment it finishes; rerunning the same command after an interruption reuses every
    finished chunk. The folder is removed once ``--out`` is written."""
    from pathlib import Path

    from .data.facts import CATEGORIES
    from .data.relations import all_relations
    from .data.sources import facts_from_spec
    from .probe_file import probe_to_jsonl

    for name in ("templates", "samples", "max_new_tokens", "batch_tokens", "chunk_facts"):
        if getattr(args, name) != "auto" and getattr(args, name) < 1:
            raise SftnbError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.temperature > 0:
        raise SftnbError("--temperature must be positive")
    facts = facts_from_spec(args.facts)
    if args.limit is not None:
        facts = facts[:args.limit]
    if not facts:
        raise SftnbError(f"{args.facts}: no facts to probe")
    out = Path(args.out)
    if out.is_dir():
        raise SftnbError(f"--out {out} is a folder; give a .jsonl file path")
    if not out.parent.exists():
        raise SftnbError(f"--out folder does not exist: {out.parent}")
    relations = all_relations()
    missing = sorted({f.relation for f in facts} - set(relations))
    if missing:
        raise SftnbError(f"{args.facts}: unknown relation(s) {', '.join(missing)}")
    if args.lead_ins < 0 or args.lead_in_depth < 1 or args.calibration_facts < 10:
        raise SftnbError("--lead-ins must be >= 0, --lead-in-depth >= 1, --calibration-facts >= 10")
    cfg = ProbeConfig(method=args.method, n_templates=args.templates, n_samples=args.samples,
                      temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed,
                      chunk_facts=args.chunk_facts, lead_ins=args.lead_ins, lead_in_depth=args.lead_in_depth,
                      calibration_facts=args.calibration_facts)
    done = probe_to_jsonl(args.model, facts, relations, cfg, out, args.device, args.dtype, args.batch_tokens)
    if done.resumed_chunks:
        print(f"resuming: {done.resumed_chunks} finished chunk(s) of an earlier run in {done.work}")
    if done.calibration is not None:
        print(f"calibrated on {done.calibration_facts} sampled facts: alpha per relation "
              + ", ".join(f"{r} {a:.3g}" for r, a in done.calibration.alpha.items()))
    counts = done.table["category"].value_counts().reindex(CATEGORIES, fill_value=0).tolist()
    print(f"probed {len(done.table)} facts ({cfg.method}, {cfg.n_templates} templates x {cfg.n_samples} samples) "
          f"-> {out}; facts per category 0-4: {counts}")
    return 0


def _parse_exposures(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SftnbError(f"--exposures {text!r}: exposure counts are non-negative integers, e.g. 0,1,2,4,8,16") \
            from None
    if not values or any(v < 0 for v in values):
        raise SftnbError(f"--exposures {text!r}: exposure counts are non-negative integers, e.g. 0,1,2,4,8,16")
    return sorted(set(values))


def _cmd_inject(args) -> int:
    """Continued pre-training of a model on declarative statements of a seeded subset of facts, each seen its
    exposure count of times (``inject.inject_into_folder``): the testbed model, as a Hugging Face folder at
    ``--out``. Resumable like ``sftnb probe``: the work is a store unit in a hidden folder beside ``--out``."""
    from pathlib import Path

    from .data.sources import facts_from_spec
    from .inject import inject_into_folder
    from .lm.models import model_folder

    exposures = _parse_exposures(args.exposures)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SftnbError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise SftnbError(f"--out folder does not exist: {out.parent}")
    model_folder(args.model)                                    # a bad --model is one line, before any work
    facts = facts_from_spec(args.facts)
    ic = InjectConfig(exposures=exposures, train_facts_per_count=args.train_per_count,
                      test_facts_per_count=args.test_per_count, learning_rate=args.lr, batch_size=args.batch_size,
                      seed=args.seed)
    res = inject_into_folder(args.model, facts, ic, out, args.device, args.dtype,
                             source=args.facts)
    print(f"injected {res['facts']} facts ({res['statements']} statements, exposures {exposures}) into "
          f"{args.model} -> {out}")
    return 0


def _cmd_restore(args) -> int:
    """The streaming path over checkpoints on disk (``sftnb.restoration.checkpoints``)."""
    import time

    from .lm.models import EMBEDDED, model_folder
    from .restoration.checkpoints import restore_checkpoints
    from .restoration.strategies import STRATEGIES

    t0 = time.perf_counter()
    # the embedded default by name: its cached safetensors folder (converted from the GGUF on first use)
    base, tuned = (model_folder(x) if x == EMBEDDED else x for x in (args.base, args.tuned))
    written = restore_checkpoints(base=base, tuned=tuned, k=args.k, out=args.out, strategy=args.strategy,
                                  region=args.region, seed=args.seed, shard_size=args.shard_size,
                                  overwrite=args.overwrite)
    for r in written:
        cut = f"; threshold r={r.threshold:.6g}" if STRATEGIES[args.strategy].ranks_by_change else ""
        print(f"k={r.k_percent:g}%: restored {r.count:,} of {r.total:,} {args.region} parameters "
              f"({args.strategy}{cut}) -> {r.folder}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_report(args) -> int:
    """report.md again from a run's CSVs (``figures/<run>`` or a folder), and optionally the README's section."""
    from pathlib import Path

    from .config import project_root
    from .report import paper_verdicts, refresh_report, update_readme
    from .sections import SECTIONS

    if args.paper:
        from .report.paper_rows import ASSUMPTIONS

        print(f"the paper's own numbers under every rule ({ASSUMPTIONS}):")
        for _, r in paper_verdicts(SECTIONS).iterrows():
            print(f"{r['claim']}: {r['verdict']} -- {r['finding']}")
        return 0
    if not args.run:
        raise SftnbError("give a run folder (figures/<run>) or --paper")
    folder = Path(args.run)
    if not folder.is_dir():
        folder = project_root() / "figures" / args.run
    if not folder.is_dir():
        raise SftnbError(f"{args.run}: no such run folder (give figures/<run> or a run name)")
    if not any(folder.glob("*.csv")):
        raise SftnbError(f"{folder}: no CSV tables (run the notebooks first: sftnb run params/<run>.yaml)")
    print(f"wrote {refresh_report(folder, SECTIONS)}")          # as `sftnb run` writes it after its notebooks
    if args.readme:
        update_readme(args.readme, folder)
        print(f"updated the verdicts in {Path(args.readme)}")
    return 0


def _cmd_run(args) -> int:
    from .runner import run_cli
    return run_cli(args)


def _cmd_plan(args) -> int:
    from .config import load_config
    from .timeplan import plan_text

    text, fits = plan_text(load_config(args.params), args.gpus, args.gpu_memory, args.host_memory)
    print(text)
    return 0 if fits else 1


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
    pr.add_argument("--templates", type=int, default=_default(ProbeConfig, "n_templates"),
                    help="mapping templates per fact (N_map)")
    pr.add_argument("--samples", type=int, default=_default(ProbeConfig, "n_samples"),
                    help="samples per template (N_sample)")
    pr.add_argument("--temperature", type=float, default=_default(ProbeConfig, "temperature"))
    pr.add_argument("--max-new-tokens", type=int, default=_default(ProbeConfig, "max_new_tokens"))
    pr.add_argument("--method", choices=_choices(ProbeConfig, "method"), default=_default(ProbeConfig, "method"))
    pr.add_argument("--lead-ins", type=int, default=_default(ProbeConfig, "lead_ins"),
                    help="likelihood/calibrated: lead-in phrases after which the answer is scored")
    pr.add_argument("--lead-in-depth", type=int, default=_default(ProbeConfig, "lead_in_depth"),
                    help="likelihood/calibrated: tokens per lead-in phrase at most (1: single tokens)")
    pr.add_argument("--calibration-facts", type=int, default=_default(ProbeConfig, "calibration_facts"),
                    help="calibrated: facts (of --facts, spread over relations) also probed by sampling")
    pr.add_argument("--limit", type=int, default=None, help="probe only the first N facts")
    pr.add_argument("--seed", type=int, default=_default(ProbeConfig, "seed"))
    pr.add_argument("--device", default=_default(RunOptions, "device"))
    pr.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                    help="auto: bf16 on GPU, fp32 on CPU; fastest: also bf16 on a CPU with native bf16 (AMX ...)")
    pr.add_argument("--batch-tokens", type=lambda v: v if v == "auto" else int(v),
                    default=_default(RunOptions, "batch_tokens"),
                    help="token slots per generation batch; auto (default): what the free GPU memory holds, "
                         "16384 on a CPU")
    pr.add_argument("--chunk-facts", type=int, default=_default(ProbeConfig, "chunk_facts"),
                    help="facts per saved chunk: an interrupted probe resumes at the first unfinished chunk")
    pr.set_defaults(func=_cmd_probe)

    rs = sub.add_parser("restore", help="restore the most-changed parameters of a fine-tuned model (§5)")
    rs.add_argument("--base", required=True, help="pre-trained model folder (safetensors), or smollm2-135m")
    rs.add_argument("--tuned", required=True, help="fine-tuned model folder (safetensors)")
    rs.add_argument("--k", required=True, help="percent(s) of the region to restore, e.g. 20 or 1,5,20")
    rs.add_argument("--out", required=True, help="output folder (one sub-folder per k when several)")
    rs.add_argument("--strategy", choices=list(STRATEGIES), default=DEFAULT_STRATEGY)
    rs.add_argument("--region", choices=REGIONS, default=_default(RestoreConfig, "region"))
    rs.add_argument("--seed", type=int, default=0, help="for --strategy random")
    rs.add_argument("--shard-size", default="2GB", help="output shard budget, e.g. 500MB, 2GB")
    rs.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    rs.set_defaults(func=_cmd_restore)

    ij = sub.add_parser("inject", help="the testbed: inject facts at graded exposure by continued pre-training")
    ij.add_argument("--model", required=True, help="base model: smollm2-135m, tiny-random or a local HF folder")
    ij.add_argument("--facts", required=True, help="JSONL facts file, builtin or entityquestions:PATH")
    ij.add_argument("--exposures", default=",".join(map(str, _default(InjectConfig, "exposures"))),
                    help="exposure counts, e.g. 0,1,2,4,8,16 (statements per fact)")
    ij.add_argument("--out", required=True, help="output Hugging Face folder")
    ij.add_argument("--train-per-count", type=int, default=_default(InjectConfig, "train_facts_per_count"),
                    help="train-split facts per exposure count")
    ij.add_argument("--test-per-count", type=int, default=_default(InjectConfig, "test_facts_per_count"),
                    help="test-split facts per exposure count")
    ij.add_argument("--lr", type=float, default=_default(InjectConfig, "learning_rate"))
    ij.add_argument("--batch-size", type=int, default=_default(InjectConfig, "batch_size"))
    ij.add_argument("--seed", type=int, default=_default(InjectConfig, "seed"))
    ij.add_argument("--device", default=_default(RunOptions, "device"))
    ij.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES)
    ij.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ij.set_defaults(func=_cmd_inject)

    rp = sub.add_parser("report", help="paper vs this run: report.md from a run's CSVs")
    rp.add_argument("run", nargs="?", help="figures/<run> or a run name")
    rp.add_argument("--readme", help="also rewrite the verdict table between the report markers of this README (and the run's scale tables, where it has their markers)")
    rp.add_argument("--paper", action="store_true",
                    help="apply every rule to the paper's own numbers and print one verdict per claim")
    rp.set_defaults(func=_cmd_report)

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
        from .infra.launch import world
        rank, size, _ = world()
        # one of several processes (torchrun, accelerate, srun): say which one, since each may see other files
        where = f"[rank {rank} of {size} on {socket.gethostname()}] " if size > 1 else ""
        print(f"sftnb: error: {where}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sftnb: interrupted (finished units are kept; rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
