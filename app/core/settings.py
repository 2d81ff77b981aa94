"""The one settings object, read from the environment (and `.env`) once per process."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.s3_source import parse_prefixes

DEMO_MODEL_PATH = Path("var/models/demo-llama")  # written by `make model` (app.tools.demo_model)
DEMO_EMBEDDING_MODEL_PATH = Path("var/models/demo-embed")  # likewise: a small BERT for /v1/embeddings
DEMO_LORA_PATH = Path("var/models/demo-lora")  # likewise: a LoRA adapter for the demo Llama

WorkerKind = Literal["generate", "embed"]  # what a worker holds: MODEL (generate) or EMBEDDING_MODEL (embed)


class Settings(BaseSettings):
    """Every tunable of the service. Empty means the embedded default."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Where state lives.
    database_url: str | None = Field(
        default=None, description="Postgres URL; unset starts an embedded Postgres under var_dir"
    )
    var_dir: Path = Field(default=Path("var"), description="folder for embedded Postgres, local storage, demo model")
    storage_url: str | None = Field(
        default=None, description="file:///path or s3://bucket/prefix; unset means var_dir/storage"
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto); unset is AWS")
    s3_region: str = "us-east-1"

    # The engine a worker holds.
    model: str = Field(default=str(DEMO_MODEL_PATH), description="model folder or Hugging Face id")
    served_model_name: str | None = Field(default=None, description="name jobs use; default: the model's last part")
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1, description="stages across nodes (with the Ray executor)")
    distributed_executor_backend: str | None = Field(
        default=None, description="'ray' to span machines; unset: vLLM's choice (processes on one machine)"
    )
    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, ge=16, description="context length; unset is the model's")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    prefix_caching: bool = Field(
        default=True, description="vLLM's prefix caching: lines that share a prompt prefix compute it once"
    )
    enforce_eager: bool | None = Field(default=None, description="unset: eager without CUDA, graphs with it")
    # vLLM's engine knobs for real models; unset leaves vLLM's default.
    max_num_seqs: int | None = Field(default=None, ge=1, description="sequences the engine runs at once")
    max_num_batched_tokens: int | None = Field(default=None, ge=1, description="tokens per engine step")
    kv_cache_dtype: str = Field(default="auto", description="auto, or fp8 (fp8_e4m3, fp8_e5m2): twice the KV cache")
    quantization: str | None = Field(
        default=None, description="fp8 (70B on one H100), awq, gptq, ...: vLLM's quantization method"
    )
    block_size: int | None = Field(default=None, ge=1, description="KV cache block, in tokens")
    kv_cache_memory_bytes: int | None = Field(
        default=None,
        ge=1 << 20,
        description="the KV cache's size in bytes, instead of a share of GPU memory (a tiny model on a big GPU "
        "would otherwise get millions of blocks and a slow start); unset: 512 MiB on the CPU build",
    )
    lora_modules: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="LoRA adapters of MODEL that a line's body.model may name: name=path,... (folder or HF id)",
    )
    max_lora_rank: int = Field(default=16, ge=1, description="the largest rank among LORA_MODULES (8, 16, 32, 64, ...)")
    compact_json: bool = Field(
        default=False,
        description="structured outputs with no free whitespace (vLLM's guidance backend, disable_any_whitespace), "
        "so a model cannot spend its max_tokens on blanks",
    )
    engine_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU builds: the nice value a worker and its engine run at, so the API and Postgres on "
        "the same host get the CPU first (polls stay fast while a job runs); 0 leaves the priority",
    )

    # The embedding engine: what a worker of kind `embed` holds, for jobs on /v1/embeddings.
    worker_kind: WorkerKind = Field(
        default="generate",
        description="what `python -m worker` holds: MODEL (generate) or EMBEDDING_MODEL (embed); flag --kind",
    )
    embedding_model: str = Field(
        default=str(DEMO_EMBEDDING_MODEL_PATH), description="embedding model folder or Hugging Face id"
    )
    embedding_served_model_name: str | None = Field(
        default=None, description="name embeddings jobs use; default: the embedding model's last part"
    )
    embedding_max_model_len: int | None = Field(
        default=None, ge=16, description="the embedding model's context length; unset is the model's"
    )
    embedding_gpu_memory_utilization: float = Field(
        default=0.1, gt=0, le=1, description="the embedding engine's share of GPU memory (it may share GPUs)"
    )
    embedding_worker: bool = Field(
        default=True, description="the launcher (make run) starts an embedding worker beside the generation ones"
    )

    # Jobs.
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="prompts per static batch (default for jobs); unset: fitted to the engine that runs the job "
        "(its max_num_seqs, cut to the lines its KV cache holds)",
    )
    max_static_batches_in_flight: int = Field(
        default=8,
        ge=1,
        le=1_000,
        description="overlapped batching: static batches in the engine and not yet recorded, at most "
        "(a worker killed mid-job loses these)",
    )
    gpu_hour_price: float | None = Field(
        default=None, ge=0, description="price of one accelerator-hour: batches show their cost from it"
    )
    default_max_tokens: int = Field(default=16, ge=1, description="max_tokens for lines that give none")
    shard_size: int = Field(
        default=2048,
        ge=1,
        description="lines per shard, the unit a worker claims: small, so a job spreads over every idle worker "
        "and a new job gets a worker's engine soon (a worker holds several shards at once and keeps its engine "
        "full across them)",
    )
    regroup_distance_lines: int = Field(
        default=256,
        ge=0,
        description="a job whose lines share a prompt prefix with a line more than this many lines before them "
        "(and none nearer) runs regrouped by prefix across the whole job (app.jobs.run_order); 0: never regroup",
    )
    max_shards_held: int = Field(
        default=4,
        ge=1,
        le=64,
        description="shards a generation worker holds at once, sharing its engine at static-batch grain by "
        "priority, deadline and fair share between owners",
    )
    lease_seconds: float = Field(default=60.0, gt=0, description="a claimed shard is re-claimable after this")
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    stop_grace_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a worker told to stop (SIGTERM) hands its static batches back and leaves; past this many "
        "seconds the kernel ends it (its engine's processes with it)",
    )
    poll_seconds: float = Field(
        default=5.0, gt=0, description="idle workers look for work this often (NOTIFY wakes them sooner)"
    )
    max_batch_attempts: int = Field(
        default=3,
        ge=1,
        description="a static batch that kills its worker this often goes to the error file; "
        "a finalization that fails this often ends its job failed",
    )
    # Quotas per owner (an admin overrides them per owner: POST /v1/limits, `llm-batch limits`).
    quota_stored_bytes: int = Field(
        default=200 << 30, ge=0, description="bytes an owner may keep stored: files, upload parts, results"
    )
    quota_queued_prompt_tokens: int = Field(
        default=2_000_000_000,
        ge=0,
        description="prompt tokens an owner may have queued per model (OpenAI's batch queue limit); a batch past it "
        "fails at once with token_limit_exceeded",
    )
    quota_open_batches: int = Field(default=1000, ge=0, description="batches an owner may have not yet ended")
    rate_limit_requests_per_minute: int = Field(
        default=6000,
        ge=0,
        description="requests per API key per minute, per API process (0: unlimited); polls once a second use 60",
    )
    max_reported_errors: int = Field(default=100, ge=1, description="line errors kept in a failed batch's errors")
    file_retention_days: int = Field(
        default=30,
        ge=0,
        description="days an upload without expires_after, or a batch's output and error files without "
        "output_expires_after, are kept before the sweeper deletes them (OpenAI's default for batch files); "
        "0 keeps them until deleted",
    )

    # API.
    heavy_work_threads: int = Field(
        default=2, ge=1, le=64, description="threads per API process for dry runs, retries and estimates"
    )
    api_processes: int = Field(
        default=1, ge=1, le=64, description="API processes the launcher runs on one port (uvicorn --workers)"
    )
    session_secret: str | None = Field(
        default=None, description="signs admin sessions; unset: random per API process (set it when running several)"
    )
    max_upload_bytes: int = Field(default=10 << 30, ge=1, description="largest upload accepted (413 beyond)")
    max_upload_lines: int = Field(default=10_000_000, ge=1, description="most lines in one batch input file")
    max_line_bytes: int = Field(default=1 << 20, ge=1, description="longest line of an upload (413 naming the line)")
    max_json_body_bytes: int = Field(
        default=1 << 20, ge=1, description="largest JSON request body (413 beyond; uploads have max_upload_bytes)"
    )
    upload_expires_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="an Upload (POST /v1/uploads) not completed this long after its creation expires; the "
        "sweeper removes its parts",
    )
    upload_part_max_bytes: int = Field(
        default=64 << 20, ge=1, description="largest part of an Upload (413 beyond; OpenAI's limit is 64 MB)"
    )
    import_allowed_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="s3://bucket/prefix,... that POST /v1/files with a `url` may import from, read with the "
        "service's own credentials; empty (the default) allows none",
    )
    sweep_seconds: float = Field(
        default=5.0, gt=0, description="how often each API process expires overdue jobs and finalizes waiting ones"
    )
    temporary_object_max_age_seconds: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="a write never finished (a local dot-file, an S3 multipart upload) untouched this long is "
        "abandoned (its process was killed mid-write): the sweeper removes it",
    )
    packing_window_batches: int = Field(
        default=8, ge=2, description="static batches per window that length-aware packing sorts (pack_by_length)"
    )
    estimate_sample_lines: int = Field(
        default=4_000,
        ge=1,
        description="a queued batch's estimate plans (tokenizes) this many lines spread over its file and scales up",
    )
    key_cache_seconds: float = Field(
        default=5.0, ge=0, description="how long the API trusts a verified key (a revoked key works this much longer)"
    )

    # Webhooks (each API process sends them: app.jobs.webhooks.WebhookSender).
    webhook_poll_seconds: float = Field(default=1.0, gt=0, description="how often a sender looks for due deliveries")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="a delivery's HTTP timeout")
    webhook_first_retry_seconds: float = Field(
        default=5.0, gt=0, description="the wait after a failed delivery; it doubles with each attempt"
    )
    webhook_max_retry_seconds: float = Field(default=3600.0, gt=0, description="the longest wait between attempts")
    webhook_max_age_seconds: float = Field(
        default=3 * 24 * 3600.0, gt=0, description="a delivery not made this long after its event is given up"
    )
    webhook_concurrency: int = Field(default=4, ge=1, description="deliveries one API process sends at once")
    webhook_allow_private_addresses: bool = Field(
        default=False,
        description="let webhook URLs resolve to loopback, link-local, private or multicast addresses "
        "(refused by default: an admin key must not reach the service's own network)",
    )

    host: str = "127.0.0.1"
    port: int = 8000

    @field_validator("lora_modules", mode="before")
    @classmethod
    def _parse_lora_modules(cls, value: Any) -> Any:
        return parse_lora_modules(value) if isinstance(value, str) else value

    @field_validator("import_allowed_prefixes", mode="before")
    @classmethod
    def _parse_import_prefixes(cls, value: Any) -> Any:
        return parse_prefixes(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_name_per_model(self) -> Settings:
        # Workers claim jobs by model name, so the two kinds must not share one.
        if self.model_name == self.embedding_model_name:
            raise ValueError(
                f"MODEL and EMBEDDING_MODEL are both served as {self.model_name!r}; "
                "give them different names (SERVED_MODEL_NAME, EMBEDDING_SERVED_MODEL_NAME)"
            )
        return self

    @model_validator(mode="after")
    def _adapters_are_not_the_base(self) -> Settings:
        if self.model_name in self.lora_modules:
            raise ValueError(f"LORA_MODULES names an adapter {self.model_name!r}, the base model's own name")
        return self

    @property
    def model_name(self) -> str:
        return self.served_model_name or _name_of(self.model)

    @property
    def embedding_model_name(self) -> str:
        return self.embedding_served_model_name or _name_of(self.embedding_model)

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.var_dir / 'storage').resolve()}"


def _name_of(model: str) -> str:
    """A local folder's last part, else the model's id as given."""
    return model.rstrip("/").split("/")[-1] if Path(model).exists() else model


def parse_lora_modules(text: str) -> dict[str, str]:
    """`name=path,name=path` into {name: path}; a name given twice, or without a path, is an error."""
    modules: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, path = (side.strip() for side in item.partition("="))
        if not sep or not name or not path:
            raise ValueError(f"LORA_MODULES: {item!r} is not name=path")
        if name in modules:
            raise ValueError(f"LORA_MODULES: adapter {name!r} is given twice")
        modules[name] = path
    return modules


@lru_cache
def get_settings() -> Settings:
    return Settings()
