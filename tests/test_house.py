"""The house rules (issue 13), checked on the source: one way through the modules, no private names across them,
argument parsing only in the CLI, modules a newcomer can read in one sitting."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sftnb"
MAX_LINES = 460


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported sibling module, names)] for every ``from .x import ...`` (function-level included)."""
    out = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.append((node.module.split(".")[0], [a.name for a in node.names]))
                else:                                           # from . import x
                    found += [(a.name, []) for a in node.names]
        out[path.stem] = found
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
    for path in PACKAGE.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.stem != "cli":
            assert "argparse" not in text, path.name
        assert len(text.splitlines()) <= MAX_LINES, f"{path.name}: {len(text.splitlines())} lines"
