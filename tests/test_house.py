"""The house rules (issues 13 and 24), checked on the source: one way through the modules and the subpackages, no
private names across modules, argument parsing only in the CLI, one model per object, modules a newcomer can read
in one sitting."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sftnb"
MAX_LINES = 400
# the floors, top to bottom: a module imports from its own floor or a lower one, never from a higher one. The
# package's own modules (the experiment, the run, the grid, the analyses, the CLI) stand above them all.
FLOORS = ("sections", "report", "restoration", "lm", "data", "infra")


def _modules() -> dict[str, Path]:
    """dotted name under sftnb ("lm.models", "cli", "report" for report/__init__.py) -> file"""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts) or "__init__"] = path
    return out


def _target(module: str, path: Path, node: ast.ImportFrom) -> str:
    package = module.split(".") if path.name == "__init__.py" and module != "__init__" else module.split(".")[:-1]
    if path.name == "__init__.py" and module == "__init__":
        package = []
    base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
    return ".".join(base + (node.module.split(".") if node.module else []))


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported sftnb module, names)] for every relative import (function-level included); ``from . import
    x`` names the module x where x is one."""
    mods = _modules()
    out = {}
    for name, path in mods.items():
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                target = _target(name, path, node)
                subs = [f"{target}.{a.name}".lstrip(".") for a in node.names]
                if node.module is None or any(s in mods for s in subs):
                    found += [(s if s in mods else target, [] if s in mods else [a.name])
                              for s, a in zip(subs, node.names)]
                else:
                    found.append((target, [a.name for a in node.names]))
        out[name] = [(t or "__init__", n) for t, n in found]
    return out


def _floor(module: str) -> int:
    top = module.split(".")[0]
    return FLOORS.index(top) if top in FLOORS else -1          # -1: the package's own modules, above every floor


def _acyclic(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, t]))
            if not state.get(t):
                visit(t, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [])


def test_no_import_cycle_between_modules():
    _acyclic({m: {t for t, _ in deps if t != m} for m, deps in _imports().items()})


def test_subpackages_import_one_way():
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} >= set(FLOORS)
    upward = [(m, t) for m, deps in _imports().items() for t, _ in deps
              if _floor(m) >= 0 and _floor(t) < _floor(m) and t.split(".")[0] != m.split(".")[0]]
    assert not upward, f"imports from a higher floor: {upward}"


def test_no_private_name_crosses_a_module_boundary():
    bad = [(m, t, n) for m, deps in _imports().items() for t, names in deps for n in names
           if n.startswith("_") and t != m]
    assert not bad, bad


def test_no_private_attribute_is_reached_from_another_module():
    """``x._name`` only on ``self`` / ``cls``, and only for a name the module itself defines (a method or an
    attribute it assigns): no reaching into another object's privates, not even through a mixin."""
    bad = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        defined |= {t.attr for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Attribute)}
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
                owner = n.value.id if isinstance(n.value, ast.Name) else None
                if owner in ("self", "cls") and n.attr in defined:
                    continue
                bad.append(f"{name}:{n.lineno} .{n.attr}")
    assert not bad, bad


def test_argparse_only_in_the_cli_and_modules_stay_small():
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if name != "cli":
            assert "argparse" not in text, path.name
        assert len(text.splitlines()) <= MAX_LINES, f"{name}: {len(text.splitlines())} lines"


def test_one_model_per_object_no_optional_model_argument():
    """A model's work is a ``ModelRun`` bound to it; nothing takes ``mc: ModelConfig | None = None`` and falls back
    to the main model."""
    found = []
    for name, path in _modules().items():
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = fn.args.args + fn.args.kwonlyargs
                defaults = [None] * (len(fn.args.args) - len(fn.args.defaults)) + list(fn.args.defaults) \
                    + list(fn.args.kw_defaults)
                for a, d in zip(args, defaults):
                    optional = isinstance(d, ast.Constant) and d.value is None
                    if optional and (a.arg == "mc" or "ModelConfig" in ast.unparse(a.annotation or ast.Constant(""))):
                        found.append(f"{name}.{fn.name}({a.arg})")
    assert len(found) <= 3, found
