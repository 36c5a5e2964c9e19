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
    assert users == ["mlflow_model.py", "tracking.py"]
