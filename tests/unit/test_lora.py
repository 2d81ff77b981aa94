"""LoRA adapters per line: the setting, which model a line may name, the engine's
arguments and per-prompt requests, and the demo adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from safetensors.numpy import load_file

from app.core.settings import Settings, parse_lora_modules
from app.jobs.endpoints import CHAT_COMPLETIONS, COMPLETIONS, RESPONSES
from app.jobs.endpoints.base import JobDefaults, ModelLimits, PlanContext, ServedModels, UnsupportedRequest
from app.jobs.endpoints.generate_call import GenerationPlan, Sampling
from app.jobs.planning import plan_request
from app.tools.demo_model import HIDDEN_SIZE, LORA_RANK, NUM_LAYERS, build_lora
from tests.fakes import FixedTokens
from worker.adapters import lora_engine_kwargs, lora_requests

MODELS = ServedModels("demo-llama", frozenset({"pirate", "poet"}))
LIMITS = ModelLimits(max_model_len=256, vocab_size=256)


def plan(endpoint: str, body: dict[str, Any], models: ServedModels | None = MODELS) -> Sampling:
    raw = json.dumps({"custom_id": "a", "url": endpoint, "body": body}).encode()
    ctx = PlanContext(JobDefaults(max_tokens=4), LIMITS, FixedTokens([1, 2, 3]), models)
    planned = plan_request(raw, 0, endpoint, ctx)
    assert isinstance(planned, GenerationPlan)
    return planned.sampling


# The setting


def test_lora_modules_read_as_name_equals_path_pairs() -> None:
    assert parse_lora_modules("pirate=/m/pirate, poet = hf-user/poet-lora ,") == {
        "pirate": "/m/pirate",
        "poet": "hf-user/poet-lora",
    }
    assert parse_lora_modules("") == {}


@pytest.mark.parametrize(
    ("text", "message"), [("pirate", "not name=path"), ("a=/x,a=/y", "given twice"), ("=/x", "not name=path")]
)
def test_a_broken_lora_modules_setting_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_lora_modules(text)


def test_the_setting_comes_from_the_environment_and_may_not_reuse_the_base_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORA_MODULES", "pirate=/m/pirate,poet=/m/poet")
    assert Settings(model="org/base").lora_modules == {"pirate": "/m/pirate", "poet": "/m/poet"}
    monkeypatch.setenv("LORA_MODULES", "org/base=/m/x")
    with pytest.raises(ValidationError, match="base model's own name"):
        Settings(model="org/base")


# Which model a line may name


@pytest.mark.parametrize("endpoint", [COMPLETIONS, CHAT_COMPLETIONS, RESPONSES])
def test_a_line_naming_an_adapter_carries_it_to_the_engine(endpoint: str) -> None:
    key = {COMPLETIONS: "prompt", CHAT_COMPLETIONS: "messages", RESPONSES: "input"}[endpoint]
    value: Any = [{"role": "user", "content": "x"}] if key == "messages" else "x"
    assert plan(endpoint, {key: value, "model": "poet"}).lora_adapter == "poet"
    assert plan(endpoint, {key: value, "model": "demo-llama"}).lora_adapter is None
    assert plan(endpoint, {key: value}).lora_adapter is None


def test_a_line_naming_another_model_is_refused_naming_model() -> None:
    with pytest.raises(UnsupportedRequest) as caught:
        plan(COMPLETIONS, {"prompt": "x", "model": "gpt-4o"})
    refused = caught.value
    assert (refused.param, refused.code) == ("model", "model_not_found")
    assert "'gpt-4o'" in refused.message and "'demo-llama', 'pirate', 'poet'" in refused.message


def test_without_served_models_the_line_model_is_not_checked() -> None:
    assert plan(COMPLETIONS, {"prompt": "x", "model": "gpt-4o"}, models=None).lora_adapter is None


def test_served_models_come_from_the_settings() -> None:
    settings = Settings(model="org/base", lora_modules={"pirate": "/m/p"})
    assert ServedModels.of(settings) == ServedModels("org/base", frozenset({"pirate"}))


# The engine


def test_without_adapters_lora_stays_off() -> None:
    assert lora_engine_kwargs({}, 16, cuda=False) == {}


def test_without_cuda_the_engine_keeps_a_spare_adapter_slot() -> None:
    # vLLM 0.32's CPU kernels read a base-model request's slot -1 as the last slot.
    adapters = {"pirate": "/m/p", "poet": "/m/q"}
    assert lora_engine_kwargs(adapters, 8, cuda=False) == {"enable_lora": True, "max_loras": 3, "max_lora_rank": 8}
    assert lora_engine_kwargs(adapters, 8, cuda=True)["max_loras"] == 2


def test_each_prompt_gets_its_lines_adapter_or_none() -> None:
    adapters = {"pirate": "REQ-pirate", "poet": "REQ-poet"}
    sampling = [Sampling(1, lora_adapter="poet"), Sampling(1), Sampling(1, lora_adapter="pirate")]
    assert lora_requests(adapters, sampling) == ["REQ-poet", None, "REQ-pirate"]
    assert lora_requests(adapters, [Sampling(1)]) is None  # the call stays as without LoRA


# The demo adapter


def test_the_demo_adapter_is_peft_lora_for_q_and_v_and_the_same_on_every_run(tmp_path: Path) -> None:
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, seed in ((first, 1), (second, 1), (other, 2)):
        folder.mkdir()
        build_lora(folder, seed)
    weights = (first / "adapter_model.safetensors").read_bytes()
    assert weights == (second / "adapter_model.safetensors").read_bytes()
    assert weights != (other / "adapter_model.safetensors").read_bytes()
    config = json.loads((first / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["target_modules"]) == ("LORA", 8, ["q_proj", "v_proj"])
    tensors = load_file(str(first / "adapter_model.safetensors"))
    assert len(tensors) == NUM_LAYERS * 2 * 2
    a = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    assert a.shape == (LORA_RANK, HIDDEN_SIZE) and b.shape == (HIDDEN_SIZE, LORA_RANK)
    assert abs(b).max() > 0  # not PEFT's zero init: the adapter changes what the model says
