"""What the tables hold as JSON, as pydantic types: a job's defaults (`JobDefaults`), its
estimate (`JobEstimate`) and its run input (`RunInput`), a file's upload check
(`UploadCheck`), the entries a batch's errors list (`JobError`), and what the engine said of
a window (`EngineTelemetry`). The columns read and
write them through `app.core.json_column.PydanticJSON`; each keeps the JSON shape the
column held before it was typed, so rows written before read back unchanged."""

from __future__ import annotations

from typing import Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict  # pydantic reads this one, not typing's, before Python 3.12

from app.core.line_offsets import LineOffsets


class JobError(TypedDict):
    """An entry of a batch's `errors.data` (OpenAI's shape): a line that breaks the input
    format (`line` counts from 1, as editors do), or why the batch failed as a whole."""

    code: str
    message: str
    param: str | None
    line: NotRequired[int]


class JobDefaults(BaseModel):
    """What a job sets for all its lines (stored on the job as `sampling_defaults`, less the
    fields left at their defaults)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    max_tokens: int  # for lines that give none
    truncate_prompts: bool = False  # keep a too-long prompt's end instead of failing the line
    pack_window: int | None = None  # length-aware packing: static batches per window
    # overlapped (worker.overlap), or strict: one blocking generate per static batch.
    batching: Literal["overlapped", "strict"] = "overlapped"


class UploadCheck(BaseModel):
    """What the upload check (app.jobs.upload_check) found in a batch input file, stored on
    its file record with where its lines start. A file not checked (not batch input, or a
    batch's output) has none of it: stored as {}, only the fields given are."""

    model_config = ConfigDict(frozen=True)

    errors: list[JobError] = Field(default_factory=list)  # the first line errors, in line order
    error_count: int = 0  # every line error, those past the first included
    first_line_of: dict[str, int] = Field(default_factory=dict)  # endpoint, or "plain:<field>" -> its first line
    line_offsets: LineOffsets | None = None  # where every N-th line starts
    # where every N-th entry of the file's line index (app.jobs.line_index: every line's
    # custom_id, stored beside the file) starts; None: no index (uploaded before there was one)
    custom_ids: LineOffsets | None = None


class RunInput(BaseModel):
    """Where a regrouped job's lines are read from (app.jobs.run_order): `key` holds them in
    run order, `order_key` the input index of each (little-endian uint32), `line_offsets`
    where every N-th starts."""

    model_config = ConfigDict(frozen=True)

    key: str
    order_key: str
    line_offsets: LineOffsets


# A job's estimate (app.jobs.estimate), stored on it while queued; the API shows it.


class FailingLine(BaseModel):
    """A line that would go to the error file, and why."""

    line: int
    custom_id: str
    code: str
    param: str | None
    message: str


class LineCounts(BaseModel):
    lines: int = 0
    runnable_lines: int = 0
    prompt_tokens: int = Field(default=0, description="counted with the model's tokenizer, chat template applied")
    requested_output_tokens: int = Field(default=0, description="the sum of every runnable line's max_tokens times n")
    failing_lines: int = Field(default=0, description="lines that would go to the error file")
    failing: list[FailingLine] = Field(default_factory=list, description="the first of them, with the reason")
    context_length: int = 0
    sampled_lines: int | None = Field(default=None, description="set when the counts were scaled up from this many")


class Eta(BaseModel):
    eta_seconds: float | None = Field(description="null when no worker has measured this model at this batch size")
    basis: str = Field(description="where the ETA comes from")
    tokens_per_second_per_worker: float | None = None
    ready_workers: int


class JobEstimate(LineCounts, Eta):
    """Lines, prompt tokens, requested output tokens, failing lines and an ETA."""

    batch_size: int | None = Field(description="null: fitted to the engine that runs the batch")


class EngineTelemetry(BaseModel):
    """What the engine's timings say about one static batch, or several combined
    (app.jobs.telemetry computes it; a window stores it as `engine_stats`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # a field dropped since is ignored

    prefill_seconds: float
    prefill_tokens_per_second: float | None
    decode_seconds: float
    decode_tokens_per_second: float | None
    idle_tail_seconds: float
    idle_tail_fraction: float
    preemptions: int
    kv_cache_demand: float | None
    static_batches: int = 1
    cached_prompt_tokens: int = 0  # prefix cache hits: prompt tokens not computed again
