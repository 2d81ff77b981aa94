"""The compose file is valid and deploys what the design says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"


def compose_config() -> dict:  # type: ignore[type-arg]
    """`docker compose config` where the plugin exists, else the standalone `docker-compose`."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True) if shutil.which("docker") else None
    command = ["docker", "compose"] if plugin and plugin.returncode == 0 else ["docker-compose"]
    result = subprocess.run([*command, "-f", str(COMPOSE), "config"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    config: dict = yaml.safe_load(result.stdout)  # type: ignore[type-arg]
    return config


def test_the_compose_file_runs_llama_3_70b_on_two_gpus_with_every_part_health_checked() -> None:
    services = compose_config()["services"]
    assert set(services) >= {"postgres", "minio", "minio-bucket", "api", "worker"}
    worker = services["worker"]
    assert worker["environment"]["MODEL"] == "meta-llama/Meta-Llama-3-70B-Instruct"
    assert worker["environment"]["TENSOR_PARALLEL_SIZE"] == "2"
    [gpus] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["count"] == 2 and gpus["capabilities"] == ["gpu"]
    for name in ("postgres", "minio", "api", "worker"):
        assert "healthcheck" in services[name], name
    assert services["api"]["environment"]["DATABASE_URL"] == worker["environment"]["DATABASE_URL"]
    assert "mc mb" in " ".join(services["minio-bucket"]["entrypoint"])
