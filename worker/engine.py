"""The engine a worker holds for its whole life: one `vllm.LLM`, tensor parallel.

`Engine` is the narrow surface the worker uses, so unit tests can hand it a fake;
`VllmEngine` is the real one. Its kind is the worker's (`Settings.worker_kind`): a
generation engine holds MODEL and runs `LLM.generate`; an embedding engine holds
EMBEDDING_MODEL with vLLM's pooling runner and runs `LLM.embed` (and `LLM.score`, for
score and rerank lines).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from app.core.settings import Settings
from app.jobs.endpoints.base import ModelLimits, ServedModels, Tokenizer, WorkerKind
from app.jobs.endpoints.embed_call import Embeddings, Pooling
from app.jobs.endpoints.generate_call import Generation, Sampling
from app.jobs.endpoints.score_call import Scores
from worker.adapters import load_adapters, lora_requests
from worker.engine_args import embedding_kwargs, generation_kwargs, has_cuda
from worker.engine_outputs import generation

log = logging.getLogger(__name__)


class RequestRejected(ValueError):
    """The engine refused a request of a static batch; the engine itself is fine, so the
    batch can be split to find the request (a dead engine raises anything else). `field`
    is the `SamplingParams` (or `PoolingParams`) field refused, when known
    (`app.jobs.planning.line_param` turns it into the line's field)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    @classmethod
    def of(cls, exc: Exception, field: str | None = None) -> RequestRejected:
        """vLLM's refusal, with the field it names (its validation errors carry `parameter`)."""
        return cls(str(exc), field or getattr(exc, "parameter", None))


class EngineFailed(RuntimeError):
    """The engine raised while running requests: its state is unknown, so the worker
    process must end (its supervisor starts a fresh engine)."""


class Engine(Protocol):
    model_name: str
    kind: WorkerKind  # which of generate / embed it runs
    limits: ModelLimits  # context length and vocabulary, checked when a line is planned
    tensor_parallel_size: int
    kv_cache_tokens: int | None  # the KV cache's capacity, when the engine says
    max_num_seqs: int  # sequences the engine's scheduler runs at once
    models: ServedModels  # what a line's `model` may name: the base model or a LoRA adapter of it
    tokenizer: Tokenizer  # the model's, which each line's kind plans (tokenizes) it with

    # The engine calls' methods (`generate`, `enqueue`, `embed`, `score`, and their checks)
    # are each call's to name (app.jobs.endpoints: a call's module declares the engine surface
    # it runs on); the worker hands the engine to the call.

    def step(self) -> list[tuple[str, Any]]:
        """One engine step: the requests enqueued (by an overlapping call) that finished in
        it, by request id, each as its call's result. Only called while `unfinished()` is
        above 0."""

    def unfinished(self) -> int:
        """Requests enqueued and not yet returned by `step`."""

    def abort(self, request_ids: list[str]) -> None:
        """Drops enqueued requests (a cancelled job, a stopping worker)."""


WARM_UP_TOKENS = 16


class VllmEngine:
    def __init__(self, settings: Settings) -> None:
        from vllm import LLM

        cuda = has_cuda()
        self.kind: WorkerKind = settings.worker_kind
        embed = self.kind == "embed"
        kwargs = embedding_kwargs(settings, cuda) if embed else generation_kwargs(settings, cuda)
        log.info("loading %s with %s", kwargs["model"], kwargs)
        self.llm = LLM(**kwargs)
        self.tokenizer: Any = self.llm.get_tokenizer()  # a Hugging Face tokenizer: the Tokenizer planning uses
        self.model_name = str(kwargs["served_model_name"])
        model_config = self.llm.llm_engine.model_config
        dimensions = model_config.matryoshka_dimensions if embed else None
        vocab_size = max(int(model_config.get_vocab_size()), len(self.tokenizer))
        self.limits = ModelLimits(
            max_model_len=int(model_config.max_model_len),
            vocab_size=vocab_size,
            embedding_size=int(model_config.embedding_size) if embed else None,
            matryoshka=embed and bool(model_config.is_matryoshka),
            matryoshka_dimensions=tuple(dimensions) if dimensions else None,
            max_logprobs=int(model_config.max_logprobs) if model_config.max_logprobs >= 0 else vocab_size,
        )
        self.tensor_parallel_size = 1 if embed else settings.tensor_parallel_size
        cache = self.llm.llm_engine.vllm_config.cache_config
        self.kv_cache_tokens = None if embed else (cache.num_gpu_blocks or 0) * cache.block_size or None
        self.max_num_seqs = int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)
        # LoRA adapters are the generation model's: an embedding engine serves its model alone.
        self.adapters = {} if embed else load_adapters(self.llm, settings.lora_modules)
        self.models = ServedModels(self.model_name, frozenset(self.adapters))
        self._enqueued: dict[str, int | None] = {}  # enqueued, unfinished request id -> its top logprobs asked
        if not cuda:
            self._warm_up()

    def _warm_up(self) -> None:
        """One small request before any line runs. On this CPU build (vLLM 0.32, x86 with
        AMX) the engine's worker process dies of SIGILL when its very first forward pass
        has only a few tokens (a static batch of 3-token prompts, say): one pass of
        WARM_UP_TOKENS tokens first, and later short ones run (tests/e2e/test_engine_warm_up.py)."""
        from vllm import PoolingParams, SamplingParams
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=[self.tokenizer.eos_token_id or 0] * WARM_UP_TOKENS)
        if self.kind == "embed":
            self.llm.embed([prompt], pooling_params=PoolingParams(), use_tqdm=False)
        else:
            self.llm.generate([prompt], SamplingParams(max_tokens=1), use_tqdm=False)

    def _pooling_params(self, pooling: Pooling) -> Any:
        from vllm import PoolingParams
        from vllm.exceptions import VLLMClientError

        try:
            return PoolingParams(**pooling.engine_kwargs())
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise RequestRejected.of(exc) from exc

    def check_pooling(self, pooling: Pooling) -> None:
        """What vLLM checks when an embeddings request is added (`dimensions` above all)."""
        from vllm.exceptions import VLLMClientError

        params = self._pooling_params(pooling)
        params.task = "embed"
        try:
            params.verify(self.llm.llm_engine.model_config)
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise RequestRejected.of(exc) from exc

    def embed(self, inputs: list[list[list[int]]], pooling: list[Pooling]) -> list[Embeddings]:
        """One static batch of embeddings requests (each a list of inputs): every input of
        every request in one `embed` call. RequestRejected when the engine refuses one."""
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        prompts, params = [], []
        for request_inputs, line_pooling in zip(inputs, pooling, strict=True):
            request_params = self._pooling_params(line_pooling)
            for ids in request_inputs:
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                params.append(request_params)
        try:
            outputs = self.llm.embed(prompts, pooling_params=params, use_tqdm=False)
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise RequestRejected.of(exc) from exc  # vLLM aborts the requests it had added
        results, start = [], 0
        for request_inputs in inputs:
            mine = outputs[start : start + len(request_inputs)]
            start += len(request_inputs)
            results.append(
                Embeddings(
                    prompt_tokens=sum(len(out.prompt_token_ids) for out in mine),
                    vectors=[out.outputs.embedding for out in mine],
                )
            )
        return results

    def score(self, pairs: list[list[tuple[str, str]]]) -> list[Scores]:
        """All pairs flattened N -> N into one `LLM.score`, the scores split back per request;
        a request's tokens are its pairs' (`prompt_token_ids`: both texts, and the pad token
        vLLM puts between them)."""
        from vllm.exceptions import VLLMClientError

        first: list[Any] = [text for request in pairs for text, _ in request]
        second: list[Any] = [text for request in pairs for _, text in request]
        try:
            outputs = self.llm.score(first, second, use_tqdm=False)
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise RequestRejected.of(exc) from exc
        failed = next((out.error for out in outputs if out.error is not None), None)
        if failed is not None:
            raise RequestRejected(str(failed))
        results, start = [], 0
        for request in pairs:
            mine = outputs[start : start + len(request)]
            start += len(request)
            results.append(
                Scores(
                    prompt_tokens=sum(len(out.prompt_token_ids) for out in mine),
                    scores=[float(out.outputs.score) for out in mine],
                )
            )
        return results

    def _sampling_params(self, sampling: Sampling, structured_outputs: bool = True) -> Any:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import StructuredOutputsParams

        kwargs = sampling.engine_kwargs()
        if not structured_outputs:
            kwargs.pop("structured_outputs", None)
        structured = kwargs.get("structured_outputs")
        if structured is not None:
            try:
                kwargs = {**kwargs, "structured_outputs": StructuredOutputsParams(**structured)}
            except (VLLMClientError, ValueError, TypeError) as exc:
                raise RequestRejected.of(exc, "structured_outputs") from exc
        try:
            return SamplingParams(**kwargs)
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise RequestRejected.of(exc) from exc

    def check(self, sampling: Sampling) -> None:
        """What vLLM checks when a request is added (logprobs, stop tokens, structured output
        grammar, ...), asked before the request joins a static batch. The structured output
        is checked last, on its own, so a grammar that does not compile (vLLM names no
        field then) is refused as `structured_outputs`."""
        self._verify(self._sampling_params(sampling, structured_outputs=False))
        if sampling.structured_outputs is not None:
            try:
                self._verify(self._sampling_params(sampling))
            except RequestRejected as refusal:
                raise RequestRejected(str(refusal), "structured_outputs") from refusal

    def _verify(self, params: Any) -> None:
        from vllm.exceptions import VLLMClientError

        processor = self.llm.llm_engine.input_processor
        try:
            params.verify(
                processor.model_config,
                processor.speculative_config,
                processor.structured_outputs_config,
                processor.tokenizer,
            )
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise RequestRejected.of(exc) from exc

    def generate(self, prompts: list[list[int]], sampling: list[Sampling]) -> list[Generation]:
        """One static batch: every prompt in one `generate` call. RequestRejected when the
        engine refuses one of them (it runs none then)."""
        from vllm.inputs import TokensPrompt

        params = [self._sampling_params(line) for line in sampling]
        lora = lora_requests(self.adapters, sampling)  # one per prompt, or None: no line names an adapter
        with self._refusals():
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False, lora_request=lora
            )
        return [generation(out, s.logprobs, self.tokenizer) for out, s in zip(outputs, sampling, strict=True)]

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[tuple[float, bool]]]:
        """One static batch read, not generated (vLLM's `prompt_logprobs`; one token is drawn
        and dropped): each prompt's tokens after its first, as (log probability, whether it
        is the model's most likely token there). RequestRejected when the engine refuses one."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=1)
        with self._refusals():
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
        scored = []
        for ids, out in zip(prompts, outputs, strict=True):
            entries = out.prompt_logprobs or [None]
            tokens = []
            for token, entry in zip(ids[1:], entries[1:], strict=True):
                assert entry is not None  # only the first prompt token has none
                chosen = entry[token]
                tokens.append((float(chosen.logprob), chosen.rank == 1))  # ranks count from 1
            scored.append(tokens)
        return scored

    def enqueue(self, prompts: list[list[int]], sampling: list[Sampling], priority: int = 0) -> list[str]:
        """Adds a static batch's requests to the running engine without waiting for them;
        their request ids, in order. Waiting requests of a higher `priority` (a job's) are
        scheduled first, equal ones first come first served. RequestRejected when the engine
        refuses one (it keeps none of them then)."""
        from vllm.inputs import TokensPrompt

        params = [self._sampling_params(line) for line in sampling]
        lora = lora_requests(self.adapters, sampling)
        with self._refusals():
            internal = self.llm.enqueue(
                [TokensPrompt(prompt_token_ids=ids) for ids in prompts],
                params,
                use_tqdm=False,
                lora_request=lora,
                priority=[-priority] * len(prompts),  # vLLM takes the lowest value first
            )
        # vLLM answers with its internal ids: the id `LLM` gave (a counter, digits only), a
        # dash and a random suffix. A finished request's output carries the id given.
        ids = [request_id.split("-", 1)[0] for request_id in internal]
        for request_id, line in zip(ids, sampling, strict=True):
            self._enqueued[request_id] = line.logprobs
        return ids

    def step(self) -> list[tuple[str, Generation]]:
        finished = []
        for out in self.llm.llm_engine.step():
            if out.finished and out.request_id in self._enqueued:
                top_n = self._enqueued.pop(out.request_id)
                finished.append((out.request_id, generation(out, top_n, self.tokenizer)))
        return finished

    def unfinished(self) -> int:
        return len(self._enqueued)

    def abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self._enqueued.pop(request_id, None)
        self.llm.llm_engine.abort_request(request_ids, internal=False)

    @contextmanager
    def _refusals(self) -> Iterator[None]:
        """vLLM refusing a request while it is added, as RequestRejected (the engine runs on)."""
        from vllm.exceptions import VLLMClientError

        try:
            yield
        except (VLLMClientError, ValueError, TypeError) as exc:
            # Raised while the requests were added: vLLM took none of them (it aborts the ones
            # already added), and the engine runs on.
            raise RequestRejected.of(exc) from exc
        except OverflowError as exc:
            # A number too large to send to the engine core (a seed past 64 bits, say): the
            # request is registered but never sent, and would hang the next step. Drop the
            # requests that never reached the core (the ones of earlier static batches did).
            states = self.llm.llm_engine.output_processor.request_states
            unsent = [rid for rid, state in states.items() if state.external_req_id not in self._enqueued]
            self.llm.llm_engine.abort_request(unsent, internal=True)
            raise RequestRejected.of(exc) from exc

    def shutdown(self) -> None:
        """Stops the engine's processes; without this, interpreter exit waits on them."""
        self.llm.llm_engine.engine_core.shutdown()
