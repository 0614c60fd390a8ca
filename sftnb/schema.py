"""The sections of a params file (``sftnb.config`` validates and loads the whole): data, models (with their
injection), probe, sft, grid, eval, token_kl, tasks and the run options. Each default is the paper's value.

Shared by every section: unknown keys are refused (``Section``), lists of seeds, scales and counts are sorted
without repeats (``sorted_unique``), so one recipe has one spelling.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .data.scales import Scale
from .lm import EMBEDDED, TINY

# the built-in model names a ``models[].path`` may hold instead of a folder (``sftnb.lm.models`` resolves them)
BUILTIN_MODELS = (EMBEDDED, TINY)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def sorted_unique(values: list, what: str) -> list:
    if list(values) != sorted(set(values)):
        raise ValueError(f"{what} must be sorted ascending without repeats")
    return values


def check_seeds(v: list[int]) -> list[int]:
    if not v:
        raise ValueError("at least one seed")
    return sorted_unique(v, "seeds")


class DataConfig(Section):
    source: Literal["builtin", "entityquestions", "file"] = "builtin"
    path: Optional[str] = None                 # EntityQuestions folder, or a JSONL facts file
    # Reduced-scale runs: at most this many facts per relation in D_train / D_test / D_testood (None = all).
    max_train_per_relation: Optional[int] = Field(None, ge=1)
    max_test_per_relation: Optional[int] = Field(None, ge=1)
    max_testood_per_relation: Optional[int] = Field(None, ge=1)
    seed: int = 0                              # which subset the caps keep

    @model_validator(mode="after")
    def _path_needed(self):
        if self.source in ("entityquestions", "file") and not self.path:
            raise ValueError(f"data.source {self.source!r} needs data.path")
        return self


class InjectConfig(Section):
    """Knowledge injection (``sftnb.inject``): the model of a ``models:`` entry is ``path`` after continued
    pre-training on declarative statements of a seeded subset of D_train and D_test facts, each fact seen
    ``exposures[i]`` times (balanced across relations and counts)."""
    exposures: list[int] = [0, 1, 2, 4, 8, 16]     # statements per fact; 0 = in the plan but never shown
    train_facts_per_count: int = Field(60, ge=1)    # D_train facts per exposure count
    test_facts_per_count: int = Field(30, ge=1)     # D_test facts per exposure count
    # or one number per exposure count (overrides *_per_count), to balance the categories (testbed-paper-range)
    train_facts_per_exposure: Optional[list[int]] = None
    test_facts_per_exposure: Optional[list[int]] = None
    # batches of similar token length (transformers' length grouping); False: schedule order (the main run's)
    length_grouped: bool = False
    # the exposure table's "before" (the base model's probe): every fact, or a seeded sample of this many
    before_facts: Optional[int] = Field(None, ge=10)
    # statement templates per relation ({subject} before {answer}); None = resources/injection_statements.json
    templates: Optional[dict[str, list[str]]] = None
    # relations injected (None: all with templates); few answers (6 continents) are learnt as a guess, not a fact
    relations: Optional[list[str]] = None
    # tests and CI only: statements may repeat the probe's wording (copying, not recall): a tiny model learns fast
    allow_probe_wording: bool = False
    learning_rate: float = Field(1e-4, gt=0)        # AdamW, one pass over the shuffled statements
    batch_size: int = Field(16, ge=1)               # statements per step
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    seed: int = 0                                   # which facts, which counts, which templates, the order

    @field_validator("exposures")
    @classmethod
    def _exposures(cls, v):
        if not v or any(c < 0 for c in v):
            raise ValueError("exposure counts must be non-negative integers")
        return sorted_unique(v, "exposures")

    @model_validator(mode="after")
    def _per_exposure(self):
        for name in ("train_facts_per_exposure", "test_facts_per_exposure"):
            v = getattr(self, name)
            if v is not None and (len(v) != len(self.exposures) or any(n < 0 for n in v) or not sum(v)):
                raise ValueError(f"{name}: one fact count >= 0 per exposure count ({len(self.exposures)}), "
                                 f"not all zero")
        return self

    def facts_per_exposure(self, split: str) -> list[int]:
        """D_train (``split="train"``) or D_test facts for each exposure count."""
        per = self.train_facts_per_exposure if split == "train" else self.test_facts_per_exposure
        return list(per) if per is not None else \
            [self.train_facts_per_count if split == "train" else self.test_facts_per_count] * len(self.exposures)


class ModelConfig(Section):
    name: str                                  # label used in tables and figures
    path: str                                  # "smollm2-135m", "tiny-random" or a local Hugging Face folder
    instruct_path: Optional[str] = None        # the matching instruct model, Table 7's first column
    instruct_note: Optional[str] = None        # why Table 7's instruct column is n/a when instruct_path is not set
    calibration_facts: Optional[int] = Field(None, ge=0)  # this model's probe.calibration_facts (None: the probe's)
    quantization: Optional[Literal["4bit", "8bit"]] = None   # bitsandbytes, CUDA only (probe/eval)
    # what every prompt starts with: "auto" = the tokenizer's own convention (LLaMA: its BOS; SmolLM2: nothing),
    # "none", or a token of the vocabulary ("<|endoftext|>"); see sftnb.lm.models.set_prompt_start
    prompt_start: str = "auto"
    inject: Optional[InjectConfig] = None      # the testbed: ``path`` with facts injected at graded exposure
    grid: Optional["GridConfig"] = None        # this model's own grid (None: the run's ``grid``), e.g. fewer cells


class ProbeConfig(Section):
    """Knowledge mastery (§3.3, App. F.1); see sftnb/mastery.py."""
    # sampling: the paper's estimator; likelihood: P(a sample starts with the answer, directly or after one of the
    # model's lead_ins most likely first tokens), one pass per template, reads low; calibrated: likelihood
    # rescaled per relation to the sampled rate of a subset of calibration_facts facts (beyond the paper)
    method: Literal["sampling", "likelihood", "calibrated"] = "sampling"
    n_templates: int = Field(21, ge=1)         # N_map: first n mapping templates of each relation
    n_samples: int = Field(10, ge=1)           # N_sample per template
    temperature: float = Field(0.7, gt=0)
    max_new_tokens: int = Field(32, ge=1)      # tokens per sample (a sample also stops once it contains the answer)
    stop_at_newline: bool = False              # sampling: a line break ends a sample too (approximation; measured)
    lead_ins: int = Field(8, ge=0)             # likelihood/calibrated: first tokens after which the answer is scored
    lead_in_depth: int = Field(1, ge=1)        # ... or phrases of up to this many tokens (" a landmark of"), a beam of
                                               # lead_ins phrases per length: one decode step of lead_ins rows each
    # notebook 01 also probes the study facts (likelihood) with each of these prompt starts (models[].prompt_start:
    # "none", "auto" or a token) and reports mean R and the categories under each; [] = skip
    prompt_start_candidates: list[str] = []
    # calibrated: facts sampled twice (seeds seed and seed+1) per model, spread over relations and sets: the first
    # run calibrates, both measure the estimator's agreement with sampling (notebook 01)
    calibration_facts: int = Field(200, ge=0)
    chunk_facts: int = Field(4096, ge=1)       # facts per store unit (resume granularity)
    seed: int = 0

    @model_validator(mode="after")
    def _calibration(self):
        if self.method == "calibrated" and self.calibration_facts < 10:
            raise ValueError("probe.calibration_facts: the calibrated method needs at least 10 facts to calibrate on")
        return self


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    learning_rate: float = Field(1e-4, gt=0)


class SFTConfig(Section):
    """Fine-tuning (§3.3, App. A)."""
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(8, ge=1)
    epochs: int = Field(1, ge=1)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    # auto: bf16 autocast over fp32 weights on GPU (the paper's setting), plain fp32 on CPU; fastest: the same,
    # except bf16 autocast on a CPU with native bf16 (AVX512-BF16 / AMX), where it is ~2.5x faster than fp32;
    # bf16: pure bf16 weights, gradients and optimizer states (2 B each per parameter instead of 4; not the paper's
    # fp32-master recipe). Memory per setting: `sftnb plan` (sftnb/plan.py).
    precision: Literal["auto", "fastest", "fp32", "bf16-mixed", "bf16"] = "auto"
    # single: each run on one device; fsdp: a run fully sharded over a group of ranks (weights, gradients and
    # optimizer states divided by the group's size; sft.batch_size stays the global batch, split over the group)
    strategy: Literal["single", "fsdp"] = "single"
    # fsdp: ranks per sharded run. auto: the smallest group (a divisor of the world size) on which `sftnb plan` says
    # the SFT stage fits; the run's ranks form world / fsdp_ranks groups that train different runs at once
    fsdp_ranks: Union[Literal["auto"], int] = "auto"
    # adamw: torch AdamW (two states in the weights' dtype: 8 B per fp32 parameter); adamw_8bit / paged_adamw_8bit:
    # bitsandbytes (CUDA), two 8-bit states (~2 B per parameter), paged: in CUDA unified memory, spilling to host
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    # recompute each decoder layer in the backward pass (~1/3 more compute, the same results): activations shrink
    # from ~(40 H + 16 I) bytes per token and layer (fp32) to the layer input
    gradient_checkpointing: bool = False
    lora: LoraConfig = LoraConfig()


class GridConfig(Section):
    """The SFT grid (§3.4): categories x scales x seeds, plus Table 7's baselines."""
    categories: list[int] = [0, 1, 2, 3, 4]
    scales: list[Scale] = [60, 120, 240, 480, 960, 1920, "all"]
    seeds: list[int] = [0, 1, 2]
    # fewer seeds at some scales, e.g. {60: [0]}: each a subset of ``seeds``; a scale not named runs every seed
    scale_seeds: dict[Scale, list[int]] = {}
    keep_checkpoints: list[Scale] = [240, 1920]   # scales whose fine-tuned weights notebooks 03-06 reuse
    mixed: bool = True                         # SFT (Mixed): D_train regardless of category (Table 7)
    lora: bool = True                          # LoRA on the mixed set (Table 7)
    lora_scales: Optional[list[Scale]] = None  # the LoRA runs' scales (None: every scale)
    mixed_scales: Optional[list[Scale]] = None  # the mixed runs' scales (None: every scale)
    models: Optional[list[str]] = None         # model names to run the grid for (None: every model)

    @field_validator("categories")
    @classmethod
    def _cats(cls, v):
        if any(c not in range(5) for c in v):
            raise ValueError("mastery categories are 0-4")
        return sorted_unique(v, "categories")

    @field_validator("scales", "keep_checkpoints")
    @classmethod
    def _scales(cls, v):
        ints = [s for s in v if s != "all"]
        if any(s <= 0 for s in ints):
            raise ValueError("scales must be positive")
        if v.count("all") > 1 or ("all" in v and v[-1] != "all"):
            raise ValueError("'all' may appear once, last")
        sorted_unique(ints, "scales")
        return v

    _seeds = field_validator("seeds")(classmethod(lambda cls, v: check_seeds(v)))

    @model_validator(mode="after")
    def _scale_seeds(self):
        for scale, seeds in self.scale_seeds.items():
            if scale not in self.scales:
                raise ValueError(f"grid.scale_seeds: {scale!r} is not one of the grid's scales {self.scales}")
            if not seeds or not set(seeds) <= set(self.seeds):
                raise ValueError(f"grid.scale_seeds: the seeds at {scale!r} ({seeds}) must be some of grid.seeds "
                                 f"{self.seeds}")
            self.scale_seeds[scale] = check_seeds(seeds)
        return self

    def seeds_at(self, scale: Scale) -> list[int]:
        """The seeds a scale is fine-tuned with: ``scale_seeds[scale]``, else every seed."""
        return self.scale_seeds.get(scale, self.seeds)


class EvalConfig(Section):
    """Closed-book QA testing (§3.3): greedy decoding."""
    max_new_tokens: int = Field(16, ge=1)
    train_accuracy: bool = True                # Table 6: accuracy on each unit's own training set
    # the paper's Acc_test (mean of the five category accuracies) is n/a when a category has fewer test facts
    # than this; the count-weighted "pooled" accuracy is reported beside it under its own name
    min_category_facts: int = Field(20, ge=1)


class TokenKLConfig(Section):
    """Token-level analysis (§4.1)."""
    k: int = Field(10, ge=1)                   # top-k logits of the fine-tuned model, re-normalised
    # the facts the pre-trained model knows: D_test-4 in the paper; a small model may have none there, so a run
    # can name the highest category that has facts (params/embedded.yaml does, for SmolLM2-135M)
    category: int = Field(4, ge=0, le=4)
    answer_within_words: int = Field(3, ge=0)  # "near the beginning": answer starts within this many words
    max_examples: Optional[int] = Field(None, ge=1)


class TaskConfig(Section):
    """Table 5: a further task (``sftnb.tasks``): the pre-trained model is fine-tuned on its training set with the
    SFT settings above, then restored at ``k_percents`` and scored on its test set. Dumps to the spec of
    ``sftnb.tasks.load_task``."""
    name: str
    source: Literal["builtin", "files"] = "builtin"
    kind: Optional[Literal["math", "summary"]] = None     # builtin: one- to three-step arithmetic | summaries
    train_path: Optional[str] = None           # files: JSONL or Parquet as Hugging Face datasets export them
    test_path: Optional[str] = None
    metric: Optional[Literal["rouge", "gsm8k"]] = None    # ROUGE-1/2/L F1 (rouge-score, stemmer) | GSM8K accuracy
    prompt_field: Optional[str] = None         # files: field names (default per metric: XSum, GSM8K)
    target_field: Optional[str] = None
    max_train: Optional[int] = Field(None, ge=1)          # training examples (builtin: generated)
    max_test: Optional[int] = Field(None, ge=1)           # test examples
    seed: int = 0                              # which examples (generation / subsampling)
    max_new_tokens: Optional[int] = Field(None, ge=1)     # None: the task's default
    seeds: list[int] = [0]                     # SFT seeds (each a store unit)
    k_percents: Optional[list[float]] = None   # None: restore.k_percents
    learning_rate: Optional[float] = Field(None, gt=0)   # None: sft.learning_rate (the paper's setting)

    _seeds = field_validator("seeds")(classmethod(lambda cls, v: check_seeds(v)))

    def spec(self) -> dict:
        return self.model_dump(exclude={"seeds", "k_percents", "learning_rate"})


ModelConfig.model_rebuild()


class RunOptions(Section):
    """How to run (not what): device, precision, sizes, folders."""
    device: str = "auto"                       # auto | cpu | cuda | cuda:N
    # weights while fine-tuning; auto = fp32 master weights (autocast per sft.precision), as the paper trains
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # probe/eval weights: auto = bf16 on GPU, fp32 on CPU; fastest = bf16 also on a CPU with native bf16
    # (sftnb.lm.models.cpu_has_native_bf16), fp32 on one without (there bf16 is emulated and ~4x slower)
    inference_dtype: Literal["auto", "fastest", "float32", "bfloat16", "float16"] = "auto"
    # generation / scoring batches hold about this many token slots; auto: as many as the free device memory holds
    # (sftnb.lm.batching.resolve_budget; on a CPU batching.CPU_BATCH_TOKENS = 16384)
    batch_tokens: Union[Literal["auto"], int] = "auto"
    out_dir: Optional[str] = None              # store + checkpoints (default runs/<run_name>)
    figures_dir: Optional[str] = None          # tables + figures (default figures/<run_name>)
    progress: bool = True

    @field_validator("batch_tokens")
    @classmethod
    def _batch_tokens(cls, v):
        if v != "auto" and v < 64:
            raise ValueError("must be auto or at least 64")
        return v

