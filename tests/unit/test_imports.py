"""Imports point inward: the API starts without the workers' libraries, and the
pipeline never reaches back into the API.

`api.app` is what every API process imports first; what the workers need
(Pillow for the transform, pyarrow for the manifest, Dask for the driver,
pandas for the notebooks) is loaded by `pipeline.service` when the real
objects are wired, or where it is used, never by the HTTP layer itself.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER_LIBRARIES = ("PIL", "pyarrow", "distributed", "dask", "pandas")
# The pipeline modules that wire or run the heavy objects: the API is given them.
WIRING = ("pipeline.service", "pipeline.driver", "pipeline.tasks", "pipeline.cluster")


def loaded_by(module: str) -> set[str]:
    """The top-level packages and pipeline modules in sys.modules after importing
    `module` in a fresh interpreter (this one has loaded everything already)."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


def test_importing_the_api_loads_none_of_the_workers_libraries():
    modules = loaded_by("api.app")
    assert "api.app" in modules
    assert [name for name in WORKER_LIBRARIES if name in modules] == []
    assert [name for name in WIRING if name in modules] == []
    # Nor a database driver: the store in use is built by pipeline.service.
    assert [name for name in ("pymongo", "bson") if name in modules] == []


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, wherever the import statement is (a function,
    an `if TYPE_CHECKING:` block), relative imports resolved to `pipeline.`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("pipeline" if node.level else node.module or "")
    return names


def test_the_pipeline_never_imports_the_api():
    sources = sorted((ROOT / "pipeline").rglob("*.py"))
    assert sources
    offending = {
        str(path.relative_to(ROOT)): sorted(
            name for name in imported_modules(path) if name == "api" or name.startswith("api.")
        )
        for path in sources
    }
    assert {path: names for path, names in offending.items() if names} == {}
