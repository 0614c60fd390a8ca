"""Checkpoints on disk, tensor by tensor: safetensors folders in, atomically published shards out.

``restore_checkpoints`` is ``sftnb restore``. Pass 1 and 2 stream both checkpoints to find every k's threshold
(``sftnb.restoration.selection.radix_pass1`` / ``radix_thresholds``); pass 3 reads each tensor once more and writes it into
every k's output at the same time. At most one chunk (``sftnb.restoration.selection.CHUNK`` elements) of a tensor pair is in
memory, so a pair larger than RAM works.

Reading: the safetensors header is parsed here and tensors are read with positioned reads (``readinto``) into
fresh tensors. We deliberately do not keep ``safe_open`` memory maps open: every page of a mapped file that
was touched counts in the process's resident set, so a streamed 8 GB pair would show 8 GB of RSS.
Writing: the shard layout (names, dtypes, shapes, offsets) is known before any data is read, so each shard's
header is written first and tensor bytes are appended as they are produced: no shard is held in memory.
Everything goes to a hidden temporary folder next to ``--out`` that is renamed into place at the end
(``sftnb.infra.atomic.atomic_folder``); the input folders are never written to.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from ..infra.atomic import atomic_folder, atomic_write_json, atomic_write_text
from ..infra.errors import SftnbError
from .regions import checkpoint_regions, distribution
from .selection import (CHUNK, Selection, TieBreaker, Workspace, chunk_keys, chunks, percent_counts, radix_pass1,
                     radix_thresholds)
from .strategies import get_strategy

INDEX = "model.safetensors.index.json"
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """"500MB", "2GB", "1.5GiB", "4096" -> bytes."""
    m = _SIZE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise SftnbError(f"--shard-size {text!r}: expected a size like 500MB or 2GB")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
            "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}[unit]
    return int(float(m.group(1)) * mult)


def parse_ks(text: str | Sequence[float]) -> list[float]:
    """"20" or "1,5,20" (or a list) -> distinct percents in (0, 100], in the given order."""
    if isinstance(text, str):
        try:
            ks = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise SftnbError(f"--k {text!r}: expected percents like 20 or 1,5,20") from None
    else:
        ks = [float(x) for x in text]
    if not ks:
        raise SftnbError("--k: no percent given")
    percent_counts(1, ks)                           # (0, 100] check, one line
    return list(dict.fromkeys(ks))


# ============================================================================================= reading
@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str                  # safetensors name: "BF16", "F32", ...
    shape: tuple[int, ...]
    begin: int                  # absolute byte offsets in the file
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def itemsize(self) -> int:
        return torch.empty(0, dtype=DTYPES[self.dtype]).element_size()


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, or one line saying why it is not one."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if not 2 <= n <= min(size - 8, 100_000_000):
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        out = {}
        for name, d in header.items():
            if name == "__metadata__":
                continue
            b, e = d["data_offsets"]
            if d["dtype"] not in DTYPES:
                raise SftnbError(f"{path}: tensor {name} has unsupported dtype {d['dtype']}")
            info = TensorInfo(path, d["dtype"], tuple(int(x) for x in d["shape"]), 8 + n + b, 8 + n + e)
            if info.end > size or info.end - info.begin != info.numel * info.itemsize:
                raise ValueError(f"tensor {name} does not fit the file")
            out[name] = info
        return out
    except SftnbError:
        raise
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise SftnbError(f"{path}: not a readable safetensors file ({e})") from None


class Checkpoint:
    """A Hugging Face folder of safetensors shards (index json or not), read tensor by tensor on demand."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise SftnbError(f"model folder not found: {self.folder}")
        index = self.folder / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted({self.folder / f for f in weight_map.values()})
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise SftnbError(f"{index}: not a safetensors index ({e})") from None
            for f in files:
                if not f.is_file():
                    raise SftnbError(f"{index} names {f.name}, which is missing")
        else:
            files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise SftnbError(f"{self.folder}: no *.safetensors files (not a safetensors checkpoint)")
        self.meta: dict[str, TensorInfo] = {}
        for f in files:
            for name, info in read_header(f).items():
                if name in self.meta:
                    raise SftnbError(f"{self.folder}: tensor {name} is in two files")
                self.meta[name] = info
        self._fds: dict[Path, object] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self.meta)

    def numel(self, name: str) -> int:
        return self.meta[name].numel

    def nbytes(self, name: str) -> int:
        info = self.meta[name]
        return info.end - info.begin

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Elements [start, stop) of a tensor, flattened, as a new (writable) tensor; the whole tensor with its
        shape when no range is given."""
        info = self.meta[name]
        whole = start is None and stop is None
        start = start or 0
        stop = info.numel if stop is None else stop
        t = torch.empty(stop - start, dtype=DTYPES[info.dtype])
        buf = memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(bytearray())
        f = self._fds.get(info.file)
        if f is None:
            f = self._fds[info.file] = open(info.file, "rb", buffering=0)
        f.seek(info.begin + start * info.itemsize)
        got = 0
        while got < len(buf):
            n = f.readinto(buf[got:])
            if not n:
                raise SftnbError(f"{info.file}: truncated while reading {name}")
            got += n
        return t.view(info.shape) if whole else t

    def close(self) -> None:
        for f in self._fds.values():
            f.close()
        self._fds.clear()


def check_pair(base: Checkpoint, tuned: Checkpoint) -> None:
    """Same tensors, shapes and dtypes, or one line saying what differs."""
    b, t = set(base.meta), set(tuned.meta)
    if b != t:
        only_t, only_b = sorted(t - b), sorted(b - t)
        eg = f"{only_t[0]} only in --tuned" if only_t else f"{only_b[0]} only in --base"
        raise SftnbError(f"architectures differ: {len(only_t) + len(only_b)} tensor(s) in one model only, e.g. {eg}")
    for n in tuned.names:
        tb, tt = base.meta[n], tuned.meta[n]
        if tb.shape != tt.shape:
            raise SftnbError(f"{n}: shape {tt.shape} (tuned) vs {tb.shape} (base)")
        if tb.dtype != tt.dtype:
            raise SftnbError(f"{n}: dtype {tt.dtype} (tuned) vs {tb.dtype} (base)")


# ============================================================================================= writing
class ShardWriter:
    """Writes a known list of tensors, in order, into shards of at most ``budget`` bytes (a tensor larger than
    the budget gets a shard of its own), streaming: headers first, then bytes as they come."""

    def __init__(self, folder: Path, layout: Sequence[tuple[str, str, tuple[int, ...], int]], budget: int):
        self.folder = Path(folder)
        shards: list[list[tuple[str, str, tuple[int, ...], int]]] = [[]]
        size = 0
        for item in layout:
            if shards[-1] and size + item[3] > budget:
                shards.append([])
                size = 0
            shards[-1].append(item)
            size += item[3]
        n = len(shards)
        self.files = ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors"
                                                            for i in range(1, n + 1)]
        self.shards = shards
        self.total = sum(item[3] for item in layout)
        self._shard = -1
        self._queue: list[tuple[str, int]] = []     # (name, bytes still to write) in the open shard
        self._f = None

    def _open_next(self) -> None:
        if self._f:
            self._f.close()
        self._shard += 1
        items = self.shards[self._shard]
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, dtype, shape, nbytes in items:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
            off += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((-len(raw)) % 8)                  # keep the data 8-byte aligned, as safetensors does
        self._f = open(self.folder / self.files[self._shard], "wb")
        self._f.write(struct.pack("<Q", len(raw)) + raw)
        self._queue = [(name, nbytes) for name, _, _, nbytes in items]

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Append the next bytes of tensor ``name`` (chunks of one tensor in flat order)."""
        if not self._queue:
            self._open_next()
        expected, left = self._queue[0]
        if name != expected:
            raise RuntimeError(f"writing {name} but {expected} comes next")   # a bug, not a user error
        data = chunk.contiguous().reshape(-1).view(torch.uint8)
        if data.numel() > left:
            raise RuntimeError(f"{name}: more bytes than its shape holds")
        if data.numel():
            self._f.write(memoryview(data.numpy()))
        left -= data.numel()
        if left:
            self._queue[0] = (name, left)
        else:
            self._queue.pop(0)

    def close(self) -> None:
        while self._shard < len(self.shards) - 1:      # shards whose tensors are all empty
            self._open_next()
        if self._queue:
            raise RuntimeError(f"shard closed before {self._queue[0][0]} was complete")
        if self._f:
            self._f.close()
            self._f = None
        if len(self.files) > 1:
            weight_map = {name: f for f, items in zip(self.files, self.shards) for name, *_ in items}
            atomic_write_json(self.folder / INDEX, {"metadata": {"total_size": self.total}, "weight_map": weight_map})


def copy_side_files(src: Path, dst: Path) -> None:
    """config, generation config, tokenizer files: everything but weights and earlier restoration stats."""
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and f.name != INDEX \
                and not f.name.startswith("restore_stats"):
            shutil.copy2(f, dst / f.name)


# ============================================================================================= sftnb restore
def _check_out(out: Path, inputs: Iterable[Path], overwrite: bool) -> None:
    o = out.resolve()
    for folder in inputs:
        f = folder.resolve()
        if o == f or f in o.parents:
            raise SftnbError(f"--out {out} lies inside the input folder {folder}; choose another place")
        if o in f.parents:
            raise SftnbError(f"--out {out} contains the input folder {folder}; choose another place")
    if out.exists() and not overwrite:
        raise SftnbError(f"--out {out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise SftnbError(f"--out {out} exists and is not a folder")


@dataclass(frozen=True)
class RestoredK:
    """What ``restore_checkpoints`` wrote for one k."""
    k_percent: float
    count: int                  # elements restored
    total: int                  # elements in the region
    threshold: float            # the relative change at the cut (NaN for "random")
    folder: Path


def restore_checkpoints(base: str | Path, tuned: str | Path, k: str | Sequence[float], out: str | Path,
                        strategy: str = "top", region: str = "transformer", seed: int = 0,
                        shard_size: str = "2GB", overwrite: bool = False, progress: bool = True) -> list[RestoredK]:
    """Write the restored model(s) of a checkpoint pair (one Hugging Face folder per k under ``out``, or ``out``
    itself for a single k); see the module docstring."""
    ks = parse_ks(k)
    get_strategy(strategy)
    budget = parse_size(shard_size)
    out = Path(out).expanduser()
    base_ck, tuned_ck = Checkpoint(base), Checkpoint(tuned)
    _check_out(out, (base_ck.folder, tuned_ck.folder), overwrite)
    check_pair(base_ck, tuned_ck)
    regions = checkpoint_regions(tuned_ck.folder)      # the module tree its config.json describes
    names = regions.require(tuned_ck.meta, region, str(tuned_ck.folder))
    total = sum(tuned_ck.numel(n) for n in names)
    counts = percent_counts(total, ks)
    ws = Workspace()

    def pieces(desc):
        for name in tqdm(names, desc=desc, leave=False, disable=not progress):
            for start, stop in chunks(tuned_ck.numel(name)):
                yield name, start, tuned_ck.read(name, start, stop), base_ck.read(name, start, stop)

    def key_stream(desc):
        return lambda: (chunk_keys(strategy, seed, n, s, t, b, ws)[:2] for n, s, t, b in pieces(desc))

    pass1 = radix_pass1(key_stream("pass 1/3 (histogram)"))
    ths = radix_thresholds(key_stream("pass 2/3 (thresholds)"), counts, pass1)

    try:
        with atomic_folder(out, if_exists="replace") as tmp:
            folders = [tmp if len(ks) == 1 else tmp / _k_name(kp) for kp in ks]
            layout = [(n, tuned_ck.meta[n].dtype, tuned_ck.meta[n].shape, tuned_ck.nbytes(n))
                      for n in tuned_ck.names]
            writers = []
            for folder in folders:
                folder.mkdir(exist_ok=True)
                writers.append(ShardWriter(folder, layout, budget))
            per = _write_all(base_ck, tuned_ck, set(names), ths, writers, strategy, seed, ws, progress)
            summary = []
            for kp, th, folder, counts_k, w in zip(ks, ths, folders, per, writers):
                w.close()
                copy_side_files(tuned_ck.folder, folder)
                sel = Selection(kp, strategy, th.count, total, th.value(strategy), {n: counts_k[n] for n in names})
                per_layer, per_module = distribution(sel, regions)
                stats = sel.to_dict() | {"region": region, "seed": seed, "base": str(base_ck.folder),
                                         "tuned": str(tuned_ck.folder), "tie_order": "sorted tensor name, flat index",
                                         "per_layer": per_layer.to_dict(orient="list"),
                                         "per_module": per_module.to_dict(orient="list")}
                atomic_write_json(folder / "restore_stats.json", stats)
                atomic_write_text(folder / "restore_stats.csv", "tensor,numel,restored\n" + "".join(
                    f"{n},{tuned_ck.numel(n)},{counts_k[n]}\n" for n in names))
                summary.append(RestoredK(kp, th.count, total, sel.threshold, out / folder.relative_to(tmp)))
            if len(ks) > 1:
                atomic_write_text(tmp / "restore_stats.csv", "k_percent,count,total,threshold,folder\n" + "".join(
                    f"{r.k_percent:g},{r.count},{total},{r.threshold!r},{r.folder.name}\n" for r in summary))
    finally:
        base_ck.close()
        tuned_ck.close()
    return summary


def _k_name(k: float) -> str:
    return f"k{k:g}".replace(".", "p")            # k20, k0p5


def _write_all(base_ck, tuned_ck, region: set[str], ths, writers, strategy, seed, ws, progress):
    """Pass 3: every tensor once, into every k's output. Region chunks come in canonical (sorted) order, the
    order the tie-breakers expect, because the layout itself is sorted."""
    tie = [TieBreaker(th) for th in ths]
    per = [dict.fromkeys(region, 0) for _ in ths]
    for name in tqdm(tuned_ck.names, desc="pass 3/3 (write)", leave=False, disable=not progress):
        for start, stop in chunks(tuned_ck.numel(name)):
            t = tuned_ck.read(name, start, stop)
            if name not in region:
                for w in writers:
                    w.write(name, t)
                continue
            b = base_ck.read(name, start, stop)
            keys, _ = chunk_keys(strategy, seed, name, start, t, b, ws)
            for j, w in enumerate(writers):
                mask = tie[j].mask(keys)
                per[j][name] += int(torch.count_nonzero(mask))
                w.write(name, torch.where(mask, b, t))
    return per


__all__ = ["Checkpoint", "TensorInfo", "ShardWriter", "check_pair", "copy_side_files", "parse_ks", "parse_size",
           "read_header", "restore_checkpoints", "RestoredK", "CHUNK"]
