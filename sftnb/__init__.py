"""sftnb: the effects of supervised fine-tuning on model knowledge (Ye et al., EMNLP 2025), as a notebook-first
research package. Data flows one way: data -> mastery probe -> SFT grid -> token / parameter analyses -> reports.
"""
__version__ = "0.1.0"


def __getattr__(name):          # keep `import sftnb` light: torch loads only when an analysis is used
    if name == "renormalized_kl":
        from .token_kl import renormalized_kl
        return renormalized_kl
    raise AttributeError(name)


__all__ = ["renormalized_kl"]
