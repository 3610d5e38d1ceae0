"""The deployment files agree with the code (no Docker engine runs on the build machines).

docker-compose.yml must parse, every variable it gives our image must be one
the settings read (or a documented third-party one), and every command must
name a real entry point. environment.yml must carry the same packages as
pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import dask.config
import distributed  # noqa: F401  (registers the distributed.* config defaults)
import pytest
import yaml

from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Read by libraries, not by Settings: botocore's credentials and region.
THIRD_PARTY_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def our_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("build") == "."}


def test_compose_has_the_production_shape(compose):
    services = compose["services"]
    assert {"mongo", "minio", "scheduler", "worker", "api"} <= set(services)
    assert set(our_services(compose)) == {"scheduler", "worker", "api"}
    for name in ("mongo", "minio", "scheduler", "api"):
        assert "healthcheck" in services[name], name
    assert "8787:8787" in services["scheduler"]["ports"]  # the Dask dashboard
    assert "5000:5000" in services["api"]["ports"]
    # `--scale worker=N` needs a worker without a fixed name, port or container_name
    assert "ports" not in services["worker"] and "container_name" not in services["worker"]


def test_compose_sets_only_variables_the_settings_know(compose):
    known = Settings.env_names() | THIRD_PARTY_ENV
    for name, service in our_services(compose).items():
        unknown = {v for v in set(service["environment"]) - known if not dask_reads(v)}
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def dask_reads(variable: str) -> bool:
    """A DASK_A__B_C variable names a Dask config key (a typo names none)."""
    if not variable.startswith("DASK_"):
        return False
    key = ".".join(variable.removeprefix("DASK_").lower().split("__"))
    try:
        dask.config.get(key)
    except KeyError:
        return False
    return True
    env = our_services(compose)["api"]["environment"]
    # The production choices are configured, not left to the embedded defaults.
    assert env["STORAGE_URL"].startswith("s3://")
    assert env["MONGODB_URI"].startswith("mongodb://")
    assert env["DASK_SCHEDULER_ADDRESS"] == "tcp://scheduler:8786"
    assert env["HOST"] == "0.0.0.0"
    Settings.from_env({k: str(v) for k, v in env.items() if k not in THIRD_PARTY_ENV})


def test_compose_commands_name_real_entry_points(compose):
    for name, service in our_services(compose).items():
        command = service["command"]
        if command[0] == "python":
            assert command[1] == "-m"
            assert importlib.util.find_spec(f"{command[2]}.__main__"), name
        else:
            assert command[0] == "dask", name
            dask = shutil.which("dask", path=str(Path(sys.executable).parent))
            assert dask, "the dask CLI is installed with dask[distributed]"
            result = subprocess.run(
                [dask, command[1], "--help"], capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, result.stderr
            for option in (arg for arg in command[2:] if arg.startswith("--")):
                assert option in result.stdout, f"{name}: dask {command[1]} has no {option}"


def test_dockerfile_installs_the_project_and_runs_the_api():
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY pipeline ./pipeline" in text and "COPY api ./api" in text
    assert "RUN pip install ." in text
    assert 'CMD ["python", "-m", "api"]' in text


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = _names(project["dependencies"]).union(*(_names(reqs) for reqs in extras.values()))
    wanted.discard(project["name"])  # the test extra includes the notebook extra by name
    wanted = {"distributed" if n == "dask" else n for n in wanted} | {"dask"}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = _names([d for d in env["dependencies"] if isinstance(d, str)])
    pip = _names(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)))
    missing = wanted - conda - pip
    assert not missing, f"environment.yml lacks {sorted(missing)}"
