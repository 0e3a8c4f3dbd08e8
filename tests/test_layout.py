"""How the package is laid out: which of its modules import which."""

import ast
import itertools
from pathlib import Path

import hf_rgtg

PACKAGE_DIR = Path(hf_rgtg.__file__).parent


def module_name(path):
    """`hf_rgtg/cli/generate.py` -> `hf_rgtg.cli.generate`; a package's `__init__.py` is the package."""
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules():
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_of(name, path, modules):
    """The package's modules that `name` imports, each mapped to `(line, lazy)`: `lazy` when every import of it
    sits inside a function. Every `import` statement counts: top-level, inside functions, under `TYPE_CHECKING`.
    (Imports by `importlib.import_module`, which `hf_rgtg/__init__.py` and `hf_rgtg/cli/__init__.py` use to load
    a module on first use, name the module in a string and are not seen.)"""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = {}

    def add(target, line, lazy):
        if target in modules and target != name and (target not in found or found[target][1] > lazy):
            found[target] = (line, lazy)

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            inside = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child.lineno, inside)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                source = ".".join([*base, *([child.module] if child.module else [])])
                for alias in child.names:  # `from . import defaults` imports the module hf_rgtg.defaults
                    submodule = f"{source}.{alias.name}"
                    add(submodule if submodule in modules else source, child.lineno, inside)
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def import_graph():
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph):
    """Every cycle that the depth-first walk from each module closes, as lists of modules (first one repeated)."""
    found, done = [], set()

    def walk(name, path):
        for target in sorted(graph[name]):
            if target in path:
                found.append([*path[path.index(target) :], target])
            elif target not in done:
                walk(target, [*path, target])
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            walk(name, [name])
    return found


def describe(cycle, graph):
    steps = []
    for source, target in itertools.pairwise(cycle):
        line, lazy = graph[source][target]
        steps.append(f"{source} -> {target} (line {line}{', lazy: inside a function' if lazy else ''})")
    return "; ".join(steps)


def test_no_import_cycles_among_the_package_modules():
    graph = import_graph()
    assert "hf_rgtg.cli.generate" in graph and "hf_rgtg.training" in graph["hf_rgtg.cli.train"]
    found = [describe(cycle, graph) for cycle in cycles(graph)]
    assert found == [], "import cycles:\n" + "\n".join(found)


def test_the_cycle_check_sees_lazy_and_type_checking_imports(tmp_path):
    # a imports b at the top, b imports c inside a function, c imports a for type checking only.
    files = {
        "a.py": "from . import b\n",
        "b.py": "def f():\n    from .c import thing\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n",
    }
    modules = {}
    for file, text in files.items():
        (tmp_path / file).write_text(text)
        modules[f"pkg.{file[:-3]}"] = tmp_path / file
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert graph == {
        "pkg.a": {"pkg.b": (1, False)},
        "pkg.b": {"pkg.c": (2, True)},
        "pkg.c": {"pkg.a": (3, False)},
    }
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert "pkg.b -> pkg.c (line 2, lazy: inside a function)" in describe(cycles(graph)[0], graph)
