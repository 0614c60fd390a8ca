"""Peak memory of every work unit per device, from a model's shape alone (the formulas behind ``sftnb plan``).

Bytes throughout; "GB" (tables, ``--gpu-memory``) is 2**30 bytes, as torch.cuda reports it. P parameters, L layers,
H hidden, I intermediate, A heads, Q = A*head_dim, K = kv_heads*head_dim, V vocabulary, N ranks, b_w weight bytes
(4: fp32 master weights; 2: precision bf16), b_i inference bytes, a activation bytes (4 fp32, 2 bf16-mixed / bf16).

Parameters (LlamaForCausalLM, exact): embeddings V*H; per layer q H*Q, k and v H*K, o Q*H (+Q+2K+H biases with
attention_bias), gate and up H*I, down I*H (+2I+H with mlp_bias), two norms 2H; final norm H; lm_head V*H unless tied.
Other architectures are read as LLaMA-like (an estimate). models[].quantization is not modelled (an upper bound).

SFT, strategy single (T = batch_size * seq_len tokens; a QA example is ~32):  W + O + max(G, C + Act)
  W = G = P*b_w. O: AdamW 2*P*b_w; adamw_8bit ~2.03 B/param (uint8 states + fp32 absmax per 256-element block);
  paged_adamw_8bit the same on the device, paged to host RAM by CUDA unified memory under pressure.
  C (bf16-mixed): 2 B per matmul parameter (all but input embeddings and norms): autocast caches each cast weight
    until the forward ends, autograd keeps it for the backward.
  max: gradients are set to None after each step; the backward frees a layer's activations and casts as it creates
    that layer's gradients; the first step creates O at opt.step, when G is whole.
  Act = T*(L+1)*a_layer + head (+1 layer: the backward's workspace); with gradient checkpointing
    T*(L*H*r + 2*a_layer) + head (layer inputs kept, one layer recomputed and back-propagated), r = 4 (2 in bf16).
  a_layer, bytes per token and layer (LlamaDecoderLayer with sdpa; counted with saved_tensors_hooks):
    2*(4 + r)*H   the two RMSNorms' fp32 input (or upcast) and normalised output
    + c*a*H       projection inputs: c = 2 (q/k/v share one, gate/up one); autocast casts per projection: c = 5
    + 4*Q*a + 4*A attention q, k, v (repeated to all heads: the padding mask rules out sdpa's GQA), output; lse
    + 4*I*a + 8   MLP gate, SiLU, up, product; two rsqrt
  head = B*keep*(V*(a + 8) + H*a), keep = answer_tokens + 1: only the answer columns meet the vocabulary
    (sft.answer_loss): logits, fp32 copy, log-softmax.
FSDP (N ranks): (W + G + O)/N + (root + 2*layer)*b_g + max(root, layer)*b_w + Act of ceil(batch_size/N) rows:
  root = embeddings + lm_head + final norm (gathered the whole forward), two decoder layers (current + prefetch) in
  the compute dtype b_g, and one unit's unsharded gradients before the reduce-scatter. Mixed precision must come from
  FSDP's MixedPrecisionPolicy, not autocast, whose cache would keep a bf16 copy of every gathered weight (2 B/param,
  unsharded) until the forward ends: C = 0 here.
LoRA (rank r; one device per run, also with sft.strategy fsdp: Grid.units): frozen W + C + Act
  + T*L*sum_targets(in + r)*a
  (lora_A's dropout output, lora_B's input; measured fp32 +6 %, bf16-mixed -14 %) + 16 B per adapter parameter.
Probe / eval (generation; each device holds a full replica, also under fsdp): P*b_i + max(phases): the probe's model
  is made in b_i straight from the host template (models.copy_model), the evaluated fine-tuned model is cast in place
  (Grid._evaluate). run.batch_tokens auto: the budget that fills USABLE of the device beside the weights
  (batching.resolve_budget; this formula per slot). rows = batch_tokens // (prompt + new) (a full batch); a
  no-grad forward's widest moment is f = (3I + 4H)*b_i per token (MLP activation, up and product beside the
  residual, norm and attention outputs).
  decode  = 2*L*K*b_i*batch_tokens (preallocated KV cache) + rows*f + rows*V*(2*b_i + s): two steps' logits, and
            s = 4 (+4 when V % 256 != 0: the padded copy) for the sampler's fp32 copy, 0 when greedy
  prefill = (2*L*K*b_i + f)*ceil(rows/n)*prompt + ceil(rows/n)*V*b_i   (n samples share one prefill)
  scoring = batch_tokens*f + entries*(b_i + 4): eval's first-token logits (token KL; entries = rows*V) and the
            likelihood probe (2**25 entries, generation._LOGITS_BUDGET, + 4 for the log-softmax)
Restore (live, one full fine-tuned model, also under fsdp): P*b_w + undo + region/8 (1-bit mask) + workspace
  (32 B per element of one piece: Restorer's reused buffers, <= 32 MiB) + eval's inference copy and phases.
  undo = max(k_max % of the region, one layer group)*b_w: with the reference on the host, Restorer cannot swap
  (param_analysis asks swap=False anyway) and keeps the overwritten fine-tuned values on the device until undo.
Host: the pre-trained template P*b_w (ModelRun.template) per process, any strategy (every rank probes and
  evaluates on its own); under fsdp rank 0 also gathers each trained model (P*b_w) for saving and evaluation.
Fits: every stage <= USABLE (90 %) of a device (the CUDA context and the allocator's reserve come out of the rest);
  on a CPU the device is the host: largest stage + host copy <= 90 % of RAM (/proc/meminfo MemTotal).

CPU vs GPU: the formulas count live tensors, what torch.cuda.max_memory_allocated reports on a GPU. tests/test_plan.py
checks them on the CPU against the peak RSS (VmHWM) of real runs (sft.train, generation.generate, first_token_logits)
in clean subprocesses after a warm-up, with glibc's mmap threshold fixed at 64 KiB so that freed tensors leave the
process as freed blocks leave max_memory_allocated: estimates within -10 % .. +4 %. With glibc's default (dynamic)
threshold freed activations stay in the heap and RSS read 1.2-1.8x the live peak in the same runs: a CPU run must
leave room for that (the 10 % margin does not). On a GPU, sdpa's flash / memory-efficient kernels save q, k, v, the
output and the logsumexp as the CPU kernel does; changing the attention implementation, the loss or the generation
engine means re-checking the matching term with torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..infra.errors import SftnbError

GB = 1 << 30
USABLE = 0.90                       # share of a device's memory the estimates may fill
PIECE = 1 << 20                     # sftnb.restoration.restore.PIECE: elements per piece of a live model
WORKSPACE_PER_ELEMENT = 32          # reused buffers per piece element (r, keys, mask, indices, values), rounded up
LOGITS_BUDGET = 1 << 25             # sftnb.lm.generation._LOGITS_BUDGET
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection of a decoder layer."""
        h, i, q, k = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        return {"q_proj": (h, q), "k_proj": (h, k), "v_proj": (h, k), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def attention_params(self) -> int:
        return sum(i * o + o * self.attention_bias for n, (i, o) in self.projections().items() if n[0] in "qkvo")

    def mlp_params(self) -> int:
        return sum(i * o + o * self.mlp_bias for n, (i, o) in self.projections().items() if n[0] in "gud")

    def layer_params(self) -> int:
        return self.attention_params() + self.mlp_params() + 2 * self.hidden

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        return self.layers * self.layer_params() + self.embedding_params() + self.hidden

    def matmul_params(self) -> int:
        """What autocast casts: every projection and the lm_head (the shared matrix when tied)."""
        return self.layers * (self.attention_params() + self.mlp_params()) + self.vocab * self.hidden

    def largest_tensor(self) -> int:
        return max(i * o for i, o in [*self.projections().values(), (self.vocab, self.hidden)])

    def region_params(self, region: str) -> int:
        """Parameters of a restoration region (sftnb.restoration.regions) of this LLaMA-like shape."""
        per_layer = {"mlp": self.mlp_params(), "attention": self.attention_params(),
                     "transformer": self.mlp_params() + self.attention_params()}
        if region in per_layer:
            return self.layers * per_layer[region]
        return self.embedding_params() if region == "embedding" else self.params


def model_shape(config_json: dict) -> ModelShape:
    """The shape of a LLaMA-like decoder from its config.json (a dict); a missing key is an SftnbError."""
    try:
        hidden, heads = int(config_json["hidden_size"]), int(config_json["num_attention_heads"])
        return ModelShape(
            hidden=hidden, intermediate=int(config_json["intermediate_size"]),
            layers=int(config_json["num_hidden_layers"]), heads=heads,
            kv_heads=int(config_json.get("num_key_value_heads") or heads),
            head_dim=int(config_json.get("head_dim") or hidden // heads), vocab=int(config_json["vocab_size"]),
            tied=bool(config_json.get("tie_word_embeddings", False)),   # LlamaConfig's default
            attention_bias=bool(config_json.get("attention_bias", False)),
            mlp_bias=bool(config_json.get("mlp_bias", False)))
    except KeyError as e:
        raise SftnbError(f"config.json has no {e.args[0]!r}: not a LLaMA-like decoder config") from None


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class PlanSettings:
    """What the plan is for (defaults: the paper's LLaMA-3-8B settings on one 80 GB GPU)."""
    gpus: int = 1                             # ranks (devices)
    gpu_memory_gb: float = 80.0               # per device; the RAM when on_cpu
    on_cpu: bool = False                      # the device is the host: stages and the host copy share its memory
    host_memory_gb: float | None = None       # checked when given (always on a CPU)
    strategy: str = "single"                  # sft.strategy
    optimizer: str = "adamw"                  # sft.optimizer
    precision: str = "bf16-mixed"             # resolved sft.precision: fp32 | bf16-mixed | bf16
    gradient_checkpointing: bool = False
    batch_size: int = 8                       # global batch (split over the ranks under fsdp)
    seq_len: int = 32                         # tokens per training row (a QA example is ~32)
    answer_tokens: int = 8                    # answer columns projected on the vocabulary (sft.answer_loss)
    train_bytes: int = 4                      # run.dtype: fp32 master weights
    lora: bool = False                        # grid.lora: LoRA runs too
    lora_r: int = 16
    lora_targets: tuple[str, ...] = LORA_TARGETS
    infer_bytes: int = 2                      # run.inference_dtype
    batch_tokens: int | None = 16384          # run.batch_tokens; None: "auto", each stage fills its device
    prompt_tokens: int = 16                   # QA prompts are ~15-25 tokens; shorter = more rows, more logits
    probe_samples: int = 10
    probe_new_tokens: int = 32
    probe_method: str = "sampling"
    eval_new_tokens: int = 16
    restore_k: float = 60.0                   # largest k % restored at once
    restore_region: str = "transformer"
    layer_group_size: int = 4
    template_shared: bool = True              # the template is memory-mapped (a model folder): one copy per node

    @property
    def weight_bytes(self) -> int:
        return 2 if self.precision == "bf16" else self.train_bytes

    @property
    def ranks(self) -> int:
        return self.gpus if self.strategy == "fsdp" else 1


@dataclass
class Estimate:
    """A peak as named terms (bytes) whose sum is the peak."""
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def note(self) -> str:
        """The terms worth naming (>= 1 % of the total), in GB."""
        return " + ".join(f"{k} {fmt_gb(v)}" for k, v in self.parts.items() if v >= self.total / 100)


def _dtype(nbytes: int) -> str:
    return "fp32" if nbytes == 4 else "16-bit"


def fmt_gb(n: float) -> str:
    return f"{n / GB:.1f}" if n >= 10 * GB else f"{n / GB:.2f}" if n >= GB / 10 else f"{n / GB:.3f}"


# ------------------------------------------------------------------------------------------------ training
def activation_bytes_per_token_layer(shape: ModelShape, precision: str) -> int:
    """a_layer of the module docstring."""
    a = 4 if precision == "fp32" else 2
    r = 2 if precision == "bf16" else 4
    casts = 5 if precision == "bf16-mixed" else 2
    h = shape.hidden
    return (2 * (4 + r) * h + casts * a * h + 4 * shape.q_dim * a + 4 * shape.heads
            + 4 * shape.intermediate * a + 8)


def activation_memory(shape: ModelShape, s: PlanSettings, rows: int) -> int:
    """Act: saved activations of one step of ``rows`` rows, the backward's workspace and the answer-column head."""
    tokens = rows * s.seq_len
    a_layer = activation_bytes_per_token_layer(shape, s.precision)
    a = 4 if s.precision == "fp32" else 2
    if s.gradient_checkpointing:
        r = 2 if s.precision == "bf16" else 4
        body = tokens * (shape.layers * shape.hidden * r + 2 * a_layer)
    else:
        body = tokens * (shape.layers + 1) * a_layer
    keep = min(s.answer_tokens + 1, s.seq_len)
    return body + rows * keep * (shape.vocab * (a + 8) + shape.hidden * a)


def optimizer_bytes_per_param(s: PlanSettings) -> float:
    if s.optimizer == "adamw":
        return 2 * s.weight_bytes
    return 2 + 2 * 4 / 256                    # bitsandbytes: uint8 states + fp32 absmax per block


def _gathered(shape: ModelShape, s: PlanSettings) -> int:
    """FSDP: the unsharded root and two decoder layers in the compute dtype, one unit's unsharded gradients."""
    root, layer = shape.embedding_params() + shape.hidden, shape.layer_params()
    b_g = 4 if s.precision == "fp32" else 2
    return (root + 2 * layer) * b_g + max(root, layer) * s.weight_bytes


def sft_memory(shape: ModelShape, s: PlanSettings) -> Estimate:
    """Full fine-tuning: W + O + max(G, C + Act), or the FSDP sum (module docstring)."""
    p, b = shape.params, s.weight_bytes
    opt = int(p * optimizer_bytes_per_param(s))
    if s.strategy == "fsdp":
        n = s.gpus
        return Estimate({"weights+grads+optimizer shards": (2 * p * b + opt) // n,
                         "gathered units": _gathered(shape, s),
                         "activations": activation_memory(shape, s, -(-s.batch_size // n))})
    casts = 2 * shape.matmul_params() if s.precision == "bf16-mixed" else 0
    act = activation_memory(shape, s, s.batch_size)
    last = {"grads": p * b} if p * b >= casts + act else {"autocast copies": casts, "activations": act}
    return Estimate({"weights": p * b, f"{s.optimizer} states": opt, **last})


def fsdp_gather_memory(shape: ModelShape, s: PlanSettings) -> Estimate:
    """Rank 0 after the last FSDP step: its weight and optimizer shards (gradients, activations and gathered units
    are freed) and the full trained weights gathered onto its host (``fsdp.full_state_dict``, cpu_offload). On a
    GPU these live on the host; on a CPU, where the device is the host, rank 0 peaks at max(sft, this) + template."""
    p, b = shape.params, s.weight_bytes
    return Estimate({"weight+optimizer shards": (p * b + int(p * optimizer_bytes_per_param(s))) // s.gpus,
                     "gathered state": p * b})


def lora_memory(shape: ModelShape, s: PlanSettings) -> Estimate:
    """LoRA: frozen weights (+ autocast copies), activations with the adapters' extra inputs, adapter states."""
    proj = shape.projections()
    targets = [proj[t] for t in s.lora_targets if t in proj]
    n_adapter = shape.layers * sum(s.lora_r * (i + o) for i, o in targets)
    a = 4 if s.precision == "fp32" else 2
    rows = s.batch_size                       # one device trains a LoRA run, also with sft.strategy fsdp
    extra = rows * s.seq_len * shape.layers * sum(i + s.lora_r for i, _ in targets) * a
    casts = 2 * shape.matmul_params() if s.precision == "bf16-mixed" else 0
    frozen = {"frozen weights": shape.params * s.weight_bytes, "autocast copies": casts}
    return Estimate({**frozen, "activations": activation_memory(shape, s, rows) + extra,
                     "adapters+states": 16 * n_adapter})


# ------------------------------------------------------------------------------------------------ inference
def forward_bytes_per_token(shape: ModelShape, b: int) -> int:
    """f: the widest moment of a no-grad decoder layer, per token."""
    return (3 * shape.intermediate + 4 * shape.hidden) * b


def generation_peak(shape: ModelShape, b: int, batch_tokens: int, prompt: int, new: int, n: int,
                    sampling: bool) -> Estimate:
    """max(decode, prefill) of one full generate() batch (sftnb.lm.generation), weights excluded."""
    rows = max(1, batch_tokens // (prompt + new))
    kv_token = 2 * shape.layers * shape.kv_dim * b
    f = forward_bytes_per_token(shape, b)
    s = (4 + 4 * (shape.vocab % 256 != 0)) if sampling else 0
    decode = {"KV cache": kv_token * rows * (prompt + new), "logits": rows * shape.vocab * (2 * b + s),
              "forward": rows * f}
    prompts = -(-rows // n)
    prefill = {"KV cache": kv_token * prompts * prompt, "logits": prompts * shape.vocab * b,
               "forward": prompts * prompt * f}
    return Estimate(max(decode, prefill, key=lambda d: sum(d.values())))


def scoring_peak(shape: ModelShape, b: int, batch_tokens: int, logit_entries: int, per_entry: int) -> Estimate:
    """One forward of a batch of ``batch_tokens`` tokens without cache and its kept logits."""
    return Estimate({"forward": batch_tokens * forward_bytes_per_token(shape, b),
                     "logits": logit_entries * per_entry})


def auto_budget(shape: ModelShape, s: PlanSettings, held: int, per_token: float) -> int:
    """``run.batch_tokens: auto`` as ``sftnb.lm.batching.resolve_budget`` sizes it: the token slots that fill USABLE of
    a device beside ``held`` bytes (``per_token``: the stage's peak per slot); on a CPU its fixed default."""
    from .batching import CPU_BATCH_TOKENS

    if s.on_cpu:
        return CPU_BATCH_TOKENS
    return max(64, int((USABLE * s.gpu_memory_gb * GB - held) / per_token))


def _budget(shape: ModelShape, s: PlanSettings, held: int, peak) -> int:
    """The stage's batch_tokens: as set, or ``auto_budget`` for the peak function ``peak(batch_tokens)``."""
    if s.batch_tokens is not None:
        return s.batch_tokens
    slots = 1 << 22
    return auto_budget(shape, s, held, peak(slots).total / slots)


def probe_memory(shape: ModelShape, s: PlanSettings) -> Estimate:
    """Mastery probe: sampling (n samples of probe_new_tokens per prompt) or the likelihood scorer. The probe's
    model is made in the inference dtype straight from the host template (``models.copy_model``): nothing else
    on the device."""
    b = s.infer_bytes
    weights = shape.params * b

    def peak(bt):
        out = generation_peak(shape, b, bt, s.prompt_tokens, s.probe_new_tokens, s.probe_samples, True)
        if s.probe_method == "likelihood":
            out = max(out, scoring_peak(shape, b, bt, LOGITS_BUDGET, b + 8), key=lambda e: e.total)
        return out
    return Estimate({f"{_dtype(b)} weights": weights, **peak(_budget(shape, s, weights, peak)).parts})


def _eval_peak(shape: ModelShape, s: PlanSettings, held: int) -> Estimate:
    b = s.infer_bytes

    def peak(bt):
        gen = generation_peak(shape, b, bt, s.prompt_tokens, s.eval_new_tokens, 1, False)
        rows = max(1, bt // s.prompt_tokens)
        return max(gen, scoring_peak(shape, b, bt, rows * shape.vocab, b + 4), key=lambda e: e.total)
    return peak(_budget(shape, s, held, peak))


def eval_memory(shape: ModelShape, s: PlanSettings) -> Estimate:
    """Greedy evaluation, and the first-token logits of the token-KL analysis. The fine-tuned model, no longer
    needed in its training precision, is cast in place (``Grid._evaluate``; under fsdp it is rebuilt on
    rank 0's host and moved once, in the inference dtype): one copy on the device."""
    b = s.infer_bytes
    weights = shape.params * b
    return Estimate({f"{_dtype(b)} weights": weights, **_eval_peak(shape, s, weights).parts})


def restore_memory(shape: ModelShape, s: PlanSettings) -> Estimate:
    """Live restoration of one full fine-tuned model, then its evaluation (module docstring): on the fine-tuned
    model itself where the run evaluates in its training dtype (CPU); else (GPU: bf16 beside fp32) on the
    evaluation copy alone, from fp32 values on the host, a piece at a time (``param_analysis._restorer``)."""
    region = shape.region_params(s.restore_region)
    group = min(s.layer_group_size, shape.layers) / shape.layers * shape.region_params("transformer")
    piece = min(PIECE, shape.largest_tensor())
    undo = int(max(s.restore_k / 100 * region, group))
    if s.infer_bytes == s.weight_bytes:
        parts = {"fine-tuned model": shape.params * s.weight_bytes, "undo values": undo * s.weight_bytes,
                 "mask+workspace": region // 8 + WORKSPACE_PER_ELEMENT * piece}
    else:
        parts = {"restored evaluation copy": shape.params * s.infer_bytes, "undo values": undo * s.infer_bytes,
                 "mask+workspace": region // 8 + (WORKSPACE_PER_ELEMENT + 2 * s.train_bytes) * piece}
    return Estimate({**parts, **_eval_peak(shape, s, sum(parts.values())).parts})


def host_memory(shape: ModelShape, s: PlanSettings) -> Estimate:
    """Host RAM of one node as the code allocates it. Every rank keeps the pre-trained model on its host
    (``ModelRun.template``, the source of every copy, made on the device by ``models.copy_model``): memory-mapped
    from safetensors in the training dtype (``ModelRun.template_folder``), the node's ranks share one copy in the
    page cache (``template_shared``); tiny-random and quantized models have one per rank. Under fsdp rank 0's
    template feeds the shards (``fsdp.sharded_from_rank0``) and rank 0 gathers each trained model on its host
    (``fsdp.full_state_dict``): one more copy there."""
    one = shape.params * s.train_bytes
    copies = ({"pre-trained template, memory-mapped: one per node": one} if s.template_shared else
              {f"pre-trained template x{s.gpus} ranks": s.gpus * one})
    if s.strategy == "fsdp":
        copies["rank 0: gathered fine-tuned state"] = shape.params * s.weight_bytes
    return Estimate(copies)
