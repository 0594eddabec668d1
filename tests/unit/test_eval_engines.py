"""Engine choice for the evaluator (vLLM where installed and able, HF otherwise), the spec's
`engine` field at the door, and which interpreter the embedded stack runs a service with."""
from __future__ import annotations

import sys

import pytest

from ftlab import stack
from services.common.contract.errors import ValidationError
from services.evaluator import engines
from services.evaluator.config import resolve_evaluate_spec

BNB = {"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}
LLAMA = {"hidden_size": 576, "num_attention_heads": 9}  # SmolLM2-135M: head_dim 64


def test_choice_follows_request_installation_and_format(monkeypatch):
    monkeypatch.setattr(engines, "vllm_installed", lambda: True)
    assert engines.choose("auto", None) == ("vllm", "installed")
    assert engines.choose("vllm", None) == ("vllm", "requested")
    assert engines.choose("hf", None) == ("hf", "requested")
    assert engines.choose("auto", "bitsandbytes checkpoint") == ("hf", "bitsandbytes checkpoint")
    with pytest.raises(ValueError, match="cannot load this model: bitsandbytes"):
        engines.choose("vllm", "bitsandbytes checkpoint")
    monkeypatch.setattr(engines, "vllm_installed", lambda: False)
    assert engines.choose("auto", None) == ("hf", "vLLM not installed")
    with pytest.raises(ValueError, match="not installed"):
        engines.choose("vllm", None)


def test_refusals_name_the_format():
    assert "bitsandbytes" in engines.vllm_refusal(BNB, {}, adapter_only=False)
    # a quantized model's spec says what its PTQ plugin said about its format
    assert "hqq" in engines.vllm_refusal(LLAMA, {"vllm_loads": False, "format": "hqq"}, adapter_only=False)
    assert "QLORA" in engines.vllm_refusal(LLAMA, {"method": "QLORA"}, adapter_only=True)
    assert engines.vllm_refusal(LLAMA, {"method": "NoQuant"}, adapter_only=True) is None
    cfg = {"quantization_config": {"quant_method": "compressed-tensors", "format": "int-quantized"}, **LLAMA}
    assert engines.vllm_refusal(cfg, {"method": "smoothquant_w8a8"}, adapter_only=False) is None


def test_select_reads_the_stored_model(seeded_store, monkeypatch):
    monkeypatch.setattr(engines, "vllm_installed", lambda: False)
    assert engines.select(seeded_store, "Qwen3-tiny-base", "auto") == ("hf", "vLLM not installed")


def test_spec_engine_at_the_door(seeded_store):
    base = {"model": "Qwen3-tiny-base", "tasks": [{"task": "ai2_arc", "limit": 2}]}
    assert "engine" not in resolve_evaluate_spec(base, seeded_store)  # default: the eval id does not move
    cfg = resolve_evaluate_spec({**base, "engine": "hf", "engine_check": 4}, seeded_store)
    assert cfg["engine"] == "hf" and cfg["engine_check"] == 4
    with pytest.raises(ValidationError) as err:
        resolve_evaluate_spec({**base, "engine": "tgi", "engine_check": -1, "batch_size": 0}, seeded_store)
    msg = str(err.value)
    assert "engine: 'tgi' is not one of auto, hf, vllm" in msg and "engine_check" in msg and "batch_size" in msg



def test_unknown_task_does_not_hide_a_bad_limit(seeded_store):
    # `ftlab eval --task nosuch --limit -1` reported only the task: every problem at once
    with pytest.raises(ValidationError) as err:
        resolve_evaluate_spec({"model": "Qwen3-tiny-base", "tasks": [{"task": "nosuch", "limit": -1}]},
                              seeded_store)
    msg = str(err.value)
    assert "tasks[0].task: unknown task 'nosuch'" in msg and "tasks[0].limit: -1 must be in" in msg

def test_stack_runs_a_service_from_its_own_environment(monkeypatch):
    monkeypatch.setenv("FTLAB_EVALUATOR_PYTHON", "/opt/eval/bin/python")
    assert stack.service_python("evaluator") == "/opt/eval/bin/python"
    assert stack.service_python("trainer") == sys.executable  # no .venv-trainer
