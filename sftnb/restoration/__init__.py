"""Parameter restoration (paper §5): which tensors a region holds, from the model's own module tree
(``regions``), the strategies (``strategies``: one registry the params schema reads), the exact global top-k of
relative change |s - p| / |p| (``selection``), restore / undo in place (``restore``) and the same streamed over
safetensors checkpoints with bounded memory (``checkpoints``)."""
