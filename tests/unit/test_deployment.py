"""The compose file is valid, deploys what the design says, and holds no secret."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))

SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
FROM_ENV = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):\?[^}]+\}")  # `${VAR:?message}`: required, no default
URL_PASSWORD = re.compile(r"://[^:/@\s]+:(?P<password>[^@\s]+)@")
APP_SERVICES = ("api", "worker")


@lru_cache
def compose_command() -> tuple[str, ...]:
    """`docker compose` where the plugin exists, else the standalone `docker-compose`."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True) if shutil.which("docker") else None
    return ("docker", "compose") if plugin and plugin.returncode == 0 else ("docker-compose",)


def example_variables() -> dict[str, str]:
    """`NAME=value` lines of docker/.env.example."""
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"[A-Z0-9_]+=", line))
    return {name: value for name, value in pairs}


def compose_config_run(env_file: Path) -> subprocess.CompletedProcess[str]:
    # The caller's shell would override the env file: take those variables out.
    env = {name: value for name, value in os.environ.items() if name not in example_variables()}
    return subprocess.run(
        [*compose_command(), "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


@pytest.fixture
def filled_env(tmp_path: Path) -> dict[str, str]:
    """A distinct, recognisable, URL-safe dummy value for every variable of .env.example."""
    values = {name: f"dummy-{name.lower().replace('_', '-')}-0123456789" for name in example_variables()}
    (tmp_path / "filled.env").write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return values


@pytest.fixture
def config(filled_env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    result = compose_config_run(tmp_path / "filled.env")
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def raw_services() -> dict[str, Any]:
    """The compose file as written (anchors merged), before any interpolation."""
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- NAME=value` form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def strings(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, (*path, str(index)))
    elif isinstance(node, str):
        yield path, node


def test_the_compose_file_runs_llama_3_70b_on_two_gpus_with_every_part_health_checked(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) >= {"postgres", "minio", "minio-init", "api", "worker"}
    worker = services["worker"]
    assert worker["environment"]["MODEL"] == "meta-llama/Meta-Llama-3-70B-Instruct"
    assert worker["environment"]["TENSOR_PARALLEL_SIZE"] == "2"
    [gpus] = worker["deploy"]["resources"]["reservations"]["devices"]
    # gpu and compute for CUDA, utility for nvidia-smi (the driver check of `llm-batch doctor`)
    assert gpus["count"] == 2 and set(gpus["capabilities"]) == {"gpu", "utility", "compute"}
    for name in ("postgres", "minio", "api", "worker"):
        assert "healthcheck" in services[name], name
    assert services["api"]["environment"]["DATABASE_URL"] == worker["environment"]["DATABASE_URL"]
    assert "mc mb" in " ".join(services["minio-init"]["entrypoint"])


def test_every_secret_in_the_compose_file_comes_from_the_environment_without_a_default() -> None:
    variables = example_variables()
    for service_name, service in raw_services().items():
        for name, value in environment(service).items():
            where = f"{service_name}: {name}={value}"
            if SECRET_NAME.search(name):
                match = FROM_ENV.fullmatch(value)
                assert match, f"{where} must be ${{VAR:?message}}"
                assert match["name"] in variables, f"{where}: {match['name']} is missing from .env.example"
            for url in URL_PASSWORD.finditer(value):
                assert FROM_ENV.fullmatch(url["password"]), f"{where}: a literal password in a URL"
    # Every variable the file reads is required (no `${VAR}`, `${VAR:-default}`) and documented.
    text = COMPOSE.read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Za-z0-9_]+)", text))
    assert referenced == set(FROM_ENV.findall(text)) == set(variables)


def test_the_env_example_lists_every_variable_empty_with_a_comment() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    assert any("openssl rand -hex 32" in line for line in lines)
    for name, value in example_variables().items():
        assert value == "", f"{name} has a value in .env.example; leave it for the operator to generate"
        index = lines.index(f"{name}=")
        assert any(line.startswith("#") for line in lines[max(0, index - 3) : index]), f"{name} has no comment"


def test_compose_refuses_to_start_while_any_secret_is_missing(tmp_path: Path) -> None:
    result = compose_config_run(ENV_EXAMPLE)
    assert result.returncode != 0, "the unfilled .env.example must not validate"
    variables = example_variables()
    for missing in variables:
        env_file = tmp_path / f"without-{missing}.env"
        env_file.write_text("".join(f"{name}=x{name.lower()}\n" for name in variables if name != missing))
        result = compose_config_run(env_file)
        assert result.returncode != 0 and missing in result.stderr, (missing, result.stderr)


def test_no_secret_leaks_out_of_the_environment_into_commands_or_other_fields(
    config: dict[str, Any], filled_env: dict[str, str]
) -> None:
    for path, value in strings(config["services"]):
        if "environment" in path:
            continue
        for name, secret in filled_env.items():
            assert secret not in value, f"{name} appears in services.{'.'.join(path)}"


def test_the_api_and_the_worker_use_the_apps_own_minio_user_not_the_root_account(
    config: dict[str, Any], filled_env: dict[str, str]
) -> None:
    services = config["services"]
    root = {filled_env["MINIO_ROOT_USER"], filled_env["MINIO_ROOT_PASSWORD"]}
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert not {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} & set(env), name
        assert not any(secret in value for value in env.values() for secret in root), name
        assert env["AWS_ACCESS_KEY_ID"] == filled_env["APP_S3_ACCESS_KEY"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == filled_env["APP_S3_SECRET_KEY"], name
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully", name
    assert filled_env["APP_S3_ACCESS_KEY"] != filled_env["MINIO_ROOT_USER"]


def test_minio_init_gives_the_app_user_a_policy_limited_to_the_bucket(config: dict[str, Any]) -> None:
    services = config["services"]
    init = services["minio-init"]
    assert init["image"].startswith("minio/mc:")
    bucket = init["environment"]["BUCKET"]
    for name in APP_SERVICES:
        assert services[name]["environment"]["STORAGE_URL"].startswith(f"s3://{bucket}/"), name
    script = init["entrypoint"][-1]
    for step in ("mc mb --ignore-existing", "mc admin policy create", "mc admin user add", "mc admin policy attach"):
        assert step in script, step
    assert "APP_S3_ACCESS_KEY" in script and "APP_S3_SECRET_KEY" in script
    [policy_text] = re.findall(r"<<POLICY\n(.*?)\nPOLICY", script, re.DOTALL)
    policy = json.loads(re.sub(r"\$+\{?BUCKET\}?", bucket, policy_text))
    resources = {resource for statement in policy["Statement"] for resource in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    actions = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= actions
    assert all(action.startswith("s3:") and "*" not in action for action in actions)
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    parsed = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]
    last_from = max(index for index, (keyword, _) in enumerate(parsed) if keyword == "FROM")
    return parsed[last_from:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_every_image_runs_as_an_unprivileged_user(dockerfile: Path) -> None:
    users = [arguments.split(":")[0] for keyword, arguments in instructions(dockerfile) if keyword == "USER"]
    assert users, f"{dockerfile.name} has no USER: it would run as root"
    assert users[-1] not in {"root", "0"}, f"{dockerfile.name} ends as {users[-1]}"


def test_both_images_are_checked() -> None:
    assert {path.name for path in DOCKERFILES} >= {"api.Dockerfile", "worker.Dockerfile"}


def test_the_api_image_applies_migrations_then_serves_the_app_factory() -> None:
    [command] = [arguments for keyword, arguments in instructions(DOCKER / "api.Dockerfile") if keyword == "CMD"]
    shell = " ".join(json.loads(command))
    assert re.search(r"python -m app\.core\.migrations && exec uvicorn --factory app\.api\.main:create_app", shell)
    # Those modules are this repository's (the venv may hold another checkout).
    assert 'if __name__ == "__main__":' in (ROOT / "app" / "core" / "migrations.py").read_text()
    assert "def create_app(" in (ROOT / "app" / "api" / "main.py").read_text()


def test_the_worker_keeps_its_model_cache_where_its_user_can_write(config: dict[str, Any]) -> None:
    [hf_home] = [
        arguments.split("=", 1)[1]
        for keyword, arguments in instructions(DOCKER / "worker.Dockerfile")
        if keyword == "ENV" and arguments.startswith("HF_HOME=")
    ]
    volumes = config["services"]["worker"]["volumes"]
    targets = {volume["target"] if isinstance(volume, dict) else volume.split(":")[1] for volume in volumes}
    assert hf_home in targets
