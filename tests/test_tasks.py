"""Table 5 tasks: metrics against hand-computed values, the built-in generators, file loading and its errors."""
import json
import operator
import re
import warnings

import pandas as pd
import pytest

from sftnb.infra.errors import SftnbError
from sftnb.data.builtin_tasks import _passage, builtin_math_task, builtin_summary_task, math_problems
from sftnb.data.tasks import Example, load_task_files
from sftnb.data.task_metrics import (format_prompt, gsm8k_prediction, gsm8k_reference, gsm8k_scores, metric_columns,
                                rouge_scores, score)
from sftnb.tasks import builtin_task, load_task


# --------------------------------------------------------------------------------------------- ROUGE
def test_rouge_hand_computed():
    # rouge-score lower-cases, splits on non-alphanumerics and Porter-stems tokens longer than 3 characters.
    # 1) ref "the cat is running" -> the cat is run; pred "the cat runs" -> the cat run
    #    rouge1: 3 common unigrams, P = 3/3, R = 3/4, F = 2*1*.75/1.75 = 6/7
    #    rouge2: ref {the cat, cat is, is run}, pred {the cat, cat run}: 1 common, P = 1/2, R = 1/3, F = 2/5
    #    rougeL: LCS "the cat run" = 3, as rouge1: 6/7
    # 2) ref "police arrested the man" -> polic arrest the man; pred "the man arrested police" -> the man arrest polic
    #    rouge1: 4/4 both ways, F = 1
    #    rouge2: ref {polic arrest, arrest the, the man}, pred {the man, man arrest, arrest polic}: 1 common, F = 1/3
    #    rougeL: LCS "the man" = 2, P = R = 1/2, F = 1/2  (word order counts for L, not for 1)
    # 3) case and punctuation do not count: "Hello, World!" vs "hello world" scores 1 everywhere
    # 4) an empty prediction scores 0
    preds = ["the cat runs", "the man arrested police", "hello world", ""]
    refs = ["the cat is running", "police arrested the man", "Hello, World!", "anything at all"]
    got = rouge_scores(preds, refs)
    assert set(got) == {"rouge1", "rouge2", "rougeL"}
    assert got["rouge1"] == pytest.approx([6 / 7, 1.0, 1.0, 0.0])
    assert got["rouge2"] == pytest.approx([2 / 5, 1 / 3, 1.0, 0.0])
    assert got["rougeL"] == pytest.approx([6 / 7, 1 / 2, 1.0, 0.0])


def test_rouge_stemming_matches_inflections():
    # "running" and "run" share the stem "run": a full match with the stemmer on.
    assert rouge_scores(["run"], ["running"])["rouge1"] == [1.0]


# --------------------------------------------------------------------------------------------- GSM8K
GSM8K_ANSWER = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


@pytest.mark.parametrize("text, expected", [
    ("#### 1,234", "1234"), (GSM8K_ANSWER, "72"), ("so #### -5", "-5"), ("#### 7.0", "7"), ("18", "18")])
def test_gsm8k_reference(text, expected):
    assert gsm8k_reference(text) == expected


def test_gsm8k_reference_without_answer_line():
    with pytest.raises(SftnbError, match="####"):
        gsm8k_reference("she has eighteen")


@pytest.mark.parametrize("generation, expected", [
    ("so she has 18 apples.", "18"), ("The answer is 7.0", "7"), ("-3", "-3"), ("It fell to -3.", "-3"),
    ("$1,234.00", "1234"), ("+5", "5"), ("10-3=7", "7"), ("4 + 3 = 7. #### 7", "7"), ("2.50 each", "2.5"),
    ("007", "7"), ("no number here", None), ("", None), (GSM8K_ANSWER, "72")])
def test_gsm8k_prediction(generation, expected):
    assert gsm8k_prediction(generation) == expected


def test_gsm8k_scores():
    preds = [GSM8K_ANSWER, "I think 5", "nothing to say", "The answer is 1,234.00.", "-3"]
    refs = [GSM8K_ANSWER, "#### 6", "#### 0", "#### 1,234", "#### -3"]
    assert gsm8k_scores(preds, refs) == {"accuracy": [1.0, 0.0, 0.0, 1.0, 1.0]}


def test_score_dispatch_and_columns():
    assert score("gsm8k", ["7"], ["#### 7"]) == {"accuracy": [1.0]}
    assert list(score("rouge", ["a b"], ["a b"])) == metric_columns("rouge") == ["rouge1", "rouge2", "rougeL"]
    assert metric_columns("gsm8k") == ["accuracy"]
    for call in (lambda: score("bleu", [], []), lambda: metric_columns("bleu"), lambda: format_prompt("bleu", "x")):
        with pytest.raises(SftnbError, match=r"unknown task metric 'bleu' \(known: rouge, gsm8k\)"):
            call()


def test_format_prompt():
    assert format_prompt("rouge", "A long story.") == "Summarize in one sentence: A long story."
    assert format_prompt("gsm8k", "How many?") == "How many?"


# --------------------------------------------------------------------------------------------- built-in tasks
@pytest.fixture(scope="module")
def math_task():
    return builtin_math_task(150, 50, seed=3)


@pytest.fixture(scope="module")
def summary_task():
    return builtin_summary_task(220, 40, seed=3)       # more than the train countries: some recur


def _fold(start: int, steps) -> list[int]:
    """Every value of a problem, recomputed from its structured record alone."""
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    values = [start]
    for op, b in steps:
        values.append(ops[op](values[-1], b))
    return values


def test_math_answers_recomputed_from_records(math_task):
    train, test = math_problems(150, 50, seed=3)
    assert [e.target for e in math_task.train] == [p.solution for p in train]
    assert [e.prompt for e in math_task.test] == [p.question for p in test]
    for p in train + test:
        values = _fold(p.start, p.steps)
        assert 1 <= len(p.steps) <= 3 and all(0 <= v < 100 for v in values)
        assert p.solution.endswith(f"#### {values[-1]}") and gsm8k_reference(p.solution) == str(values[-1])
        # each worked line "a op b = c." is right, and they chain through the recomputed values
        lines = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", p.solution)
        assert [(int(a), op, int(b)) for a, op, b, _ in lines] == [(v, op, b) for v, (op, b) in zip(values, p.steps)]
        assert [int(c) for *_, c in lines] == values[1:]
        # the question states the start and every operand, and asks about the object
        numbers = [int(n) for n in re.findall(r"\d+", p.question)]
        assert numbers == [p.start, *(b for _, b in p.steps)] and p.obj in p.question
        assert p.question.endswith("?") and p.name in p.question


def test_math_task_shape(math_task):
    assert (math_task.name, math_task.metric, math_task.source) == ("math", "gsm8k", "builtin:math")
    assert len(math_task.train) == 150 and len(math_task.test) == 50
    assert not {e.prompt for e in math_task.train} & {e.prompt for e in math_task.test}
    assert len({e.prompt for e in math_task.train + math_task.test}) == 200
    # uses all three operations and several step counts
    ops = {op for p in math_problems(150, 50, seed=3)[0] for op, _ in p.steps}
    assert ops == {"+", "-", "*"}


def test_summary_task(summary_task):
    assert (summary_task.metric, summary_task.source) == ("rouge", "builtin:summary")
    assert len(summary_task.train) == 220 and len(summary_task.test) == 40
    # the reference is one sentence in the fixed pattern, and every fact it states is in the passage
    pattern = re.compile(r"(.+), a country in (.+), has its capital in (.+) and uses the (.+)\.")
    for e in summary_task.train + summary_task.test:
        assert e.prompt.startswith("Summarize in one sentence: ")
        m = pattern.fullmatch(e.target)
        assert m and all(x in e.prompt for x in m.groups())
    # different countries in train and test (the target names the country); no passage repeats
    assert not {e.target for e in summary_task.train} & {e.target for e in summary_task.test}
    assert len({e.prompt for e in summary_task.train + summary_task.test}) == 260
    assert len({e.target for e in summary_task.train}) < 220       # some train countries recur, reworded


def test_passage_sentences():
    import random

    country = {"name": "Testland", "capital": "Capville", "continent": "Europe", "currency": "Crown",
               "languages": ("Alpha", "Beta", "Gamma"), "cities": ("Xton", "Yton", "Zton")}
    rng = random.Random(0)
    for _ in range(20):
        full = _passage(country, rng)              # 3 facts + languages + 1 city = the cap of 5
        assert full.count(".") == 5 and "Alpha and Beta" in full and "Gamma" not in full
        bare = _passage({**country, "languages": (), "cities": ()}, rng)
        assert bare.count(".") == 3 and all(x in bare for x in ("Capville", "Europe", "Crown"))
        no_lang = _passage({**country, "languages": ()}, rng).count(".")
        assert no_lang in (4, 5)


def test_generators_deterministic(math_task, summary_task):
    assert builtin_math_task(150, 50, seed=3) == math_task
    assert builtin_summary_task(220, 40, seed=3) == summary_task
    assert builtin_math_task(150, 50, seed=4).test != math_task.test
    assert builtin_summary_task(220, 40, seed=4).test != summary_task.test
    # the test split does not depend on the train size
    assert builtin_math_task(10, 50, seed=3).test == math_task.test
    assert builtin_task("summary", 5, 40, seed=3).test == summary_task.test


def test_builtin_errors():
    with pytest.raises(SftnbError, match="unknown built-in task kind 'poetry'"):
        builtin_task("poetry", 1, 1)
    with pytest.raises(SftnbError, match="at least 1"):
        builtin_math_task(0, 5)
    with pytest.raises(SftnbError, match="n_test must be below"):
        builtin_summary_task(1, 10_000)


# --------------------------------------------------------------------------------------------- files
def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


XSUM = [{"document": f"Story number {i} about a town.", "summary": f"A town had story {i}.", "id": str(i)}
        for i in range(6)]
GSM = [{"question": f"Tom has {i} apples and buys 2 more. How many now?", "answer": f"{i} + 2 = {i + 2}.\n#### {i + 2}"}
       for i in range(5)]


def _listing(root):
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_load_jsonl_xsum_fields(tmp_path):
    train, test = _jsonl(tmp_path / "train.jsonl", XSUM), _jsonl(tmp_path / "test.jsonl", XSUM[:2])
    task = load_task_files("xsum", train, test, "rouge", "document", "summary")
    assert (task.name, task.metric, task.source, task.max_new_tokens) == ("xsum", "rouge", str(test), 64)
    assert task.test == [Example("Summarize in one sentence: Story number 0 about a town.", "A town had story 0."),
                         Example("Summarize in one sentence: Story number 1 about a town.", "A town had story 1.")]
    assert len(task.train) == 6


def test_load_parquet_gsm8k_keeps_full_answer(tmp_path):
    pd.DataFrame(GSM).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(GSM[:2]).to_parquet(tmp_path / "test.parquet")
    task = load_task_files("gsm8k", tmp_path / "train.parquet", tmp_path / "test.parquet", "gsm8k",
                           "question", "answer", max_new_tokens=100)
    assert task.test[1] == Example(GSM[1]["question"], "1 + 2 = 3.\n#### 3")      # question as is, full answer
    assert task.max_new_tokens == 100 and len(task.train) == 5


def test_subsampling_seeded(tmp_path):
    train, test = _jsonl(tmp_path / "train.jsonl", XSUM), _jsonl(tmp_path / "test.jsonl", XSUM)
    load = lambda seed, **kw: load_task_files("x", train, test, "rouge", "document", "summary", seed=seed, **kw)  # noqa: E731
    a, b = load(0, max_train=3, max_test=2), load(0, max_train=3, max_test=2)
    assert a == b and len(a.train) == 3 and len(a.test) == 2
    order = [e.target for e in load(0).train]
    assert [e.target for e in a.train] == sorted((e.target for e in a.train), key=order.index)   # file order
    assert load(0, max_test=2).train == load(0).train      # a test cap leaves the train set alone
    assert len({tuple(load(s, max_train=3).train) for s in range(6)}) > 1


def test_load_task_spec(tmp_path):
    _jsonl(tmp_path / "train.jsonl", GSM)
    _jsonl(tmp_path / "test.jsonl", GSM[:3])
    spec = {"name": "gsm", "source": "files", "kind": None, "train_path": "train.jsonl", "test_path": "test.jsonl",
            "metric": "gsm8k", "prompt_field": None, "target_field": None, "max_train": 2, "max_test": None,
            "seed": 0, "max_new_tokens": None}
    task = load_task(spec, root=tmp_path)                  # default fields for gsm8k: question / answer
    assert (task.name, len(task.train), len(task.test), task.max_new_tokens) == ("gsm", 2, 3, 256)
    built = load_task({"name": "m", "source": "builtin", "kind": "math", "max_train": 4, "max_test": 2, "seed": 3})
    assert built.name == "m" and built.test == builtin_math_task(4, 2, seed=3).test
    assert load_task({"name": "s", "source": "builtin", "kind": "summary", "metric": "rouge", "max_train": 2,
                      "max_test": 2}).metric == "rouge"


@pytest.mark.parametrize("spec, message", [
    ({"name": "t", "source": "web"}, "unknown source 'web'"),
    ({"name": "t", "source": "files", "metric": "rouge"}, "source 'files' needs train_path, test_path"),
    ({"name": "t", "source": "builtin", "kind": "poetry"}, "kind must be one of math, summary"),
    ({"name": "t", "source": "builtin", "kind": "math", "metric": "rouge"}, "scored with 'gsm8k'"),
    ({"name": "t", "source": "builtin", "kind": "math", "pth": "x"}, "unknown key"),
    ({"source": "builtin", "kind": "math"}, "'name' is required"),
])
def test_load_task_spec_errors(spec, message):
    with pytest.raises(SftnbError, match=re.escape(message)) as e:
        load_task(spec)
    assert "\n" not in str(e.value)


def _bad_inputs(tmp_path):
    """(description, call, words the one-line message must contain)."""
    good = _jsonl(tmp_path / "good.jsonl", XSUM)
    no_field = _jsonl(tmp_path / "no_field.jsonl", [XSUM[0], {"document": "text only"}])
    (tmp_path / "not_json.jsonl").write_text(json.dumps(XSUM[0]) + "\n\n{oops\n", encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    (tmp_path / "garbage.parquet").write_bytes(b"this is not parquet")
    pd.DataFrame([{"document": "x"}]).to_parquet(tmp_path / "no_col.parquet")
    no_answer = _jsonl(tmp_path / "no_answer.jsonl", [{"question": "q", "answer": "eighteen"}])
    not_text = _jsonl(tmp_path / "not_text.jsonl", [{"document": ["a"], "summary": "s"}])
    rouge = lambda train, test, **kw: lambda: load_task_files("t", train, test, kw.pop("metric", "rouge"),  # noqa: E731
                                                              "document", "summary", **kw)
    return [
        ("missing field", rouge(good, no_field), ["no_field.jsonl", "line 2", "'summary'"]),
        ("not JSON", rouge(good, tmp_path / "not_json.jsonl"), ["not_json.jsonl", "line 3 is not JSON"]),
        ("empty test set", rouge(good, tmp_path / "empty.jsonl"), ["empty.jsonl", "no examples"]),
        ("unknown metric", rouge(good, good, metric="bleu"), ["unknown task metric 'bleu'", "rouge, gsm8k"]),
        ("missing file", rouge(good, tmp_path / "absent.jsonl"), ["not found", "absent.jsonl"]),
        ("bad parquet", rouge(good, tmp_path / "garbage.parquet"), ["garbage.parquet", "not a readable Parquet"]),
        ("parquet column", rouge(good, tmp_path / "no_col.parquet"), ["no_col.parquet", "row 0", "'summary'"]),
        ("gsm8k answer", lambda: load_task_files("t", no_answer, no_answer, "gsm8k", "question", "answer"),
         ["no_answer.jsonl", "line 1", "'answer'", "####"]),
        ("not text", rouge(good, not_text), ["not_text.jsonl", "line 1", "'document'", "not text"]),
        ("bad cap", rouge(good, good, max_test=0), ["max_test must be at least 1"]),
    ]


def test_bad_inputs_one_line_errors_and_nothing_written(tmp_path):
    cases = _bad_inputs(tmp_path)
    before = _listing(tmp_path)
    for what, call, words in cases:
        with pytest.raises(SftnbError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg, what
        assert all(w in msg for w in words), (what, msg)
    load_task_files("t", tmp_path / "good.jsonl", tmp_path / "good.jsonl", "rouge", "document", "summary")
    assert _listing(tmp_path) == before


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    import importlib.util

    pd.DataFrame(XSUM).to_parquet(tmp_path / "a.parquet")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    with pytest.raises(SftnbError, match="needs pyarrow: pip install"):
        load_task_files("t", tmp_path / "a.parquet", tmp_path / "a.parquet", "rouge", "document", "summary")


def test_empty_records_skipped_with_warning(tmp_path):
    path = _jsonl(tmp_path / "some_empty.jsonl", [XSUM[0], {"document": " ", "summary": "s"}, XSUM[1]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = load_task_files("t", path, path, "rouge", "document", "summary")
    assert len(task.test) == 2
    assert any("skipped 1 record" in str(w.message) and "line 2" in str(w.message) for w in caught)


# ---------------------------------------------------------------------------------------------- Table 5 runs
def test_task_sft_then_full_restoration_gives_back_the_pretrained_score(tmp_path):
    """Fine-tune the tiny model on the built-in math task, restore 100 % of every parameter: the restored model is
    the pre-trained one, so its per-example scores equal the pre-SFT ones exactly."""
    from sftnb.config import load_config
    from sftnb.experiment import Experiment
    from sftnb.param_analysis import task_sweep

    cfg = load_config("params/smoke.yaml", {
        "run": {"out_dir": str(tmp_path / "run"), "figures_dir": str(tmp_path / "fig"), "progress": False},
        "restore": {"region": "all"},
        "tasks": [{"name": "math", "kind": "math", "max_train": 8, "max_test": 6, "max_new_tokens": 8,
                   "k_percents": [50, 100]}]})
    exp = Experiment(cfg)
    res = task_sweep(exp.main, cfg.tasks[0], seed=0)
    by_k = {r["k"]: r for r in res["rows"]}
    assert list(by_k) == ["pre-SFT", 0, 50, 100]
    assert by_k[100]["scores"] == by_k["pre-SFT"]["scores"] and by_k[100]["examples"] == by_k["pre-SFT"]["examples"]
    assert res["n_train"] == 8 and res["n_test"] == 6 and res["train"]["steps"] == 2
    again = Experiment(cfg)
    assert task_sweep(again.main, cfg.tasks[0], seed=0) == res and not again.store.computed   # a store unit: reused


@pytest.mark.slow
def test_a_task_learning_rate_trains_at_that_rate_in_its_own_unit(tmp_path, monkeypatch):
    """``tasks[].learning_rate`` overrides ``sft.learning_rate`` for that task alone, and keys its own unit."""
    from sftnb import param_analysis
    from sftnb.config import load_config
    from sftnb.experiment import Experiment

    import sftnb.sft as sft_module

    seen, original = [], sft_module.train

    def spy(*args, **kwargs):
        seen.append(kwargs.get("learning_rate"))
        return original(*args, **kwargs)

    monkeypatch.setattr(sft_module, "train", spy)
    task = {"name": "math", "kind": "math", "max_train": 8, "max_test": 4, "max_new_tokens": 4, "k_percents": [50]}
    base = {"run": {"out_dir": str(tmp_path / "run"), "figures_dir": str(tmp_path / "fig"), "progress": False}}
    plain = load_config("params/smoke.yaml", {**base, "tasks": [task]})
    faster = load_config("params/smoke.yaml", {**base, "tasks": [{**task, "learning_rate": 3e-3}]})
    param_analysis.task_sweep(Experiment(plain).main, plain.tasks[0], seed=0)
    exp = Experiment(faster)
    param_analysis.task_sweep(exp.main, faster.tasks[0], seed=0)
    assert seen == [plain.sft.learning_rate, 3e-3]
    assert len(exp.store.computed) == 1                          # a different rate is a different unit


@pytest.mark.parametrize("task,message", [
    ({"name": "t", "source": "files", "metric": "gsm8k"}, "needs train_path, test_path"),
    ({"name": "t", "kind": "math", "metric": "bleu"}, "tasks.0.metric"),
])
def test_bad_task_params_are_one_line(tmp_path, task, message):
    from sftnb.config import load_config
    from sftnb.experiment import Experiment
    from sftnb.param_analysis import task_sweep

    try:
        cfg = load_config("params/smoke.yaml", {"tasks": [task], "run": {"out_dir": str(tmp_path / "r"),
                                                                        "figures_dir": str(tmp_path / "f")}})
        task_sweep(Experiment(cfg).main, cfg.tasks[0], 0)
    except SftnbError as e:
        assert message in str(e) and "\n" not in str(e)
    else:
        pytest.fail("no error")
    assert not list((tmp_path / "r").glob("task/*")) if (tmp_path / "r").exists() else True
