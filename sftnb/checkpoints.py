"""Checkpoints on disk, tensor by tensor: memory-mapped safetensors in, atomically written shards out.

``restore_checkpoints`` is ``sftnb restore``: pass 1 streams both checkpoints to find every k's threshold
(``sftnb.restore.radix_thresholds``), pass 2 writes each restored model. Only one tensor pair is in memory at a
time, so a pair larger than RAM works; the input folders are never written to.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import SftnbError
from .restore import FLIP, _counts, _masks, _Scorer, distribution, radix_thresholds, region_names
from .store import atomic_write_json, atomic_write_text

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    m = _SIZE.match(str(text))
    if not m:
        raise SftnbError(f"--shard-size {text!r}: expected a size like 500MB or 2GB")
    unit = (m.group(2) or "B").upper()
    return int(float(m.group(1)) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit])


class Checkpoint:
    """A Hugging Face folder of safetensors shards, read lazily (one tensor at a time, memory-mapped)."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise SftnbError(f"model folder not found: {self.folder}")
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise SftnbError(f"{self.folder}: no *.safetensors files (not a safetensors checkpoint)")
        self._handles = {}
        self.where: dict[str, Path] = {}
        self.meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for f in files:
            try:
                h = safe_open(str(f), framework="pt")
            except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
                raise SftnbError(f"{f}: not a readable safetensors file ({e})") from None
            self._handles[f] = h
            for name in h.keys():
                sl = h.get_slice(name)
                self.where[name] = f
                self.meta[name] = (tuple(sl.get_shape()), sl.get_dtype())

    @property
    def names(self) -> list[str]:
        return list(self.where)

    def get(self, name: str) -> torch.Tensor:
        return self._handles[self.where[name]].get_tensor(name)

    def nbytes(self, name: str) -> int:
        shape, dtype = self.meta[name]
        n = 1
        for d in shape:
            n *= d
        return n * {"F64": 8, "F32": 4, "I64": 8, "I32": 4}.get(dtype, 2 if dtype in ("BF16", "F16") else 1)


def check_pair(base: Checkpoint, tuned: Checkpoint) -> None:
    """Same tensors, shapes and dtypes, or one line saying what differs."""
    b, t = set(base.names), set(tuned.names)
    if b != t:
        diff = sorted(b ^ t)
        raise SftnbError(f"architectures differ: {len(diff)} tensor(s) in only one model, e.g. {diff[0]}")
    for n in tuned.names:
        if base.meta[n][0] != tuned.meta[n][0]:
            raise SftnbError(f"{n}: shape {tuned.meta[n][0]} (tuned) vs {base.meta[n][0]} (base)")
        if base.meta[n][1] != tuned.meta[n][1]:
            raise SftnbError(f"{n}: dtype {tuned.meta[n][1]} (tuned) vs {base.meta[n][1]} (base)")


class ShardWriter:
    """Writes tensors into numbered shards of at most ``budget`` bytes plus the index, in a temp folder."""

    def __init__(self, folder: Path, budget: int):
        self.folder, self.budget = folder, budget
        self.pending: dict[str, torch.Tensor] = {}
        self.size = 0
        self.shards: list[dict[str, torch.Tensor] | str] = []
        self.weight_map: dict[str, str] = {}
        self.total = 0
        self._n = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.size + nbytes > self.budget:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        self._n += 1
        fname = f"part-{self._n:05d}.safetensors"
        save_file(self.pending, str(self.folder / fname), metadata={"format": "pt"})
        for n in self.pending:
            self.weight_map[n] = fname
        self.pending, self.size = {}, 0

    def close(self) -> None:
        if self.pending:
            self._flush()
        n = self._n
        names = {f"part-{i:05d}.safetensors": (f"model-{i:05d}-of-{n:05d}.safetensors" if n > 1
                                               else "model.safetensors") for i in range(1, n + 1)}
        for old, new in names.items():
            os.replace(self.folder / old, self.folder / new)
        if n > 1:
            atomic_write_json(self.folder / "model.safetensors.index.json",
                              {"metadata": {"total_size": self.total},
                               "weight_map": {k: names[v] for k, v in self.weight_map.items()}})


def _parse_ks(text: str) -> list[float]:
    try:
        ks = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise SftnbError(f"--k {text!r}: expected percents like 20 or 1,5,20") from None
    if not ks:
        raise SftnbError("--k: no value given")
    _counts(1, ks)                                   # (0, 100] check, one line
    return list(dict.fromkeys(ks))


def restore_checkpoints(args) -> int:
    ks = _parse_ks(args.k)
    budget = parse_size(args.shard_size)
    out = Path(args.out).expanduser()
    base, tuned = Checkpoint(args.base), Checkpoint(args.tuned)
    for folder in (base.folder, tuned.folder):
        if out.resolve() == folder.resolve() or folder.resolve() in out.resolve().parents:
            raise SftnbError(f"--out {out} lies inside an input folder ({folder}); choose another place")
    if out.exists() and not args.overwrite:
        raise SftnbError(f"--out {out} exists; pass --overwrite to replace it")
    check_pair(base, tuned)
    names = region_names(tuned.names, args.region)
    if not names:
        raise SftnbError(f"region {args.region!r} holds no tensor of {tuned.folder}")
    scorer = _Scorer(names, tuned.get, base.get, args.strategy, args.seed)
    total = sum(_numel(tuned.meta[n][0]) for n in names)
    t0 = time.perf_counter()
    ths = radix_thresholds(lambda: tqdm((scorer.keys(i) for i in range(len(names))), total=len(names),
                                        desc="thresholds", leave=False), _counts(total, ks))
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        summary = []
        for k, th in zip(ks, ths):
            folder = tmp if len(ks) == 1 else tmp / f"k{k:g}"
            folder.mkdir(exist_ok=True)
            per = _write_restored(base, tuned, names, scorer, th, folder, budget, f"k={k:g}%")
            _copy_side_files(tuned.folder, folder)
            from .restore import Selection
            sel = Selection(k, args.strategy, th.count, total,
                            th.value(args.strategy == "bottom") if args.strategy != "random" else float("nan"), per)
            per_layer, per_module = distribution(sel)
            stats = sel.to_dict() | {"region": args.region, "base": str(base.folder), "tuned": str(tuned.folder),
                                     "seed": args.seed, "per_layer": per_layer.to_dict(orient="list"),
                                     "per_module": per_module.to_dict(orient="list")}
            atomic_write_json(folder / "restore_stats.json", stats)
            rows = "tensor,restored,numel\n" + "".join(f"{n},{per.get(n, 0)},{_numel(tuned.meta[n][0])}\n"
                                                      for n in names)
            atomic_write_text(folder / "restore_stats.csv", rows)
            summary.append((k, th.count, sel.threshold, folder.name if len(ks) > 1 else "."))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for k, count, thr, sub in summary:
        print(f"k={k:g}%: restored {count:,} of {total:,} {args.region} parameters ({args.strategy}; "
              f"threshold r={thr:.6g}) -> {out / sub if sub != '.' else out}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _write_restored(base, tuned, names, scorer, th, folder, budget, desc) -> dict[str, int]:
    writer = ShardWriter(folder, budget)
    masks = _masks(scorer, th)             # lazily, in region order (= checkpoint order filtered)
    region = set(names)
    per = {}
    for name in tqdm(tuned.names, desc=desc, leave=False):
        t = tuned.get(name)
        if name in region:
            i, mask = next(masks)
            assert names[i] == name
            mask = mask.view(t.shape)
            per[name] = int(mask.sum())
            if per[name]:
                # clone: get_tensor may hand out a view of a private memory map that later passes re-read
                t = t.clone()
                t[mask] = base.get(name)[mask]
        writer.add(name, t)
    writer.close()
    return per


def _copy_side_files(src: Path, dst: Path) -> None:
    """config, generation config, tokenizer files: everything but the weights."""
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy2(f, dst / f.name)


__all__ = ["Checkpoint", "check_pair", "ShardWriter", "restore_checkpoints", "parse_size", "FLIP"]
