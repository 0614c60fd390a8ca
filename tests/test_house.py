"""The house rules (issue 13), checked on the source: one way through the modules, no private names across them,
argument parsing only in the CLI, modules a newcomer can read in one sitting."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sftnb"
MAX_LINES = 460


def _name(path: Path) -> str:
    """A module's dotted name inside the package: "cli", "report.writer", "sections" (a package's __init__)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported module of the package, names)] for every relative import (function-level included),
    with ``from . import x`` resolved to the module x where x is one."""
    out = {}
    modules = {_name(p) for p in PACKAGE.rglob("*.py")}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = _name(path).split(".") if path.stem == "__init__" else _name(path).split(".")[:-1]
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                base = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                target = ".".join(base)
                names = [a.name for a in node.names]
                subs = [f"{target}.{n}".lstrip(".") for n in names if f"{target}.{n}".lstrip(".") in modules]
                if subs:                                        # from . import x / from .report import paper
                    found += [(m, []) for m in subs]
                if not subs or len(subs) < len(names):
                    found.append((target, [n for n in names if f"{target}.{n}".lstrip(".") not in modules]))
        out[_name(path)] = found
    return out


def test_no_import_cycle():
    graph = {m: sorted({t for t, _ in deps if t != m}) for m, deps in _imports().items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph.get(m, []):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, t]))
            if not state.get(t):
                visit(t, stack + [m])
        state[m] = 2

    for m in graph:
        if not state.get(m):
            visit(m, [])


def test_no_private_name_crosses_a_module_boundary():
    bad = [(m, t, n) for m, deps in _imports().items() for t, names in deps for n in names if n.startswith("_")]
    assert not bad, bad


def test_argparse_only_in_the_cli_and_modules_stay_small():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.stem != "cli":
            assert "argparse" not in text, path.name
        limit = 400 if path.parent != PACKAGE else MAX_LINES       # the subpackages keep the house's 400
        assert len(text.splitlines()) <= limit, f"{path.name}: {len(text.splitlines())} lines"


def test_the_report_never_imports_a_paper_section():
    """One way: sftnb.sections imports sftnb.report; the report takes the sections as arguments."""
    bad = [(m, t) for m, deps in _imports().items() if m.split(".")[0] == "report" for t, _ in deps
           if t.split(".")[0] == "sections"]
    assert not bad, bad
    sections = [m for m in _imports() if m.startswith("sections")]
    assert "sections.restoration" in sections and "report.writer" in _imports()
