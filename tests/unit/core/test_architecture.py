"""The package's layers: data flows one way, and the Dagster side stays out of the engine.

core -> data -> teacher -> student -> serving -> stages -> orchestration -> app. A module may
import its own layer and the layers to its left, never one to its right; only orchestration and
app import Dagster; assets/ imports only stages and orchestration; definitions.py is imported by
app alone. Lazy imports inside functions count too.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "influcoder_dagster"
LAYERS = ["core", "data", "teacher", "student", "serving", "stages", "orchestration", "app"]


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "influcoder_dagster" else None


def test_every_engine_module_sits_in_a_layer():
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "definitions.py"))
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert flat == [], f"modules outside the layers: {flat}"
    assert folders == sorted(LAYERS)


def test_no_module_imports_a_layer_to_its_right_or_dagster_below_orchestration():
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        here = path.relative_to(PACKAGE).parts[0]
        if here not in rank:
            continue
        for module in imports(path):
            there = layer_of(module)
            if there in rank and rank[there] > rank[here]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
            if there == "definitions" and here != "app":
                wrong.append(f"{path.relative_to(ROOT)} imports the composition root")
            if module.split(".")[0] in ("dagster", "assets") and rank[here] < rank["orchestration"]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_assets_are_thin_wiring_over_stages_and_orchestration():
    wrong = [f"{p.name} imports {m}" for p in (ROOT / "assets").glob("*.py") for m in imports(p)
             if layer_of(m) not in (None, "stages", "orchestration")]
    assert wrong == []


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = set()
    for name in graph:
        path = ROOT / (name.replace(".", "/") + ("/__init__.py" if (ROOT / name.replace(".", "/")).is_dir() else ".py"))
        graph[name] = {m for m in imports(path) if m in graph and m != name and not m.startswith(name + ".")}
    state: dict[str, int] = {}

    def cycle_from(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return trail + [node, nxt]
            if nxt not in state and (found := cycle_from(nxt, trail + [node])):
                return found
        state[node] = 2
        return None

    cycles = [c for n in sorted(graph) if n not in state and (c := cycle_from(n, []))]
    assert cycles == []
