import pytest

from sftnb.cli import main
from sftnb.mastery import category, minimal_aliases


@pytest.mark.parametrize("r,cat", [(0.0, 0), (1e-9, 1), (0.1, 1), (0.25, 1), (0.2500001, 2), (0.5, 2),
                                   (0.51, 3), (0.75, 3), (0.7500001, 4), (1.0, 4)])
def test_category_boundaries(r, cat):
    assert category(r) == cat


def test_category_rejects_out_of_range():
    with pytest.raises(ValueError):
        category(1.5)
    with pytest.raises(ValueError):
        category(-0.1)


def test_category_exact_on_the_sampling_grid():
    # every R the paper's estimator can produce (k successes out of 21 x 10)
    for k in range(211):
        r = k / 210
        expected = 0 if k == 0 else next(i for i in range(1, 5) if r <= i / 4)
        assert category(r) == expected


def test_minimal_aliases_drop_extensions():
    al = minimal_aliases(["United States of America"])
    norm = [a.lower() for a in al]
    assert "usa" in norm and "united states" in norm
    assert "united states of america" not in norm


def test_probe_bad_facts_files(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"relation": "country_capital", "subject": "France", "answers": ["Paris"]}\n{oops\n')
    for facts in (empty, bad):
        assert main(["probe", "--model", "tiny-random", "--facts", str(facts), "--out",
                     str(tmp_path / "o.jsonl")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sftnb: error:")
    assert not (tmp_path / "o.jsonl").exists()


def test_probe_missing_model_is_one_line(tmp_path, capsys):
    assert main(["probe", "--model", str(tmp_path / "no-model"), "--facts", "builtin:test",
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and not (tmp_path / "o.jsonl").exists()


def test_probe_cli_writes_one_line_per_fact(tmp_path, capsys):
    import json
    facts = tmp_path / "f.jsonl"
    facts.write_text("".join(json.dumps({"relation": "country_capital", "subject": c, "answers": [a]}) + "\n"
                             for c, a in [("France", "Paris"), ("Peru", "Lima")]))
    out = tmp_path / "probe.jsonl"
    assert main(["probe", "--model", "tiny-random", "--facts", str(facts), "--out", str(out), "--templates", "2",
                 "--samples", "2", "--max-new-tokens", "4"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["subject"] for r in rows] == ["France", "Peru"]
    assert all(0 <= r["R"] <= 1 and r["category"] == category(r["R"]) and len(r["template_rates"]) == 2
               for r in rows)


def test_probe_cli_resumes_after_an_interruption(tmp_path, capsys, monkeypatch):
    """Killed after its first chunk, the rerun reuses that chunk and writes what an uninterrupted run writes."""
    import json

    import sftnb.mastery as mastery
    facts = tmp_path / "f.jsonl"
    facts.write_text("".join(json.dumps({"relation": "country_capital", "subject": c, "answers": [a]}) + "\n"
                             for c, a in [("France", "Paris"), ("Peru", "Lima"), ("Chile", "Santiago"),
                                          ("Japan", "Tokyo"), ("Kenya", "Nairobi")]))
    argv = ["probe", "--model", "tiny-random", "--facts", str(facts), "--templates", "2", "--samples", "3",
            "--max-new-tokens", "4", "--chunk-facts", "2"]
    clean = tmp_path / "clean.jsonl"
    assert main([*argv, "--out", str(clean)]) == 0
    assert not list(tmp_path.glob(".clean.jsonl.units"))                 # the work folder goes once out is written

    real, calls = mastery.probe, []

    def dies_on_second_chunk(*a, **k):
        calls.append(len(a[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **k)

    monkeypatch.setattr(mastery, "probe", dies_on_second_chunk)
    out = tmp_path / "probe.jsonl"
    assert main([*argv, "--out", str(out)]) == 130 and not out.exists()
    assert len(list((tmp_path / ".probe.jsonl.units" / "probe").glob("*/result.json"))) == 1
    calls.clear()
    capsys.readouterr()
    monkeypatch.setattr(mastery, "probe", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    assert main([*argv, "--out", str(out)]) == 0
    assert "resuming: 1 finished chunk" in capsys.readouterr().out
    assert calls == [2, 1]                                  # chunks 2 and 3 only: chunk 1 was reused
    assert out.read_text() == clean.read_text()


def test_probe_cli_calibrated_samples_a_subset_and_calibrates(tmp_path, capsys):
    """`sftnb probe --method calibrated`: the likelihood of every fact, calibrated per relation on a subset that is
    also sampled (the rates land on the sampling grid); a bad setting is one line."""
    import json
    facts = tmp_path / "f.jsonl"
    pairs = [("France", "Paris"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Spain", "Madrid"), ("Italy", "Rome"),
             ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Cuba", "Havana"), ("Iran", "Tehran"),
             ("Oman", "Muscat")]
    facts.write_text("".join(json.dumps({"relation": "country_capital", "subject": c, "answers": [a]}) + "\n"
                             for c, a in pairs))
    out = tmp_path / "probe.jsonl"
    args = ["probe", "--model", "tiny-random", "--facts", str(facts), "--out", str(out), "--templates", "2",
            "--samples", "2", "--max-new-tokens", "4", "--method", "calibrated", "--lead-ins", "2",
            "--lead-in-depth", "2", "--calibration-facts", "10"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "calibrated on 10 sampled facts: alpha per relation country_capital" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(pairs)
    assert all(abs(r["R"] * 4 - round(r["R"] * 4)) < 1e-9 and r["category"] == category(r["R"]) for r in rows)
    assert main(args[:-2] + ["--calibration-facts", "3"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
