"""Imports run one way across mnist_lit: the core a learner reads imports nothing operational, each
subpackage imports only its own layer and those below it, and the commands sit on top. No cycles,
function-level imports included."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mnist_lit"

# bottom to top; a module may import its own layer and the layers before it, never one after it
LAYERS = [
    {"mnist_lit", "mnist_lit.errors", "mnist_lit.files", "mnist_lit.lightning_compat"},
    {"mnist_lit.data", "mnist_lit.digits", "mnist_lit.model", "mnist_lit.module", "mnist_lit.augment",
     "mnist_lit.scoring", "mnist_lit.distill"},
    {"mnist_lit.config"},
    {"mnist_lit.reporting"},
    {"mnist_lit.speed"},
    {"mnist_lit.runs"},
    {"mnist_lit.search"},
    {"mnist_lit.inference"},
    {"mnist_lit.cli"},
    {"mnist_lit.train", "mnist_lit.evaluate", "mnist_lit.predict", "mnist_lit.export", "mnist_lit.summarize",
     "mnist_lit.confirm"},
]
CORE = LAYERS[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The mnist_lit modules a file imports anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mnist_lit":
            for alias in node.names:  # `from mnist_lit.speed import grouped` imports mnist_lit.speed.grouped
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if module_path(candidate) else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mnist_lit")
    return found - {module_name(path)}


def module_path(name: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> int:
    """The layer of a module: its own entry, or its subpackage's."""
    for i, layer in enumerate(LAYERS):
        if name in layer or any(name.startswith(f"{entry}.") for entry in layer if entry != "mnist_lit"):
            return i
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS in tests/test_imports.py")


def wrong_way(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{src} imports {dst}" for src, targets in edges.items() for dst in targets
                  if layer_of(dst) > layer_of(src))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer_and_exists():
    edges = graph()
    assert "mnist_lit.module" in edges and "mnist_lit.speed.grouped" in edges
    for name in edges:
        layer_of(name)
    for targets in edges.values():
        for name in targets:
            assert module_path(name), f"{name} is imported but is no module of mnist_lit"


def test_no_import_cycles():
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()))}"


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_run_one_way():
    assert wrong_way(graph()) == []


def test_the_layer_check_finds_an_import_the_wrong_way():
    edges = {"mnist_lit.module": {"mnist_lit.speed.grouped"}, "mnist_lit.runs.folders": {"mnist_lit.cli.entry"},
             "mnist_lit.train": {"mnist_lit.module"}}
    assert wrong_way(edges) == ["mnist_lit.module imports mnist_lit.speed.grouped",
                                "mnist_lit.runs.folders imports mnist_lit.cli.entry"]


def test_the_core_imports_nothing_operational():
    edges = graph()
    for name in CORE:
        if name in edges:
            assert edges[name] <= CORE | LAYERS[0], f"{name} imports {edges[name] - CORE - LAYERS[0]}"
