"""Further tasks for Table 5: fine-tune on a task, restore the most-changed parameters, score the task.

Table 5 of Ye et al. fine-tunes LLaMA-3-8B on XSum (one-sentence news summaries) and on GSM8K (grade-school
math), restores the k = 0, 1, 3, 5, 10, 20, 40, 60 % most-changed parameters and scores each restored model
(ROUGE-1/2/L for XSum, accuracy for GSM8K). The tasks, by what each module does:

* ``sftnb.data.tasks``: what a task is (``Example``, ``Task``) and real data from local files
  (``load_task_files``): nothing is downloaded at run time;
* ``sftnb.data.builtin_tasks``: two offline built-in tasks for the CPU main run (``builtin_math_task``,
  ``builtin_summary_task``), made deterministically from a seed;
* ``sftnb.data.task_metrics``: the metrics (``score``: ROUGE-1/2/L F1 with rouge-score's stemmer; GSM8K accuracy on
  the number after ``####``) and the prompt each takes (``format_prompt``);
* here: a task from its params spec (``load_task``; ``TaskConfig.spec()`` dumps to it).

Prompts (the SFT question; ``sftnb.sft`` wraps it as ``<|question|> {prompt} <|answer|>``), from
``format_prompt``: rouge -> ``"Summarize in one sentence: {document}"``; gsm8k -> the question as is (GSM8K
questions are self-contained). Targets are the reference text; for GSM8K the full answer, reasoning and
``#### N`` included, since that is what the model is fine-tuned to write.
"""
from __future__ import annotations

from pathlib import Path

from .infra.errors import SftnbError
from .data.builtin_tasks import builtin_math_task, builtin_summary_task
from .data.tasks import DEFAULT_FIELDS, Task, load_task_files
from .data.task_metrics import check_metric


BUILTIN_KINDS = {"math": (builtin_math_task, "gsm8k"), "summary": (builtin_summary_task, "rouge")}
SPEC_KEYS = ("name", "source", "kind", "train_path", "test_path", "metric", "prompt_field", "target_field",
             "max_train", "max_test", "seed", "max_new_tokens")


def builtin_task(kind: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                 max_new_tokens: int | None = None) -> Task:
    """``builtin_math_task`` or ``builtin_summary_task`` by name ("math" | "summary"); None = its default."""
    if kind not in BUILTIN_KINDS:
        raise SftnbError(f"unknown built-in task kind {kind!r} (known: {', '.join(BUILTIN_KINDS)})")
    given = {"n_train": n_train, "n_test": n_test, "max_new_tokens": max_new_tokens}
    return BUILTIN_KINDS[kind][0](seed=seed, **{k: v for k, v in given.items() if v is not None})


def load_task(spec: dict, root: Path | None = None) -> Task:
    """A task from a plain dict with the keys ``SPEC_KEYS`` (absent or None = default):

    * ``source: "builtin"``: ``kind`` "math" | "summary"; ``max_train`` / ``max_test`` are the generated sizes
      (default: the generator's); ``metric``, when given, must be the kind's (gsm8k / rouge).
    * ``source: "files"``: ``train_path``, ``test_path`` and ``metric`` required (relative paths resolve
      against ``root`` when given); fields default per metric (``DEFAULT_FIELDS``: XSum, GSM8K).
    """
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SftnbError(f"task spec: unknown key(s) {', '.join(unknown)} (known: {', '.join(SPEC_KEYS)})")
    spec = {k: v for k, v in spec.items() if v is not None}        # None = default, as a pydantic dump gives
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise SftnbError("task spec: 'name' is required")
    if spec.get("source") == "builtin":
        return _builtin_from_spec(name, spec)
    if spec.get("source") == "files":
        return _files_from_spec(name, spec, root)
    raise SftnbError(f"task {name!r}: unknown source {spec.get('source')!r} (known: builtin, files)")


def _builtin_from_spec(name: str, spec: dict) -> Task:
    kind = spec.get("kind")
    if kind not in BUILTIN_KINDS:
        raise SftnbError(f"task {name!r}: kind must be one of {', '.join(BUILTIN_KINDS)}, got {kind!r}")
    wanted, own = spec.get("metric"), BUILTIN_KINDS[kind][1]
    if wanted not in (None, own):
        raise SftnbError(f"task {name!r}: built-in {kind} is scored with {own!r}, not {wanted!r}")
    task = builtin_task(kind, spec.get("max_train"), spec.get("max_test"), spec.get("seed", 0),
                        spec.get("max_new_tokens"))
    task.name = name
    return task


def _files_from_spec(name: str, spec: dict, root: Path | None) -> Task:
    missing = [k for k in ("train_path", "test_path", "metric") if k not in spec]
    if missing:
        raise SftnbError(f"task {name!r}: source 'files' needs {', '.join(missing)}")
    metric = check_metric(spec["metric"])
    paths = [Path(spec[k]).expanduser() for k in ("train_path", "test_path")]
    paths = [p if p.is_absolute() or root is None else Path(root) / p for p in paths]
    prompt_field, target_field = DEFAULT_FIELDS[metric]
    return load_task_files(name, paths[0], paths[1], metric, spec.get("prompt_field", prompt_field),
                           spec.get("target_field", target_field), spec.get("max_train"), spec.get("max_test"),
                           spec.get("seed", 0), spec.get("max_new_tokens"))
