"""How the package is laid out: which of its modules import which."""

import ast
import itertools
import re
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


# ---------------------------------------------------------------------------------------------------------------
# The layers of docs/architecture.md, who reads the reward model's configuration, and function length

ARCHITECTURE_DOC = PACKAGE_DIR.parent / "docs" / "architecture.md"


def documented_layers():
    """`{module or package: layer}` from the table under "## Layers" in docs/architecture.md."""
    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].isdigit():
            for module in cells[1].replace("\\", "").split(","):
                layers[module.strip()] = int(cells[0])
    return layers


def layer_of(name, layers):
    """The documented layer of `hf_rgtg.x.y`: that of `x.y`, else of its package `x`; the package itself is
    `hf_rgtg`."""
    short = name.removeprefix("hf_rgtg.") if name != "hf_rgtg" else "hf_rgtg"
    while short not in layers and "." in short:
        short = short.rsplit(".", 1)[0]
    return layers.get(short)


def same_package(a, b):
    top = lambda name: name.split(".")[:2]  # noqa: E731
    return top(a) == top(b) and a != "hf_rgtg" and b != "hf_rgtg"


def test_every_module_has_a_documented_layer_and_imports_only_below_it():
    layers = documented_layers()
    graph = import_graph()
    undocumented = sorted(name for name in graph if layer_of(name, layers) is None)
    assert undocumented == [], f"modules missing from the layers of docs/architecture.md: {undocumented}"
    climbing = [
        f"{source} (layer {layer_of(source, layers)}) imports {target} (layer {layer_of(target, layers)}), line "
        f"{line}"
        for source, targets in graph.items()
        for target, (line, _) in targets.items()
        if not same_package(source, target) and layer_of(target, layers) >= layer_of(source, layers)
    ]
    assert climbing == [], "imports that climb the layers:\n" + "\n".join(climbing)


#: Where the reward model's configuration may be read: the scorers (the seam), the model and its loaders, the
#: defaults that build one, the configuration itself, and the model card written from it.
READS_RM_CONFIG = ("scoring/", "modeling.py", "auto.py", "defaults.py", "configuration.py", "hub.py")
RM_CONFIG_READ = re.compile(
    r"\.text_config\b|\bconfig\.(head_layer|head_hidden_size|head_bias|training_summary)\b|reward_model\.config\b"
)


def test_only_the_scorers_and_the_model_read_the_reward_model_configuration():
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        if relative.startswith(READS_RM_CONFIG):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if RM_CONFIG_READ.search(line) and not line.lstrip().startswith((">>>", "...")):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert found == [], "the reward model's configuration read outside the seam:\n" + "\n".join(found)
    assert RM_CONFIG_READ.search("rm.config.text_config.vocab_size") and RM_CONFIG_READ.search(
        "config.head_layer"
    )
    assert not RM_CONFIG_READ.search("script.head_layer")


MAX_FUNCTION_LINES = 60
#: A docstring that says why its function is longer than that contains this phrase.
LONG_FUNCTION_REASON = re.compile(r"\bits length is\b|\b(is|are) long\b|\blong because\b", re.I)


def long_functions(root):
    """`(path:line name, code lines)` of every function whose body, docstring excluded, has more than
    `MAX_FUNCTION_LINES` lines and whose docstring does not say why."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            docstring = ast.get_docstring(node) or ""
            first = node.body[1] if docstring and len(node.body) > 1 else node.body[0]
            lines = node.end_lineno - first.lineno + 1
            if lines > MAX_FUNCTION_LINES and not LONG_FUNCTION_REASON.search(docstring):
                found.append((f"{path.relative_to(root.parent)}:{node.lineno} {node.name}", lines))
    return found


def test_no_function_is_longer_than_sixty_lines_unless_its_docstring_says_why(tmp_path):
    assert long_functions(PACKAGE_DIR) == []
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        f'def f():\n    """Short."""\n{body}\n\n\ndef g():\n    """It is long because it has to be.\n    """\n{body}\n'
    )
    assert long_functions(tmp_path / "pkg") == [("pkg/m.py:1 f", MAX_FUNCTION_LINES + 1)]
