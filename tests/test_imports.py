"""Imports run one way across mnist_lit: data -> model -> module -> train, with evaluate/predict/export on
top; drawing code imports nothing of the package above the data. No cycles, function-level imports included."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mnist_lit"


def imports_of(path: Path) -> set[str]:
    """The mnist_lit modules a file imports anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnist_lit"):
            names = [node.module] if node.module != "mnist_lit" else [f"mnist_lit.{a.name}" for a in node.names]
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mnist_lit."))
    return {name.split(".")[1] for name in found if name.count(".") >= 1} - {path.stem}


def graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    return {p.stem: imports_of(p) & modules for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


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


def test_no_import_cycles():
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()))}"


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_run_one_way():
    edges = graph()
    # the chain of the recipe: nothing imports a module later in it
    chain = ["data", "model", "module", "callbacks", "fast", "train"]
    for i, name in enumerate(chain):
        assert not edges[name] & set(chain[i + 1:]), f"{name} imports {edges[name] & set(chain[i + 1:])}"
    # drawing and scoring import nothing of the package but errors and data
    for name in ("plots", "scoring"):
        assert edges[name] <= {"errors", "data"}, f"{name} imports {edges[name]}"
    # the commands on top are imported by nothing below them
    top = {"evaluate", "predict", "export", "summarize", "train", "confirm"}  # confirm: [optuna branch]
    for name, targets in edges.items():
        if name not in top:
            assert not targets & top, f"{name} imports the command {targets & top}"
