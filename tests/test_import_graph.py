"""No import circle between any two focal_det modules (docs/ARCHITECTURE.md, "Which imports
which": the library's modules import in one direction).

The graph is read from the source (the AST of every ``focal_det/**/*.py``), one node per
module (a package is its ``__init__.py``):

- ``import a.b`` and ``from a import b`` where ``a.b`` is a module: an edge to ``a.b``;
- ``from a import name`` where ``name`` is not a module: an edge to ``a``;
- relative imports are resolved against the importing module's package;
- an import of a package that contains the importing module (``from . import x``,
  ``from focal_det import cli`` inside focal_det) adds no edge to that package: Python has it
  in ``sys.modules`` already while the module loads, so it runs nothing (its submodules, named
  by the import, still get their edges).

Imports inside functions and methods are included, not only the top-level ones: a deferred
import is how a circle hides (issue 39's ``focal_det.lazy_run`` imported
``focal_det.inference`` inside ``run_config`` while ``focal_det.inference`` imported
``focal_det.lazy_run`` at its top), and it still couples the two modules both ways. Nothing is
excluded (the library has no ``if TYPE_CHECKING:`` blocks; one would be counted too).
"""
import ast
import os
from typing import Dict, List, Set

import focal_det

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(focal_det.__file__)))


def module_files(package_dir: str) -> Dict[str, str]:
    """``{dotted module name: path}`` of every ``.py`` file under ``package_dir``."""
    out = {}
    base = os.path.dirname(package_dir)
    for folder, _, files in os.walk(package_dir):
        for f in files:
            if f.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, f), base)[:-3].split(os.sep)
                out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = \
                    os.path.join(folder, f)
    return out


def imports_of(name: str, path: str, modules: Set[str]) -> Set[str]:
    """The modules of ``modules`` that module ``name`` (file ``path``) imports (see the module
    docstring for the rules)."""
    is_package = path.endswith("__init__.py")
    package = name.split(".") if is_package else name.split(".")[:-1]

    def edge(target: str, out: Set[str]) -> None:
        if target in modules and target != name and not name.startswith(target + "."):
            out.add(target)

    out: Set[str] = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                edge(alias.name, out)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    edge(f"{target}.{alias.name}", out)
                else:
                    edge(target, out)
    return out


def import_graph(package_dir: str) -> Dict[str, Set[str]]:
    files = module_files(package_dir)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_between_any_two_focal_det_modules():
    graph = import_graph(os.path.join(ROOT, "focal_det"))
    assert len(graph) > 50 and graph["focal_det.inference"] >= {"focal_det.lazy_run"}
    assert circles(graph) == []


def _write(root, files: Dict[str, str]) -> str:
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return os.path.join(root, "pkg")


def test_the_graph_sees_a_deferred_relative_import_circle(tmp_path):
    # issue 39's shape: a top-level relative import one way, an import inside a function back
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/run.py": "def f():\n    from .infer import resize\n    return resize\n",
        "pkg/infer.py": "from .run import f\n\ndef resize():\n    pass\n",
    })
    assert circles(import_graph(pkg)) == [["pkg.infer", "pkg.run"]]


def test_the_graph_sees_submodule_imports_and_longer_circles(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from . import a\n",  # its own package: no edge back to pkg
        "pkg/a.py": "from pkg.sub import b\n",  # b is a submodule: an edge to pkg.sub.b
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "import pkg.c\n",
        "pkg/c.py": "from . import a\n",
        "pkg/d.py": "from .sub import b\n",  # into the circle, not part of it
    })
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg"] == {"pkg.a"}
    assert graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.sub.b"}
    assert circles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_a_package_importing_its_own_modules_is_no_circle(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from .a import thing\nfrom . import b\n",
        "pkg/a.py": "from pkg import b\nthing = 1\n",  # pkg: an ancestor, no edge
        "pkg/b.py": "import pkg\n\ndef g():\n    from . import c\n",
        "pkg/c.py": "X = 2\n",
    })
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.a", "pkg.b"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"},
                     "pkg.c": set()}
    assert circles(graph) == []
