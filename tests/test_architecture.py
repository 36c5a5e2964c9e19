"""Boundaries the design relies on."""

import subprocess
import sys


def test_library_never_imports_prefect():
    code = (
        "import sys, anomaly, anomaly.cli, anomaly.pipeline, anomaly.tracking, anomaly.config;"
        "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_tracking_modules_import_mlflow():
    from pathlib import Path

    root = Path(__file__).parent.parent / "anomaly"
    users = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if any(
            line.lstrip().startswith(("import mlflow", "from mlflow"))
            for line in p.read_text().splitlines()
        )
    )
    # The tracking package, the pyfunc entry MLflow loads and the review that reads the store.
    assert [u for u in users if not u.startswith("tracking/")] == ["mlflow_model.py", "review.py"]
    assert "tracking/store.py" in users


# Modules whose load functions can run code from a file: never used on model or data files.
_UNPICKLERS = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}


def _unsafe_loads(path):
    """``(line, what)`` for each import of an unpickler and each ``torch.load`` not weights-only."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, f"import {a.name}")
                for a in node.names
                if a.name.split(".")[0] in _UNPICKLERS
            ]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in _UNPICKLERS:
                found.append((node.lineno, f"from {node.module} import ..."))
            if node.module == "torch" and any(a.name == "load" for a in node.names):
                found.append((node.lineno, "from torch import load"))
        elif isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "load"
                and isinstance(func.value, ast.Name)
                and func.value.id == "torch"
            ):
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                safe = (
                    weights_only
                    and isinstance(weights_only[0].value, ast.Constant)
                    and weights_only[0].value.value is True
                )
                if not safe:
                    found.append((node.lineno, "torch.load without weights_only=True"))
    return found


def test_scanner_finds_unsafe_loads(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import pickle\nimport joblib as jl\nfrom cloudpickle import loads\n"
        "import torch\ntorch.load('a')\ntorch.load('b', weights_only=False)\n"
        "torch.load('c', weights_only=True)\n"
    )
    assert [line for line, _ in _unsafe_loads(sample)] == [1, 2, 3, 5, 6]


def test_no_code_unpickles_or_calls_torch_load_unsafely():
    from pathlib import Path

    root = Path(__file__).parent.parent
    offenders = [
        f"{p.relative_to(root)}:{line}: {what}"
        for folder in ("anomaly", "flows")
        for p in sorted((root / folder).rglob("*.py"))
        for line, what in _unsafe_loads(p)
    ]
    assert offenders == []


def _imports_of(path, package_root):
    """Every ``anomaly.*`` module a file imports, at module level, in functions or for typing."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(package_root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("anomaly")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("anomaly"):
                found.add(module)
    return found


def test_no_import_circles_in_the_library():
    """Data flows one way: no module reaches back up, not even inside a function or for typing."""
    from pathlib import Path

    root = Path(__file__).parent.parent / "anomaly"
    modules = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports_of(path, root):
            # ``from anomaly.x import y`` may name a submodule y or a name in x: take the longest
            # module the import names.
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and imported != "anomaly":
                targets.add(imported)
        graph[name] = targets

    cycles = []
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


# Layers from the bottom up; a module imports its own layer (no circle, see above) or lower ones.
_LAYERS = [
    # tensors in, tensors out: the networks know nothing of files, tables or MLflow
    ["anomaly.models"],
    # reading, validating and the small pieces every step uses
    [
        "anomaly.errors",
        "anomaly.data",
        "anomaly.integrity",
        "anomaly.reduction",
        "anomaly.events",
        "anomaly.monitoring",
        "anomaly.plots",
        "anomaly.thresholds",
        "anomaly.training",
        "anomaly.tracking_uri",
        "anomaly.quarantine",
    ],
    ["anomaly.preprocessing"],
    # one module per data kind, and saved fitted state
    ["anomaly.kinds", "anomaly.persistence"],
    ["anomaly.detectors"],
    [
        "anomaly.scoring",
        "anomaly.stream_sources",
        "anomaly.stream_sinks",
        "anomaly.streaming",
        "anomaly.stream_images",
        "anomaly.stream_series",
        "anomaly.series_chunks",
        "anomaly.heatmaps",
        "anomaly.distributed",
        "anomaly.mlflow_model",
        "anomaly.config",
    ],
    [
        "anomaly.tracking",
        "anomaly.run_logging",
        "anomaly.review",
        "anomaly.file_scoring",
        "anomaly.registry",
        "anomaly.landing",
        "anomaly.pipeline",
    ],
    ["anomaly.cli", "anomaly"],
]


def _layer(module):
    for level, prefixes in enumerate(_LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "anomaly"):
            return level
    return len(_LAYERS) - 1 if module == "anomaly" else None


def test_each_layer_imports_only_its_own_or_lower_layers():
    from pathlib import Path

    root = Path(__file__).parent.parent / "anomaly"
    upward, unplaced = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts)
        own = _layer(name)
        if own is None:
            unplaced.append(name)
            continue
        for imported in _imports_of(path, root):
            target = _layer(imported)
            if target is not None and target > own and imported != "anomaly":
                upward.append(f"{name} -> {imported}")
    assert unplaced == [], f"modules in no layer (add them to _LAYERS): {unplaced}"
    assert upward == [], "imports up the layers: " + "; ".join(upward)


def test_the_layer_check_sees_an_upward_import():
    assert _layer("anomaly.kinds.series") < _layer("anomaly.detectors")
    assert _layer("anomaly.models.build") < _layer("anomaly.data.schema")
