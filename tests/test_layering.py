"""
The package's layers point one way, with no import cycles (issue 24)::

    presets -> formats -> priors -> models -> guides -> rank -> infer -> compact
            -> plots / runs / report / cli / lightning

The readout (``rank``) sits below inference: it reads a guide and needs no inference, and
training's rank search and the closed-form start cut the model with it.

A module may import its own layer and the layers before it, never one after it. ``data/`` is a
side utility: it may read the presets and the formats, and only the top layer imports it (the
models read the paper's numbers from :mod:`tensorbayes.presets`, not from the data generator).
``tensorbayes/__init__.py`` is the facade: its own imports are not checked, and no module of the
package may import it (it sits above everything).

The imports are read with :mod:`ast` from every module file, at any depth (those inside
functions count: a late import hides a cycle, it does not remove it), relative ones resolved.
"""

import ast
import pathlib

import pytest

PACKAGE = "tensorbayes"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

#: The layers, lowest first.
LAYERS = ("presets", "formats", "priors", "models", "guides", "rank", "infer", "compact", "top", "facade")
RANK = {layer: i for i, layer in enumerate(LAYERS)}

#: Layers ``data/`` may import.
DATA_MAY_IMPORT = {"presets", "formats"}

#: Module files outside a subpackage, by layer.
MODULE_LAYERS = {
    "tensorbayes": "facade",
    "tensorbayes.presets": "presets",
    "tensorbayes.util": "presets",
    "tensorbayes.checks": "presets",
    "tensorbayes.priors": "priors",
    "tensorbayes.rank": "rank",
    "tensorbayes.compact": "compact",
    "tensorbayes.plots": "top",
    "tensorbayes.runs": "top",
    "tensorbayes.report": "top",
    "tensorbayes.cli": "top",
    "tensorbayes.lightning": "top",
}

#: Subpackages: every module in them is in the layer.
PACKAGE_LAYERS = {
    "tensorbayes.formats": "formats",
    "tensorbayes.data": "data",
    "tensorbayes.models": "models",
    "tensorbayes.guides": "guides",
    "tensorbayes.infer": "infer",
}


def _module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    """``{module name: (path, is_package)}`` of every module file of the package."""
    return {_module_name(p): (p, p.name == "__init__.py") for p in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()


def layer_of(module):
    if module in MODULE_LAYERS:
        return MODULE_LAYERS[module]
    for package, layer in PACKAGE_LAYERS.items():
        if module == package or module.startswith(package + "."):
            return layer
    raise AssertionError(f"{module} is in no layer: add it to MODULE_LAYERS or PACKAGE_LAYERS in {__file__}")


def may_import(importer, imported):
    """Whether a module of layer ``importer`` may import one of layer ``imported``."""
    if importer == imported:
        return True
    if imported == "data":
        return importer == "top"
    if importer == "data":
        return imported in DATA_MAY_IMPORT
    return RANK[imported] < RANK[importer]


def _resolve(module, is_package, node):
    """The package modules an import node names (a ``from`` import of a submodule names it)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        base = ".".join(base + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != PACKAGE:
        return []
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.append(sub if sub in MODULES else base)
    return found


def _known(name):
    """The module an imported name is: itself, or the longest known module it starts with."""
    while name not in MODULES:
        assert "." in name, f"{name} is no module of the package"
        name = name.rsplit(".", 1)[0]
    return name


def imports(late_only=False):
    """``{module: {imported module: line}}`` (imports inside functions only when ``late_only``)."""
    graph = {}
    for module, (path, is_package) in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = ast.walk(tree)
        if late_only:
            nodes = (
                node
                for fn in ast.walk(tree)
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                for node in ast.walk(fn)
            )
        edges = graph.setdefault(module, {})
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _resolve(module, is_package, node):
                    target = _known(name)
                    if target != module:
                        edges.setdefault(target, node.lineno)
    return graph


def find_cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def upward_imports(graph):
    """``(importer, imported, line, importer's layer, imported's layer)`` of every forbidden import."""
    bad = []
    for a, edges in sorted(graph.items()):
        if a == PACKAGE:  # the facade's own imports are not checked
            continue
        for b, line in sorted(edges.items()):
            if not may_import(layer_of(a), layer_of(b)):
                bad.append((a, b, line, layer_of(a), layer_of(b)))
    return bad


def test_every_module_is_in_a_layer():
    for module in MODULES:
        assert layer_of(module) in RANK or layer_of(module) == "data"


def test_no_import_cycles():
    cycles = find_cycles(imports())
    assert cycles == [], f"import cycles between modules: {cycles}"


def test_no_module_imports_from_a_layer_above_its_own():
    graph = imports()
    bad = upward_imports(graph)
    assert bad == [], "upward imports:\n" + "\n".join(
        f"  {a} (line {line}, {la}) imports {b} ({lb})" for a, b, line, la, lb in bad
    )


def test_package_modules_import_each_other_at_the_top_of_the_file():
    late = []
    for a, edges in sorted(imports(late_only=True).items()):
        path = MODULES[a][0].relative_to(ROOT.parent).as_posix()
        if a == PACKAGE:
            continue
        late += [
            f"  {path}:{line} imports {b} inside a function" for b, line in sorted(edges.items(), key=lambda e: e[1])
        ]
    assert late == [], "late imports of the package (move them to the top; a cycle they hide is a bug):\n" + "\n".join(
        late
    )


@pytest.mark.parametrize(
    "importer, imported, allowed",
    [
        ("models", "formats", True),
        ("models", "models", True),
        ("formats", "models", False),
        ("infer", "rank", True),
        ("rank", "infer", False),
        ("infer", "compact", False),
        ("compact", "infer", True),
        ("models", "data", False),
        ("top", "data", True),
        ("data", "presets", True),
        ("data", "models", False),
        ("top", "facade", False),
    ],
)
def test_the_layer_rule(importer, imported, allowed):
    assert may_import(importer, imported) is allowed


def test_the_checks_catch_a_bad_import():
    """A forbidden import and a cycle put into a copy of the graph are found."""
    graph = {a: dict(edges) for a, edges in imports().items()}
    graph["tensorbayes.formats.tt"]["tensorbayes.models.layers"] = 1  # formats -> models, and a cycle
    assert ("tensorbayes.formats.tt", "tensorbayes.models.layers", 1, "formats", "models") in upward_imports(graph)
    assert any("tensorbayes.formats.tt" in c and "tensorbayes.models.layers" in c for c in find_cycles(graph))


def test_no_module_imports_a_private_name_of_another():
    """A name with a leading underscore is its module's own: no other module of the package
    imports it (a helper two modules share is public, or lives in a module they both read)."""
    private = []
    for module, (path, is_package) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and _resolve(module, is_package, node):
                private += [f"  {module}:{node.lineno} imports {a.name}" for a in node.names if a.name.startswith("_")]
    assert private == [], "private names imported across modules:\n" + "\n".join(private)
