"""The deployment files agree with the code (no Docker engine runs on the build machines).

docker-compose.yml must parse, every variable it gives our image must be one
the settings read (or a documented third-party one), and every command must
name a real entry point. It must publish only what a user should reach, take
its credentials from .env (made as .env.example says), and make only output
images public. environment.yml must carry the same packages as pyproject.toml.

Compose's variable substitution (`${VAR:?message}` and friends) is modelled by
`interpolate` below, after the Compose specification's "Interpolation" section.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import dask.config
import distributed  # noqa: F401  (registers the distributed.* config defaults)
import pytest
import yaml
from pymongo.uri_parser import parse_uri

from pipeline.settings import Settings
from pipeline.storage import PUBLIC_KEY_PATTERN, public_read_policy

ROOT = Path(__file__).resolve().parents[2]
# Read by libraries, not by Settings: botocore's credentials and region.
THIRD_PARTY_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
REQUIRED_SECRETS = {
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MONGO_ROOT_USER",
    "MONGO_ROOT_PASSWORD",
}


class MissingVariable(Exception):
    """What makes `docker compose` refuse to start: a required variable unset or empty."""


_REFERENCE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """`value` (parsed YAML) with ${...} substituted from `env`, as Compose does."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["bare"]:
            return env.get(match["bare"], "")
        braced = _BRACED.fullmatch(match["braced"])
        assert braced, f"compose cannot read ${{{match['braced']}}}"
        name, op, arg = braced["name"], braced["op"], braced["arg"]
        current = env.get(name)
        unset_or_empty = not current if op and op.startswith(":") else current is None
        if op in (":?", "?") and unset_or_empty:
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and unset_or_empty:
            return arg
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _REFERENCE.sub(substitute, value)


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as compose reads a plain .env (no quotes or exports in ours)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def referenced_variables(value: Any) -> dict[str, str]:
    """Each variable the compose file reads, with its operator ("" for plain ${VAR})."""
    text = json.dumps(value)
    found = {}
    for match in _REFERENCE.finditer(text):
        if match["braced"]:
            braced = _BRACED.fullmatch(match["braced"])
            assert braced, f"compose cannot read ${{{match['braced']}}}"
            found[braced["name"]] = braced["op"] or ""
        elif match["bare"]:
            found[match["bare"]] = ""
    return found


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dot_env(tmp_path_factory) -> Path:
    """A .env made by the command .env.example gives, run as a user runs it."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    [command] = [line.removeprefix("#").strip() for line in lines if line.endswith("> .env)")]
    cwd = tmp_path_factory.mktemp("compose-project")
    python_first = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    subprocess.run(["sh", "-c", command], cwd=cwd, check=True, env={"PATH": python_first})
    return cwd / ".env"


@pytest.fixture(scope="module")
def secrets(dot_env) -> dict[str, str]:
    return env_file(dot_env)


@pytest.fixture(scope="module")
def compose(raw_compose, secrets) -> dict:
    return interpolate(raw_compose, secrets)


def our_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("build") == "."}


def published(compose: dict) -> set[tuple[str, str, int]]:
    """(service, host address or "" for every interface, container port) of each published port."""
    ports = set()
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            assert isinstance(mapping, str), f"{name}: use the short port syntax"
            *address, _host_port, container = mapping.removesuffix("/tcp").rsplit(":", 2)
            ports.add((name, address[0] if address else "", int(container)))
    return ports


def test_compose_has_the_production_shape(compose):
    services = compose["services"]
    assert {"mongo", "minio", "scheduler", "worker", "api"} <= set(services)
    assert set(our_services(compose)) == {"scheduler", "worker", "api"}
    for name in ("mongo", "minio", "scheduler", "api"):
        assert "healthcheck" in services[name], name
    # `--scale worker=N` needs a worker without a fixed name, port or container_name
    assert "ports" not in services["worker"] and "container_name" not in services["worker"]


def test_compose_publishes_only_the_api_and_loopback_ports(compose):
    # The scheduler (8786) runs any code it is sent, MongoDB holds every record and
    # the MinIO console administers the storage: none of them leaves the compose
    # network. The dashboard and MinIO's S3 port (the output image links) are for
    # this host only; the API is the service.
    assert published(compose) == {
        ("api", "", 5000),
        ("scheduler", "127.0.0.1", 8787),
        ("minio", "127.0.0.1", 9000),
    }
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name  # host networking publishes all


def test_compose_refuses_to_start_without_the_secrets(raw_compose, secrets):
    variables = referenced_variables(raw_compose)
    assert {name for name, op in variables.items() if op == ":?"} == REQUIRED_SECRETS
    for name in REQUIRED_SECRETS:
        for env in ({k: v for k, v in secrets.items() if k != name}, {**secrets, name: ""}):
            with pytest.raises(MissingVariable, match=rf"{name}: .*\.env"):
                interpolate(raw_compose, env)
    # .env.example copied without filling it in is refused too: it holds no secret.
    with pytest.raises(MissingVariable):
        interpolate(raw_compose, env_file(ROOT / ".env.example"))


def test_env_example_lists_every_variable_and_makes_strong_secrets(raw_compose, dot_env, secrets):
    template = env_file(ROOT / ".env.example")
    assert set(template) == set(referenced_variables(raw_compose))
    assert not any(template.values()), ".env.example holds placeholders, never values"
    assert set(secrets) >= REQUIRED_SECRETS
    for name in ("MINIO_ROOT_PASSWORD", "MONGO_ROOT_PASSWORD"):
        assert len(secrets[name]) >= 32 and secrets[name].isalnum(), name
    assert stat.S_IMODE(dot_env.stat().st_mode) == 0o600  # readable by its owner only


def test_env_file_is_never_committed():
    def ignored(path: str) -> bool:
        result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT)
        assert result.returncode in (0, 1), "git check-ignore failed"
        return result.returncode == 0

    assert ignored(".env")
    assert not ignored(".env.example")


def test_compose_credentials_come_from_the_env_file(raw_compose, compose, secrets):
    assert "minioadmin" not in (ROOT / "docker-compose.yml").read_text()
    services = compose["services"]
    minio_user, minio_password = secrets["MINIO_ROOT_USER"], secrets["MINIO_ROOT_PASSWORD"]
    for name in ("minio", "minio-bucket"):
        env = services[name]["environment"]
        assert (env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"]) == (minio_user, minio_password)
    mongo_env = services["mongo"]["environment"]
    assert mongo_env["MONGO_INITDB_ROOT_USERNAME"] == secrets["MONGO_ROOT_USER"]
    assert mongo_env["MONGO_INITDB_ROOT_PASSWORD"] == secrets["MONGO_ROOT_PASSWORD"]
    # mongod with a replica set and auth does not start without a key file
    assert "--keyFile" in services["mongo"]["command"]
    for name, service in our_services(compose).items():
        env = service["environment"]
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio_user,
            minio_password,
        ), name
        uri = parse_uri(env["MONGODB_URI"])
        assert (uri["username"], uri["password"]) == (
            secrets["MONGO_ROOT_USER"],
            secrets["MONGO_ROOT_PASSWORD"],
        ), name
        assert uri["options"]["authSource"] == "admin" and uri["options"]["replicaSet"] == "rs0"
    # The containers' shells, not compose, expand these: the secrets stay out of the
    # command lines compose shows (`docker compose config`).
    bucket_script = " ".join(raw_compose["services"]["minio-bucket"]["entrypoint"])
    assert '"$$MINIO_ROOT_USER" "$$MINIO_ROOT_PASSWORD"' in bucket_script


def test_compose_makes_only_output_images_public(compose):
    api_env = our_services(compose)["api"]["environment"]
    policy = json.loads(compose["configs"]["public-read-policy"]["content"])
    assert policy == public_read_policy(api_env["STORAGE_URL"])
    bucket_service = compose["services"]["minio-bucket"]
    [config] = bucket_service["configs"]
    assert config["source"] == "public-read-policy"
    script = " ".join(bucket_service["entrypoint"])
    assert f"mc anonymous set-json {config['target']} local/imagepipe" in script
    assert "anonymous set download" not in script and "anonymous set public" not in script
    # The links the API writes into output CSVs point where that policy applies.
    assert api_env["PUBLIC_BASE_URL"] == "http://127.0.0.1:9000/imagepipe/outputs"
    assert api_env["STORAGE_URL"] == "s3://imagepipe/outputs"


def test_readme_documents_the_policy_compose_sets():
    readme = (ROOT / "README.md").read_text()
    assert f"arn:aws:s3:::BUCKET/PREFIX/{PUBLIC_KEY_PATTERN}" in readme
    assert ".env.example" in readme


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


def test_compose_configures_the_production_choices(compose):
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


def test_mongo_test_override_publishes_on_loopback_only():
    # `make test-mongo MONGO_COMPOSE=1` runs the suite on the host against the
    # stack's MongoDB; its override opens it to this host and no further.
    override = yaml.safe_load((ROOT / "docker-compose.mongo-test.yml").read_text())
    assert published(override) == {("mongo", "127.0.0.1", 27017)}


def test_dockerfile_installs_the_project_and_runs_the_api():
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY pipeline ./pipeline" in text and "COPY api ./api" in text
    assert "RUN pip install ." in text
    assert 'CMD ["python", "-m", "api"]' in text


def test_dockerfile_declares_only_the_api_port_and_drops_root():
    lines = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    # `docker run -P` publishes every EXPOSEd port on every host interface.
    assert [line[1:] for line in lines if line[:1] == ["EXPOSE"]] == [["5000"]]
    users = [line[1] for line in lines if line[:1] == ["USER"]]
    assert users and users[-1] not in ("root", "0")


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
