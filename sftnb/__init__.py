"""sftnb: the effects of supervised fine-tuning on model knowledge (Ye et al., EMNLP 2025), as a notebook-first
research package. Data flows one way: data -> mastery probe -> SFT grid -> token / parameter analyses -> reports.
"""
import logging
import warnings

__version__ = "0.1.0"

# bitsandbytes (imported by peft) warns on every CPU with AVX512-BF16 that an optional 4-bit CPU kernel package is
# missing. sftnb uses no 4-bit CPU kernel, and the warning would make notebook outputs differ between CPU kinds.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# In a Jupyter kernel without ipywidgets, tqdm.auto falls back to text bars and says so once per kernel: harmless,
# and it is stderr that nbval would compare.
warnings.filterwarnings("ignore", message="IProgress not found")
# peft's LoRA wrapper calls a transformers 5 property that transformers has deprecated; nothing for a user to do.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def __getattr__(name):          # keep `import sftnb` light: torch loads only when an analysis is used
    if name == "renormalized_kl":
        from .token_kl import renormalized_kl
        return renormalized_kl
    raise AttributeError(name)


__all__ = ["renormalized_kl"]
