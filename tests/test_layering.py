"""The import layers of konductor, checked from the source (see docs/architecture.md).

Dependencies point downward only:

    integrations / cli / testing                      (6)
    sync facade, decorators, default clients, seam    (5)
    client and its configuration                      (4)
    primitives (their methods and pure state)         (3)
    engine: hub, renewal, grants, waiting, parsing    (2)
    store: protocol, backends, schema, CRDs           (1)
    base: errors, limits, names, backoff, lifecycle   (0)

A module may import its own layer and the ones below. Adapters import only
the public API (``konductor``, ``konductor.store``), the one seam made for them
(``konductor._integration``) and their own private package; they never import
each other. The CLI does not read the stored JSON itself: it imports no
``_*_state`` module. Every import counts, also those inside functions, except
those under ``if TYPE_CHECKING:`` (annotations only: they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "konductor"

LAYERS: list[tuple[str, set[str], tuple[str, ...]]] = [
    # (layer, modules, module-name prefixes)
    (
        "base",
        {
            "konductor._errors",
            "konductor._limits",
            "konductor._names",
            "konductor._backoff",
            "konductor._lifecycle",
            "konductor._typing",
            "konductor._observe",  # the observability seam every layer reports to
        },
        (),
    ),
    (
        "store",
        {"konductor.store", "konductor._manifests", "konductor.manifests"},
        ("konductor._store", "konductor._kube"),
    ),
    ("engine", set(), ("konductor._engine",)),
    ("primitives", {"konductor._primitives"}, ("konductor._primitives.",)),
    ("client", {"konductor._client", "konductor._config"}, ("konductor._admin",)),
    (
        "sync/decorators",
        {
            "konductor",
            "konductor._sync",
            "konductor._decorators",
            "konductor._defaults",
            "konductor._integration",
        },
        (),
    ),
    (
        "integrations/cli",
        {"konductor.__main__", "konductor.metrics", "konductor.tracing"},
        ("konductor.integrations", "konductor.cli", "konductor.testing"),
    ),
]

#: What an adapter may import from konductor besides its own private package.
ADAPTER_MAY_IMPORT = {"konductor", "konductor.store", "konductor._integration"}

#: The CLI's imports of ``_*_state`` modules: none since the CLI reads and
#: writes through the core's admin API (``konductor._admin``). Do not add to it.
CLI_STATE_IMPORTS_LEFT: set[tuple[str, str]] = set()


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _graph() -> dict[str, set[str]]:
    modules = {_module_of(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(inner)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and _is_type_checking(block.test)
            for stmt in block.body
            for inner in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue  # under `if TYPE_CHECKING:`: for annotations, never run
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == "konductor")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] != "konductor":
                    continue
                # ``from konductor._engine import _validate`` counts as an import
                # of the submodule; ``from konductor import Client`` of the package.
                submodules = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                deps.update(submodules)
                if len(submodules) < len(node.names):
                    deps.add(node.module)
        graph[name] = deps - {name}
    return graph


def _layer(module: str) -> int:
    found = [
        i
        for i, (_, names, prefixes) in enumerate(LAYERS)
        if module in names or module.startswith(prefixes)
    ]
    # Exact names win over prefixes (the package konductor._primitives itself).
    exact = [i for i, (_, names, _) in enumerate(LAYERS) if module in names]
    assert found, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return exact[0] if exact else found[0]


GRAPH = _graph()


def test_the_graph_is_read_from_the_source() -> None:
    assert "konductor._store._watch" in GRAPH["konductor._store._memory"]
    assert "konductor._engine._validate" in GRAPH["konductor._decorators"]
    assert len(GRAPH) > 60


def test_every_import_points_to_the_same_layer_or_below() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})"
        for module, deps in sorted(GRAPH.items())
        for dep in sorted(deps)
        if _layer(dep) > _layer(module)
    ]
    assert upward == []


def test_no_module_imports_itself_back() -> None:
    """No import cycle between konductor's modules (the package itself aside: its
    ``__init__`` re-exports, and adapters import it)."""
    graph = {m: {d for d in deps if d != "konductor"} for m, deps in GRAPH.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def _adapter(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 3 or parts[1] != "integrations":
        return None
    return parts[2].lstrip("_")


@pytest.mark.parametrize(
    "module", sorted(m for m in GRAPH if _adapter(m) is not None), ids=lambda m: m
)
def test_an_adapter_uses_the_public_api_the_seam_and_its_own_package_only(module: str) -> None:
    own = _adapter(module)
    foreign = sorted(
        dep for dep in GRAPH[module] if dep not in ADAPTER_MAY_IMPORT and _adapter(dep) != own
    )
    assert foreign == [], f"{module} imports {foreign}; add what it needs to konductor._integration"


def test_the_cli_imports_no_state_module_beyond_the_listed_ones() -> None:
    imports = {
        (module, dep)
        for module, deps in GRAPH.items()
        if module.startswith("konductor.cli")
        for dep in deps
        if dep.rsplit(".", 1)[-1].startswith("_") and dep.endswith("_state")
    }
    assert imports - CLI_STATE_IMPORTS_LEFT == set()
    # An entry the CLI no longer needs must go, so the list only shrinks.
    assert CLI_STATE_IMPORTS_LEFT - imports == set()
