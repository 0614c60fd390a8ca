"""The KV caches of sftnb's decoder (``sftnb.lm.generation``): a prefill's cache repeated for its samples, either in
preallocated layers written in place (no copy of the whole cache per step) or in a transformers ``StaticCache``
whose decode step can be captured as CUDA graphs."""
from __future__ import annotations

import torch
from torch._dynamo import config as dynamo_config     # recompile_limit: no public form yet

from .batching import device_of

# the compiled decode step (static KV cache path), one per model class: compiled from the class's forward, with
# the model as its first argument, so this cache holds no model. A per-model entry built from ``model.forward``
# (a bound method) held its model, and every fine-tuned model stayed on the GPU for the rest of the process.
_COMPILED: dict[type, object] = {}
# decode shapes a process may compile: a static call has one or two (batch rows a power of two, the prompt width
# rounded up to 8), so a run's calls stay well inside this; dynamo's default (8) is about one model's probe
RECOMPILE_LIMIT = 32


def plain_layers(cache) -> bool:
    """Only plain full-attention cache layers are shared this way (sliding windows keep their own logic)."""
    from transformers.cache_utils import DynamicLayer
    return all(type(layer) is DynamicLayer for layer in cache.layers)


# ------------------------------------------------------------------------------------ KV cache layer
def cache_layer_classes():
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A full-attention cache layer with a preallocated buffer: new keys/values are written in place and the
        layer returns views of the filled part, so a decode step does not copy the whole cache."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, repeats: int, capacity: int):
            super().__init__()
            b, h, length, _ = keys.shape
            capacity = max(capacity, length)
            self.device = keys.device
            self.buf_k = keys.new_empty((b * repeats, h, capacity, keys.shape[-1]))
            self.buf_v = values.new_empty((b * repeats, values.shape[1], capacity, values.shape[-1]))
            self.buf_k.view(b, repeats, *self.buf_k.shape[1:])[:, :, :, :length] = keys[:, None]
            self.buf_v.view(b, repeats, *self.buf_v.shape[1:])[:, :, :, :length] = values[:, None]
            self.length = length
            self.is_initialized = True
            self._views()

        def _views(self):
            self.keys = self.buf_k[:, :, :self.length]
            self.values = self.buf_v[:, :, :self.length]

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.length + key_states.shape[-2]
            if end > self.buf_k.shape[2]:                         # out of room: grow (not expected)
                grow = max(end - self.buf_k.shape[2], 16)
                self.buf_k = torch.cat([self.buf_k, self.buf_k.new_empty((*self.buf_k.shape[:2], grow,
                                                                            self.buf_k.shape[3]))], 2)
                self.buf_v = torch.cat([self.buf_v, self.buf_v.new_empty((*self.buf_v.shape[:2], grow,
                                                                            self.buf_v.shape[3]))], 2)
            self.buf_k[:, :, self.length:end] = key_states
            self.buf_v[:, :, self.length:end] = value_states
            self.length = end
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self.buf_k = self.buf_k.index_select(0, indices)
            self.buf_v = self.buf_v.index_select(0, indices)
            self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            self.buf_k = self.buf_k.repeat_interleave(repeats, 0)
            self.buf_v = self.buf_v.repeat_interleave(repeats, 0)
            self._views()

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.batch_select_indices(beam_idx.to(self.device))

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove < 0:
                self.length = max(0, self.length + tokens_to_remove)
                self._views()

        def reset(self) -> None:
            self.length = 0
            self._views()

    return DynamicLayer, PreallocatedLayer


def expand_cache(cache, n: int, capacity: int) -> None:
    """After prefill: repeat every layer's rows n times (prompt -> its samples) and swap plain full-attention
    layers for preallocated ones with room for ``capacity`` positions."""
    DynamicLayer, PreallocatedLayer = cache_layer_classes()
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys is not None and layer.keys.dim() == 4:
            cache.layers[i] = PreallocatedLayer(layer.keys, layer.values, n, capacity)
        elif n > 1 and hasattr(layer, "batch_repeat_interleave"):
            layer.batch_repeat_interleave(n)


def static_cache(model, cache, n: int, capacity: int, held: dict | None = None):
    """After prefill: a transformers ``StaticCache`` of ``capacity`` positions holding the prefill's keys/values
    repeated n times (prompt -> its samples), and the decode-step function: on CUDA the model's forward through
    ``torch.compile(mode="reduce-overhead")`` (CUDA graphs: one replay per step instead of an eager forward's many
    kernel launches; every step has the same shapes), elsewhere the plain forward. Rows never leave a static batch:
    finished ones are masked by their recorded length, and the batch ends when all are done.

    ``held`` (one dict per ``generate`` call) keeps the cache for the call's next batch of the same shape: reset and
    refilled in place, its tensors keep their addresses, so the step's CUDA graph is replayed, where a new cache
    per batch would make torch record the graph again for every batch."""
    from transformers import StaticCache

    held = {} if held is None else held
    rows = cache.layers[0].keys.shape[0] * n
    static = held.get("cache") if held.get("shape") == (rows, capacity) else None
    if static is None:
        held.clear()                                  # the old shape's cache goes before the new one is allocated
        static = StaticCache(config=model.config, max_cache_len=capacity)
        held.update(shape=(rows, capacity), cache=static)
    else:
        static.reset()
    for dyn, layer in zip(cache.layers, static.layers):
        keys, values = dyn.keys.repeat_interleave(n, 0), dyn.values.repeat_interleave(n, 0)
        if not layer.is_initialized:
            layer.lazy_initialization(keys, values)
        layer.update(keys, values)
    step = model
    if device_of(model).type == "cuda":
        step = compiled_step(model, mode="reduce-overhead")
    return static, step


def compiled_step(model, **compile_kwargs):
    """``model``'s forward through the class's compiled forward (one ``torch.compile`` per class, shapes fixed):
    dynamo traces once per shape for every model of the class that shares its config (the grid's models are
    copies of one template), and CUDA graphs are captured per model and shape, then replayed.

    Past ``RECOMPILE_LIMIT`` shapes the step raises instead of what dynamo does by default: run the forward
    uncompiled, silently, with the static cache's costs and without its graphs. The caller (``generate``) then
    warns once and decodes dynamically."""
    cls = type(model)
    fn = _COMPILED.get(cls)
    if fn is None:
        fn = _COMPILED[cls] = torch.compile(cls.forward, dynamic=False, **compile_kwargs)
    limits = {k: v for k, v in (("recompile_limit", RECOMPILE_LIMIT), ("fail_on_recompile_limit_hit", True))
              if hasattr(dynamo_config, k)}

    def step(**inputs):
        with dynamo_config.patch(**limits):
            return fn(model, **inputs)
    return step


def select_cache(cache, keep: torch.Tensor) -> None:
    for layer in cache.layers:
        if hasattr(layer, "batch_select_indices"):
            layer.batch_select_indices(keep)
