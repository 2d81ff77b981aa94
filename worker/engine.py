"""The engine a worker holds for its whole life: one `vllm.LLM`, tensor parallel.

`Engine` is the narrow surface the worker uses, so unit tests can hand it a fake;
`VllmEngine` is the real one.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Protocol

from app.core.settings import Settings
from app.jobs.lines import Request
from app.jobs.output_lines import Choice, Generation, RequestTiming, TokenLogprob
from app.jobs.planning import LORA_ADAPTER, ModelLimits, ServedModels, prompt_token_ids
from worker.adapters import load_adapters, lora_engine_kwargs, lora_requests

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 512 << 20  # without a GPU: plenty for the demo model, small beside RAM


class RequestRejected(ValueError):
    """The engine refused a request of a static batch; the engine itself is fine, so the
    batch can be split to find the request (a dead engine raises anything else)."""


class Engine(Protocol):
    model_name: str
    limits: ModelLimits  # context length and vocabulary, checked when a line is planned
    tensor_parallel_size: int
    kv_cache_tokens: int | None  # the KV cache's capacity, when the engine says
    models: ServedModels  # what a line's `model` may name: the base model or a LoRA adapter of it

    def prompt_token_ids(self, request: Request) -> list[int]:
        """The request's prompt as the model sees it (chat template applied)."""

    def check(self, sampling: dict[str, Any]) -> None:
        """Raises RequestRejected for sampling parameters the engine would refuse."""

    def generate(self, prompts: list[list[int]], sampling: list[dict[str, Any]]) -> list[Generation]:
        """One static batch: every prompt in one `generate` call. RequestRejected when the
        engine refuses one of them (it runs none then)."""


def has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None or bool(os.environ.get("CUDA_VISIBLE_DEVICES"))


class VllmEngine:
    def __init__(self, settings: Settings) -> None:
        from vllm import LLM

        cuda = has_cuda()
        kwargs: dict[str, Any] = {
            "model": settings.model,
            "served_model_name": settings.model_name,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "pipeline_parallel_size": settings.pipeline_parallel_size,
            "dtype": settings.dtype,
            "gpu_memory_utilization": settings.gpu_memory_utilization,
            "enforce_eager": settings.enforce_eager if settings.enforce_eager is not None else not cuda,
        }
        if settings.distributed_executor_backend:
            kwargs["distributed_executor_backend"] = settings.distributed_executor_backend
        if settings.max_model_len:
            kwargs["max_model_len"] = settings.max_model_len
        if not cuda:
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        kwargs["disable_log_stats"] = False  # per-request timings and preemptions, for app.jobs.telemetry
        kwargs.update(lora_engine_kwargs(settings.lora_modules, settings.max_lora_rank, cuda))
        if settings.compact_json:  # a per-request disable_any_whitespace is ignored by vLLM 0.32
            kwargs["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
        log.info("loading %s with %s", settings.model, kwargs)
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_name = settings.model_name
        model_config = self.llm.llm_engine.model_config
        self.limits = ModelLimits(
            max_model_len=int(model_config.max_model_len),
            vocab_size=max(int(model_config.get_vocab_size()), len(self.tokenizer)),
        )
        self.tensor_parallel_size = settings.tensor_parallel_size
        cache = self.llm.llm_engine.vllm_config.cache_config
        self.kv_cache_tokens = (cache.num_gpu_blocks or 0) * cache.block_size or None
        self.adapters = load_adapters(self.llm, settings.lora_modules)
        self.models = ServedModels(self.model_name, frozenset(self.adapters))

    def prompt_token_ids(self, request: Request) -> list[int]:
        return prompt_token_ids(self.tokenizer, request)

    def _sampling_params(self, kwargs: dict[str, Any]) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        kwargs = {name: value for name, value in kwargs.items() if name != LORA_ADAPTER}
        structured = kwargs.get("structured_outputs")
        if structured is not None:
            kwargs = {**kwargs, "structured_outputs": StructuredOutputsParams(**structured)}
        try:
            return SamplingParams(**kwargs)
        except (ValueError, TypeError) as exc:
            raise RequestRejected(str(exc)) from exc

    def check(self, sampling: dict[str, Any]) -> None:
        """What vLLM checks when a request is added (logprobs, stop tokens, structured output
        grammar, ...), asked before the request joins a static batch."""
        from vllm.exceptions import VLLMClientError

        params = self._sampling_params(sampling)
        processor = self.llm.llm_engine.input_processor
        try:
            params.verify(
                processor.model_config,
                processor.speculative_config,
                processor.structured_outputs_config,
                processor.tokenizer,
            )
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise RequestRejected(str(exc)) from exc

    def generate(self, prompts: list[list[int]], sampling: list[dict[str, Any]]) -> list[Generation]:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        params = [self._sampling_params(kwargs) for kwargs in sampling]
        lora = lora_requests(self.adapters, sampling)  # one per prompt, or None: no line names an adapter
        try:
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False, lora_request=lora
            )
        except (VLLMClientError, ValueError, TypeError) as exc:
            # Raised while the requests were added: vLLM took none of them (it aborts the ones
            # already added), and the engine runs on.
            raise RequestRejected(str(exc)) from exc
        except OverflowError as exc:
            # A number too large to send to the engine core (a seed past 64 bits, say): the
            # request is registered but never sent, and would hang the next call. Drop it.
            self.llm.llm_engine.abort_request(list(self.llm.llm_engine.output_processor.request_states), internal=True)
            raise RequestRejected(str(exc)) from exc
        return [
            Generation(
                prompt_tokens=len(out.prompt_token_ids or []),
                choices=[
                    Choice(
                        text=choice.text,
                        completion_tokens=len(choice.token_ids),
                        finish_reason=choice.finish_reason or "stop",
                        logprobs=self._logprobs(choice, kw.get("logprobs")),
                    )
                    for choice in out.outputs
                ],
                timing=_timing(out.metrics),
            )
            for out, kw in zip(outputs, sampling, strict=True)
        ]

    def _logprobs(self, choice: Any, top_n: int | None) -> list[TokenLogprob] | None:
        if top_n is None or choice.logprobs is None:
            return None
        tokens = []
        for token_id, candidates in zip(choice.token_ids, choice.logprobs, strict=False):
            chosen = candidates[token_id]
            ranked = sorted(
                (c for c in candidates.values() if c.rank is not None and c.rank <= top_n), key=lambda c: c.rank
            )
            tokens.append(
                TokenLogprob(
                    token=self._token_text(token_id, chosen.decoded_token),
                    logprob=float(chosen.logprob),
                    top=[(c.decoded_token or "", float(c.logprob)) for c in ranked],
                )
            )
        return tokens

    def _token_text(self, token_id: int, decoded: str | None) -> str:
        return decoded if decoded is not None else str(self.tokenizer.decode([token_id]))

    def shutdown(self) -> None:
        """Stops the engine's processes; without this, interpreter exit waits on them."""
        self.llm.llm_engine.engine_core.shutdown()


def _timing(stats: Any) -> RequestTiming | None:
    """vLLM's per-request stats (present when stats logging is on)."""
    if stats is None or not getattr(stats, "first_token_ts", 0):
        return None
    return RequestTiming(
        scheduled=float(stats.scheduled_ts),
        first_token=float(stats.first_token_ts),
        last_token=float(stats.last_token_ts),
        preemptions=int(stats.num_preemptions),
    )
