"""sftnb/resources/paper_results.json checked against the paper's text, number by number and sentence by sentence.

Each table is located in the text by its caption line ("Table 3: ..."): the tab-separated lines printed just
above it are its rows, split into sub-tables by their "(a) ..." labels. The JSON is read with its numbers kept
as the strings written in the file, so the comparison is of printed digits: a changed digit, or even a
dropped trailing zero ("49.40" -> "49.4"), fails.
"""
import copy
import json
import re
from pathlib import Path

import pytest

from sftnb.report import paper

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "reference" / "paper-ye2025-sft-knowledge.txt"
RESULTS = ROOT / "sftnb" / "resources" / "paper_results.json"

# One printed cell: "70.59%", "92.5", "18456", or Table 2's "1.75 _{0.17}" (mean with its std as subscript).
NUMBER = re.compile(r"(\d+(?:\.\d+)?)%?(?: _\{(\d+(?:\.\d+)?)\})?")
SUBTABLE = re.compile(r"\([a-z]\) ")                                  # "(a) LLaMA-3-70B", "(b) Out-of-Domain ..."
HEADING = re.compile(r"(\d+(?:\.\d+)*|[A-F](?:\.\d+)*) [A-Z]")        # "3.4 Main Results", "C.2 Performance ..."


def printed_json() -> dict:
    """The JSON with every number as the string written in the file."""
    return json.loads(RESULTS.read_text(encoding="utf-8"), parse_float=str, parse_int=str)


def squash(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def lines() -> list[str]:
    if not PAPER.is_file():
        pytest.skip(f"the paper's text is not at {PAPER} (read from beside the repository, never committed)")
    return PAPER.read_text(encoding="utf-8").splitlines()


# ------------------------------------------------------------------------------------ reading the paper's tables
def label(cell: str) -> str:
    r"""A row or column label without its LaTeX: "$\mathcal{D}_{\text{train}-0}^M$" -> "D_train-0"."""
    s = re.sub(r"</?i>|\$", "", cell)
    s = re.sub(r"\\(?:text|mathcal)\{([^{}]*)\}", r"\1", s)          # \text{train} -> train
    s = re.sub(r"\^(?:\{[^{}]*\}|\w)", "", s)                         # drop the ^M / ^{M} superscript
    s = s.replace("{", "").replace("}", "").strip()                   # D_{train}-0 -> D_train-0
    return re.sub(r"^(?:M = |Number of Training Data: )", "", s)      # group rows: a model, a training-set size


def numbers(cell: str) -> list[str] | None:
    """The printed numbers of one cell (a mean and its std for Table 2), or None when the cell is text."""
    m = NUMBER.fullmatch(cell.strip())
    return None if m is None else [g for g in m.groups() if g is not None]


def parse(block: list[str]) -> tuple[list[tuple], list[list[str]]]:
    """(rows, headers) of tab-separated lines.

    rows: (label, printed numbers) for every line whose cells are all numbers, plus (label, ()) for group lines
    such as "Number of Training Data: 240" whose other cells are empty. headers: the labels of column-header lines.
    """
    rows, headers = [], []
    for line in block:
        first, *rest = line.split("\t")
        cells = [c for c in rest if c.strip()]
        parsed = [numbers(c) for c in cells]
        if all(p is not None for p in parsed):
            rows.append((label(first), tuple(n for p in parsed for n in p)))
        else:
            headers.append([label(c) for c in cells])
    return rows, headers


def table_blocks(lines: list[str], number: int) -> dict[str, list[str]]:
    """The lines of Table `number`, keyed by sub-table label ("" when it has none).

    Captions sit below their tables, so walk up from the caption over table lines, sub-table labels and blank
    lines; the first line of prose (or the previous caption) ends the block.
    """
    end = next(i for i, line in enumerate(lines) if line.startswith(f"Table {number}: "))
    start = end
    while start > 0 and ("\t" in lines[start - 1] or SUBTABLE.match(lines[start - 1]) or not lines[start - 1].strip()):
        start -= 1
    blocks, current = {}, []
    for line in lines[start:end]:
        if "\t" in line:
            current.append(line)
        elif SUBTABLE.match(line):                                    # a sub-table's label follows its rows
            blocks[label(line)], current = current, []
    if current:
        blocks[""] = current
    return blocks


# ------------------------------------------------------------------------------- the JSON, as the paper's rows
def count_rows(counts: dict) -> list[tuple]:
    return [("Number", tuple(values)) for values in counts.values()]   # Tables 1, 8: train, test, testood


def count_headers(counts: dict, categories: list) -> list[list[str]]:
    """The header line above each Number row: D_train-0..4, D_test-0..4, D_testood-0..4."""
    return [[f"D_{split}-{c}" for c in categories] for split in counts]


def restore_rows(blocks: dict) -> list[tuple]:
    """Tables 4 and 6: a group row per training-set size, then one row per restore proportion."""
    rows = []
    for scale, b in blocks.items():
        columns = [values for key, values in b.items() if key != "restore"]
        rows.append((scale, ()))
        rows += [(restore, tuple(col[i] for col in columns)) for i, restore in enumerate(b["restore"])]
    return rows


def category_rows(t: dict, skip: str | None = None) -> list[tuple]:
    return [(cat, tuple(values)) for cat, values in t.items() if cat != skip]


def unwrap(rows: list[tuple]) -> list[tuple]:
    """Table 9 is printed wrapped over two Layer/Percentage pairs: join the rows that share a label."""
    joined: dict[str, tuple] = {}
    for name, values in rows:
        joined[name] = joined.get(name, ()) + values
    return list(joined.items())


def compare(expected: list[tuple], printed: list[tuple]) -> list[str]:
    """Every difference between the JSON's rows and the paper's, cell by cell."""
    problems = [f"{len(expected)} rows in the JSON, {len(printed)} in the paper"] * (len(expected) != len(printed))
    for (e_label, e_values), (p_label, p_values) in zip(expected, printed):
        if e_label != p_label or len(e_values) != len(p_values):
            problems.append(f"row {e_label!r} {e_values} in the JSON, row {p_label!r} {p_values} in the paper")
            continue
        problems += [f"row {e_label!r}, column {i}: JSON {e} != paper {p}"
                     for i, (e, p) in enumerate(zip(e_values, p_values)) if e != p]
    return problems


def compare_header(expected: list, printed: list) -> list[str]:
    """Column labels (strategies, modules, layer groups, categories) compared like a row."""
    return compare([("header", tuple(expected))], [("header", tuple(printed))])


def check_table1(t, blocks):
    rows, headers = parse(blocks[""])
    return compare(count_rows(t["counts"]), rows) + compare_header(count_headers(t["counts"], t["categories"]), headers)


def check_table2(t, blocks):
    expected = []
    for model, cats in t.items():
        if model == "n_train":
            continue
        expected.append((model, ()))
        for cat, r in cats.items():
            values = []
            for domain in ("test", "testood"):
                values += [n for pair in zip(r[domain], r[f"{domain}_std"]) for n in pair]
                values += [r[f"Acc_{domain}"], r[f"Acc_{domain}_std"]]
            expected.append((cat, tuple(values)))
    return compare(expected, parse(blocks[""])[0])


def check_table3(t, blocks):
    expected = [("Proportion", tuple(t["proportions"]))]
    for scale, cats in t.items():
        if scale != "proportions":
            expected += [(scale, ())] + category_rows(cats)
    return compare(expected, parse(blocks[""])[0])


def check_table4(t, blocks):
    problems = []
    for domain, by_scale in t.items():
        # (a) is labelled "In-Domain (Acc_test)", (b) "Out-of-Domain (Acc_testood)".
        key = next((k for k in blocks if k.endswith(f"(Acc_{domain})")), None)
        if key is None:
            problems.append(f"no sub-table labelled (Acc_{domain}) among {list(blocks)}")
            continue
        rows, headers = parse(blocks[key])
        categories = [c for c in next(iter(by_scale.values())) if c != "restore"]
        problems += compare(restore_rows(by_scale), rows) + compare_header(categories, headers[0])
    return problems


def check_table5(t, blocks):
    groups = {k: v for k, v in t.items() if k != "restore"}
    columns = [col for metrics in groups.values() for col in metrics.values()]
    rows, headers = parse(blocks[""])
    expected = [(restore, tuple(col[i] for col in columns)) for i, restore in enumerate(t["restore"])]
    metrics = [m for g in groups.values() for m in g]
    return compare(expected, rows) + compare_header([list(groups), metrics], headers)


def check_table6(t, blocks):
    return compare(restore_rows(t), parse(blocks[""])[0])


def check_table7(t, blocks):
    rows, headers = parse(blocks[""])
    return compare(category_rows(t, skip="strategies"), rows) + compare_header(t["strategies"], headers[0])


def check_table8(t, blocks):
    # The text prints the sub-tables in the order (a), (c), (b), (d): find each by its "(x) model" label.
    problems = compare_header(sorted(f"{s['subtable']} {m}" for m, s in t.items()), sorted(blocks))
    for model, sub in t.items():
        rows, headers = parse(blocks.get(f"{sub['subtable']} {model}", []))
        problems += [f"{model}: {p}" for p in compare(count_rows(sub["counts"]), rows)]
        categories = range(len(sub["counts"]["train"]))                         # Table 1's 0..4
        problems += [f"{model}: {p}" for p in compare_header(count_headers(sub["counts"], categories), headers)]
    return problems


def check_table9(t, blocks):
    expected = [("Layer", tuple(t["layers"])), ("Percentage", tuple(t["percentage"]))]
    return compare(expected, unwrap(parse(blocks[""])[0]))


def check_table10(t, blocks):
    rows, headers = parse(blocks[""])
    return compare([("Percentage", tuple(t["percentage"]))], rows) + compare_header(t["modules"], headers[0])


def check_table11(t, blocks):
    rows, headers = parse(blocks[""])
    return compare(category_rows(t, skip="restored_layers"), rows) + compare_header(t["restored_layers"], headers[0])


CHECKS = {name.removeprefix("check_"): check for name, check in globals().items() if name.startswith("check_table")}


def table_mismatches(name: str, tables: dict, lines: list[str]) -> list[str]:
    """Differences between the JSON's `name` ("table3") and the table printed in the paper."""
    return CHECKS[name](tables[name], table_blocks(lines, int(name.removeprefix("table"))))


# ------------------------------------------------------------------------------------------------------ tests
def test_every_transcribed_table_is_checked():
    assert set(printed_json()["tables"]) == set(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS, key=lambda n: int(n.removeprefix("table"))))
def test_table_matches_the_paper(name, lines):
    assert table_mismatches(name, printed_json()["tables"], lines) == []


def test_captions_name_the_model_and_the_training_size(lines):
    tables = printed_json()["tables"]
    caption = {n: next(line for line in lines if line.startswith(f"Table {n}: ")) for n in (1, 2)}
    assert caption[1].endswith(f"refers to {tables['table1']['model']}.")
    assert f"using {tables['table2']['n_train']} data points" in caption[2]


def test_a_changed_digit_is_reported(lines):
    tables = copy.deepcopy(printed_json()["tables"])
    row = tables["table3"]["240"]["D_train-0"]
    original = row[0]
    row[0] = original[:-2] + original[-1] + original[-2]                                       # 70.59 -> 70.95
    problems = table_mismatches("table3", tables, lines)
    assert problems == [f"row 'D_train-0', column 0: JSON {row[0]} != paper {original}"]


def test_a_dropped_trailing_zero_is_reported(lines):
    tables = copy.deepcopy(printed_json()["tables"])
    row = tables["table4"]["testood"]["1920"]["D_train-0"]
    row[0] = str(float(row[0]))                                                                # "49.40" -> "49.4"
    assert len(table_mismatches("table4", tables, lines)) == 1


def number_paths(node, path=()):
    """Paths to every number of a JSON tree read with ordinary floats and ints."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in number_paths(v, path + (k,))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in number_paths(v, path + (i,))]
    return [path] if isinstance(node, (int, float)) else []


def test_every_number_is_compared(lines):
    """Changing the last digit of any one number of any table makes that table's check fail."""
    tables = printed_json()["tables"]
    unchecked = []
    for path in number_paths(json.loads(RESULTS.read_text(encoding="utf-8"))["tables"]):
        if path[-1] == "n_train":                                    # Table 2's caption: checked above
            continue
        mutated = copy.deepcopy(tables)
        *parents, leaf = path
        node = mutated
        for key in parents:
            node = node[key]
        node[leaf] = node[leaf][:-1] + str((int(node[leaf][-1]) + 1) % 10)
        if not table_mismatches(path[0], mutated, lines):
            unchecked.append(path)
    assert unchecked == []


CLAIMS = printed_json()["claims"]


@pytest.mark.parametrize("key", sorted(CLAIMS))
def test_claim_is_verbatim_in_its_section(key, lines):
    text, section = squash(CLAIMS[key]["text"]), CLAIMS[key]["section"]
    assert text in squash("\n".join(lines))
    heading = None
    for line in lines:                                               # the last heading above the claim's first words
        if HEADING.match(line):
            heading = line.split(" ")[0]
        if text[:60] in squash(line):
            break
    assert section.removeprefix("§").removeprefix("App. ") == heading


# --------------------------------------------------------------------------------------------------- the loader
def test_loader_reads_the_same_numbers():
    as_floats = json.loads(RESULTS.read_text(encoding="utf-8"))
    assert paper.paper_results() == as_floats
    assert paper.claim("phenomenon_1") == as_floats["claims"]["phenomenon_1"]["text"]
    with pytest.raises(KeyError, match="phenomenon_1"):
        paper.claim("no such claim")


def test_loader_tables_have_the_papers_layout():
    t = paper.paper_results()["tables"]
    assert paper.table1().shape == (3, 5)
    for model in ("LLaMA-3-8B", "LLaMA-3-70B"):
        assert paper.table2(model).shape == paper.table2(model, std=True).shape == (5, 12)
    for model in t["table8"]:
        assert paper.table8(model).shape == (3, 5)
    assert paper.table3().shape == (10, 7)
    assert paper.table4("test").shape == paper.table4("testood").shape == (16, 5)
    assert paper.table6().shape == (6, 5)
    assert paper.table7().shape == (2, 5)
    assert paper.table11().shape == (5, 8)
    # A cell of each helper, addressed by the paper's labels, is the JSON's number.
    assert paper.table1().loc["D_testood", 4] == t["table1"]["counts"]["testood"][4]
    std = t["table2"]["LLaMA-3-70B"]["D_train-2"]["Acc_testood_std"]
    assert paper.table2("LLaMA-3-70B", std=True).loc["D_train-2", "Acc_testood"] == std
    assert paper.table3().loc[(240, "D_train-0"), "1%"] == t["table3"]["240"]["D_train-0"][0]
    assert paper.table4("testood").loc[(1920, "20%"), "D_train-3"] == t["table4"]["testood"]["1920"]["D_train-3"][5]
    assert paper.table6().loc[(240, "20%"), "D_train-3"] == t["table6"]["240"]["D_train-3"][2]
    assert paper.table7().loc["Acc_testood", "LoRA"] == t["table7"]["Acc_testood"][3]
    assert paper.table11().loc["D_train-4", "28-31"] == t["table11"]["D_train-4"][7]

