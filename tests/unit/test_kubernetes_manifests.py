"""deploy/: every kustomization builds, every resource it makes validates against Kubernetes'
schemas, and the manifests deploy what the design says (the images' commands and user, the
probes, GPUs, graceful stop, secrets only from Secrets, the autoscaler on queue depth).

The kustomizations are built here in Python (no kustomize binary needed): resources, and
strategic-merge patches named by kind and name, which is all deploy/ uses. Where kubectl
is installed its own `kubectl kustomize` is checked to build the same."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
SECRET_EXAMPLE = BASE / "secret.example.yaml"
KUSTOMIZATIONS = sorted(path.parent for path in DEPLOY.rglob("kustomization.yaml"))
KUBERNETES_VERSION = "1.33"  # the oldest release the manifests are meant for (schemas bundled in the package)

API, WORKER = "llm-batch-api", "llm-batch-worker"
APP_UID = 10001  # the images' user (docker/*.Dockerfile)
MODEL = "meta-llama/Meta-Llama-3-70B-Instruct"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
SECRET_ENV = {"DATABASE_URL", "STORAGE_URL", "S3_ENDPOINT_URL"}  # hold credentials or name private hosts
URL_PASSWORD = re.compile(r"://[^:/@\s]+:[^@\s]+@")
WORKLOADS = {"Deployment", "Job"}

Resource = dict[str, Any]


def documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def merge(base: Any, patch: Any) -> Any:
    """A strategic merge: maps merge key by key (null deletes), lists of named items merge
    by name (containers, env, volumes, ports...), anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for field, value in patch.items():
            if value is None:
                merged.pop(field, None)
            else:
                merged[field] = merge(base[field], value) if field in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in base):
        items = {item["name"]: item for item in base}
        for item in patch:
            items[item["name"]] = merge(items[item["name"]], item) if item["name"] in items else item
        return list(items.values())
    return patch


def listed(directory: Path, field: str) -> list[Any]:
    """A kustomization's `resources` or `patches` (none when absent or empty)."""
    return documents(directory / "kustomization.yaml")[0].get(field) or []


def named_files(directory: Path) -> list[Path]:
    """Every path a kustomization names: its resources (files or folders) and its patches."""
    return [directory / e for e in listed(directory, "resources")] + [
        directory / p["path"] for p in listed(directory, "patches")
    ]


def build(directory: Path) -> list[Resource]:
    """What `kubectl kustomize directory` makes, for the kustomization fields deploy/ uses."""
    kustomization = documents(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    assert not unknown, f"{directory}: this test's builder does not know {sorted(unknown)}"
    resources: list[Resource] = []
    for entry in listed(directory, "resources"):
        path = directory / entry
        resources += build(path) if path.is_dir() else documents(path)
    for patch_entry in listed(directory, "patches"):
        assert set(patch_entry) == {"path"}, f"{directory}: only strategic-merge patches by path: {patch_entry}"
        for patch in documents(directory / patch_entry["path"]):
            [index] = [i for i, r in enumerate(resources) if key(r) == key(patch)]
            resources[index] = merge(resources[index], patch)
    return resources


def key(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def by_key(resources: list[Resource]) -> dict[tuple[str, str], Resource]:
    found = {key(r): r for r in resources}
    assert len(found) == len(resources), "two resources share a kind and name"
    return found


def rendered() -> Iterator[tuple[Path, list[Resource]]]:
    for directory in KUSTOMIZATIONS:
        yield directory, build(directory)


def name_of(directory: Path) -> str:
    return str(directory.relative_to(DEPLOY))


def pod_specs(resources: list[Resource]) -> Iterator[tuple[Resource, Resource]]:
    for resource in resources:
        if resource["kind"] in WORKLOADS:
            yield resource, resource["spec"]["template"]["spec"]


def containers(resources: list[Resource]) -> Iterator[tuple[Resource, Resource]]:
    for workload, spec in pod_specs(resources):
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield workload, container


def container(resources: list[Resource], deployment: str) -> Resource:
    [only] = by_key(resources)["Deployment", deployment]["spec"]["template"]["spec"]["containers"]
    result: Resource = only
    return result


def env(container: Resource) -> dict[str, Any]:
    """Each variable's literal value, or its `valueFrom`."""
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def dockerfile_cmd(name: str) -> list[str]:
    [command] = re.findall(r"^CMD (\[.*\])$", (ROOT / "docker" / name).read_text(), re.MULTILINE)
    result: list[str] = json.loads(command)
    return result


def test_there_is_a_base_and_the_three_overlays() -> None:
    assert {name_of(d) for d in KUSTOMIZATIONS} == {"base", "overlays/minio", "overlays/h100-fp8", "overlays/keda"}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=name_of)
def test_every_file_a_kustomization_names_exists(directory: Path) -> None:
    assert named_files(directory), f"{directory} names nothing"
    for path in named_files(directory):
        assert path.is_file() or (path / "kustomization.yaml").is_file(), f"{path} is missing"


def test_every_yaml_file_is_used_by_a_kustomization_except_the_secret_example() -> None:
    used = {SECRET_EXAMPLE} | {directory / "kustomization.yaml" for directory in KUSTOMIZATIONS}
    used |= {path.resolve() for directory in KUSTOMIZATIONS for path in named_files(directory) if path.is_file()}
    assert set(DEPLOY.rglob("*.yaml")) == used


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=name_of)
def test_every_resource_validates_against_the_kubernetes_schemas(directory: Path) -> None:
    resources = build(directory)
    core = [r for r in resources if r["apiVersion"] != "keda.sh/v1alpha1"]  # a CRD: test_the_autoscaler...
    assert {"Deployment", "Service"} <= {r["kind"] for r in core}
    for resource in core:
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            pytest.fail(f"{name_of(directory)}: {'/'.join(key(resource))}: {where}: {error.message}")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=name_of)
def test_kubectl_kustomize_builds_what_this_test_builds(directory: Path) -> None:
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr

    def normal(node: Any) -> Any:  # kustomize may reorder named list items (a patch's go first)
        if isinstance(node, dict):
            return {k: normal(v) for k, v in node.items()}
        if isinstance(node, list) and all(isinstance(i, dict) and "name" in i for i in node):
            return sorted((normal(i) for i in node), key=lambda i: i["name"])
        return [normal(i) for i in node] if isinstance(node, list) else node

    theirs = {key(r): normal(r) for r in yaml.safe_load_all(result.stdout) if r}
    assert theirs == {key(r): normal(r) for r in build(directory)}


def test_the_api_runs_the_images_command_on_port_8000_with_its_probes() -> None:
    resources = build(BASE)
    api = container(resources, API)
    assert api["image"] == "llm-batch-api"
    assert api["command"] == dockerfile_cmd("api.Dockerfile")
    assert api["ports"] == [{"name": "http", "containerPort": 8000}]
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"  # migrations run first
    assert env(api)["MODEL"] == env(api)["SERVED_MODEL_NAME"] == MODEL


def test_the_worker_runs_llama_3_70b_on_two_gpus_and_stops_within_its_grace() -> None:
    resources = build(BASE)
    spec = by_key(resources)["Deployment", WORKER]["spec"]["template"]["spec"]
    worker = container(resources, WORKER)
    variables = env(worker)
    assert worker["image"] == "llm-batch-worker"
    assert worker["command"] == dockerfile_cmd("worker.Dockerfile")
    assert variables["MODEL"] == variables["SERVED_MODEL_NAME"] == MODEL
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == int(variables["TENSOR_PARALLEL_SIZE"]) == 2
    # The worker's own deadline (worker/stopping.py) comes before Kubernetes' SIGKILL.
    assert spec["terminationGracePeriodSeconds"] == 60
    assert float(variables["STOP_GRACE_SECONDS"]) == 45 < spec["terminationGracePeriodSeconds"]

    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in worker["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    [hf_home] = re.findall(r"^ENV HF_HOME=(\S+)", (ROOT / "docker" / "worker.Dockerfile").read_text(), re.MULTILINE)
    claim = volumes[mounts[hf_home]]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in by_key(resources)
    assert variables["VLLM_CACHE_ROOT"] in mounts  # compile caches off the image's layer


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=name_of)
def test_every_pod_runs_as_a_non_root_user(directory: Path) -> None:
    resources = build(directory)
    for workload, spec in pod_specs(resources):
        context = spec.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, workload["metadata"]["name"]
        assert context.get("runAsUser") == APP_UID, workload["metadata"]["name"]
    for workload, each in containers(resources):
        assert each["securityContext"]["allowPrivilegeEscalation"] is False, workload["metadata"]["name"]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=name_of)
def test_selectors_match_pod_labels_and_each_service_selects_one_workloads_pods(directory: Path) -> None:
    resources = build(directory)
    pods: dict[str, tuple[dict[str, str], set[Any]]] = {}  # workload: pod labels, container ports
    for resource in resources:
        if resource["kind"] in WORKLOADS:
            labels = resource["spec"]["template"]["metadata"]["labels"]
            if resource["kind"] == "Deployment":
                assert resource["spec"]["selector"] == {"matchLabels": labels}, resource["metadata"]["name"]
            ports = {
                p[k]
                for c in resource["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
                for k in ("name", "containerPort")
                if k in p
            }
            pods[resource["metadata"]["name"]] = (labels, ports)
    services = [r for r in resources if r["kind"] == "Service"]
    assert services
    for service in services:
        selector = service["spec"]["selector"]
        chosen = [name for name, (labels, _) in pods.items() if selector.items() <= labels.items()]
        assert len(chosen) == 1, f"Service {service['metadata']['name']} selects {chosen}"
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in pods[chosen[0]][1], port
    api_service = by_key(resources)["Service", API]
    assert [p["port"] for p in api_service["spec"]["ports"]] == [8000]
    labels = by_key(resources)["Deployment", API]["spec"]["template"]["metadata"]["labels"]
    assert api_service["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=name_of)
def test_no_secret_is_a_literal_every_one_comes_from_a_secret(directory: Path) -> None:
    resources = build(directory)
    assert "Secret" not in {r["kind"] for r in resources}, "Secrets are made apart (secret.example.yaml)"
    for workload, each in containers(resources):
        for item in each.get("env", []):
            where = f"{workload['metadata']['name']}/{each['name']}: {item['name']}"
            if SECRET_NAME.search(item["name"]) or item["name"] in SECRET_ENV:
                assert "value" not in item and "secretKeyRef" in item["valueFrom"], f"{where} must be a secretKeyRef"
            assert not URL_PASSWORD.search(str(item.get("value", ""))), f"{where}: a password in a URL"
        for source in each.get("envFrom", []):
            assert "secretRef" in source or "configMapRef" in source, source
    for resource in resources:
        for _, text in strings(resource):
            assert not URL_PASSWORD.search(text), f"{'/'.join(key(resource))}: a password in a URL"


def strings(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(node, dict):
        for k, value in node.items():
            yield from strings(value, (*path, str(k)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, (*path, str(index)))
    elif isinstance(node, str):
        yield path, node


def secret_references() -> set[tuple[str, str]]:
    """(Secret, key) of every secretKeyRef in every kustomization."""
    return {
        (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for _, resources in rendered()
        for _, each in containers(resources)
        for item in each.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }


def test_the_secret_example_documents_every_key_read_holds_no_value_and_is_applied_by_none() -> None:
    example = {
        (doc["metadata"]["name"], k): v for doc in documents(SECRET_EXAMPLE) for k, v in doc["stringData"].items()
    }
    for doc in documents(SECRET_EXAMPLE):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert set(example) == secret_references()
    assert all(value == "" for value in example.values()), "the example holds a value: leave them empty"
    for directory in KUSTOMIZATIONS:
        assert SECRET_EXAMPLE not in {path.resolve() for path in named_files(directory)}


def test_the_fp8_overlay_puts_the_worker_on_one_gpu_and_changes_nothing_else() -> None:
    base, fp8 = by_key(build(BASE)), by_key(build(DEPLOY / "overlays" / "h100-fp8"))
    worker = container(list(fp8.values()), WORKER)
    variables = env(worker)
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == int(variables["TENSOR_PARALLEL_SIZE"]) == 1
    assert variables["QUANTIZATION"] == variables["KV_CACHE_DTYPE"] == "fp8"
    unchanged = {
        k: v for k, v in variables.items() if k not in {"TENSOR_PARALLEL_SIZE", "QUANTIZATION", "KV_CACHE_DTYPE"}
    }
    assert unchanged == {
        k: v for k, v in env(container(list(base.values()), WORKER)).items() if k != "TENSOR_PARALLEL_SIZE"
    }
    assert {k: v for k, v in fp8.items() if k != ("Deployment", WORKER)} == {
        k: v for k, v in base.items() if k != ("Deployment", WORKER)
    }


def test_the_minio_overlay_adds_minio_whose_root_account_the_app_never_sees() -> None:
    base, minio = by_key(build(BASE)), by_key(build(DEPLOY / "overlays" / "minio"))
    added = set(minio) - set(base)
    assert added == {
        ("Deployment", "minio"),
        ("Service", "minio"),
        ("PersistentVolumeClaim", "minio-data"),
        ("Job", "minio-init"),
    }
    assert {k: minio[k] for k in base} == base
    assert minio["Service", "minio"]["spec"]["ports"][0]["port"] == 9000
    for workload, each in containers(list(minio.values())):
        reads_root = any(
            v.get("secretKeyRef", {}).get("name") == "llm-batch-minio"
            for v in env(each).values()
            if isinstance(v, dict)
        )
        assert reads_root == (workload["metadata"]["name"] in {"minio", "minio-init"}), workload["metadata"]["name"]


def test_the_autoscaler_scales_the_worker_from_zero_on_its_models_queue_depth() -> None:
    resources = build(DEPLOY / "overlays" / "keda")
    [scaled] = [r for r in resources if r["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and ("Deployment", target["name"]) in by_key(resources)
    assert target["name"] == WORKER
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0 and spec["pollingInterval"] > 0
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA's trigger metadata are strings"
    assert metadata["serverAddress"].startswith("http")
    assert float(metadata["threshold"]) > 0 and float(metadata["activationThreshold"]) == 0
    match = re.fullmatch(r'max\(llm_batch_queue_lines\{model="(?P<model>[^"]+)"\}\)', metadata["query"])
    assert match, metadata["query"]
    assert match["model"] == env(container(resources, WORKER))["SERVED_MODEL_NAME"]  # the name jobs claim by
    assert '"llm_batch_queue_lines"' in (ROOT / "app" / "api" / "prometheus.py").read_text()
    # The worker's replicas are the autoscaler's: a fixed count would be reset at each apply.
    assert "replicas" not in by_key(resources)["Deployment", WORKER]["spec"]


def test_with_the_autoscaler_the_api_stays_ready_while_no_worker_runs() -> None:
    """/readyz answers 503 with no worker: at zero workers the Service would have no API pod
    to take the batch that would scale them up."""
    resources = build(DEPLOY / "overlays" / "keda")
    assert container(resources, API)["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container(resources, API)["livenessProbe"] == container(build(BASE), API)["livenessProbe"]


def test_the_builder_merges_named_items_and_replaces_other_values() -> None:
    base = {"spec": {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "args": ["x"], "n": 1}}
    patch = {"spec": {"env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}], "args": ["y"], "n": None}}
    assert merge(base, patch) == {
        "spec": {
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
            "args": ["y"],
        }
    }
