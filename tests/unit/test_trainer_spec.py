"""Trainer spec validation, the torch-free memory estimate and the Qwen3 catalogue (no torch, no
service: the door and the arithmetic)."""
from __future__ import annotations

import pytest

from services.common.contract.errors import NotFoundError, PreconditionError, ValidationError
from services.trainer import memory
from services.trainer.config import TRAINING_QUANT, TrainConfig, resolve_train_spec
from services.trainer.peft import PEFT_METHODS
from tests.conftest import TINY, snapshot

BASE = {"base_model": TINY, "dataset": "arc"}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, tiny_model_dir):
    from services.common.torch_utils import modeling
    from services.common.data.importing import import_dataset
    from services.common.storage.store import LocalStore
    from tests.conftest import SEED_DATA
    s = LocalStore(tmp_path_factory.mktemp("spec-store"))
    s.ensure_buckets()
    modeling.commit_base_model(s, TINY, tiny_model_dir, {"source": "tiny-random-qwen3"})
    import_dataset(s, "arc", "seed", SEED_DATA)
    return s


def test_registries_name_the_studys_configurations():
    assert list(PEFT_METHODS)[:4] == ["lora", "dora", "vera", "none"]  # the study's, first in listings
    assert {k: v.value for k, v in TRAINING_QUANT.items()} == {"none": "NoQuant", "qlora": "QLORA", "int8": "INT8"}


@pytest.mark.parametrize("spec,name", [
    ({"peft_method": "lora", "lora": {"r": 256}}, "Qwen3-tiny-arc_SFT_LoRa256_NoQuant"),
    ({"peft_method": "dora", "lora": {"r": 16}, "training_quant": "qlora"}, "Qwen3-tiny-arc_SFT_DoRa16_QLORA_w4_headbf16"),
    ({"peft_method": "vera", "lora": {"r": 512}}, "Qwen3-tiny-arc_SFT_VeRa512_NoQuant"),
    ({"peft_method": "none"}, "Qwen3-tiny-arc_SFT_NoPeft_NoQuant"),
    ({"peft_method": "lora", "training_quant": "int8"}, "Qwen3-tiny-arc_SFT_LoRa8_Int8_BnB"),
])
def test_names_follow_the_study(tiny_store, spec, name):
    cfg = resolve_train_spec({**BASE, **spec}, tiny_store)
    assert cfg["output_name"] == name
    assert cfg["checkpoint_prefix"].startswith(f"checkpoints/trainer/{name}-")
    assert cfg["memory_estimate_gb"] > 0 and cfg["memory_estimate"]["total_gb"] == cfg["memory_estimate_gb"]


def test_every_problem_is_named_and_nothing_written(tiny_store):
    before = snapshot(tiny_store)
    with pytest.raises(ValidationError) as exc:
        resolve_train_spec({**BASE, "peft_method": "lorax", "training_quant": "int3", "optimizer": "lion",
                            "lora": {"r": 0, "alpha": 0, "target_modules": [" "]}, "per_device_batch_size": 0,
                            "warmup_ratio": 2.0, "resume": "sometimes", "world_size": 0}, tiny_store)
    msg = str(exc.value)
    for fragment in ("peft_method: unknown 'lorax'", "known: lora, dora, vera, none", "training_quant: unknown 'int3'",
                     "optimizer: unknown 'lion'", "per_device_batch_size", "warmup_ratio", "resume: unknown",
                     "world_size", "lora.r: 0", "lora.alpha: 0", "lora.target_modules"):
        assert fragment in msg, fragment
    with pytest.raises(ValidationError) as exc:
        resolve_train_spec({**BASE, "lora": {"r": -1, "alpha": -2, "target_modules": [""]}}, tiny_store)
    for fragment in ("lora.r: -1", "lora.alpha: -2", "lora.target_modules"):
        assert fragment in str(exc.value)
    with pytest.raises(ValidationError, match=r"lora.target_modules: \[\] must be a non-empty list"):
        resolve_train_spec({**BASE, "lora": {"target_modules": []}}, tiny_store)  # `--target-modules ,`
    with pytest.raises(ValidationError, match="vera takes no alpha"):
        resolve_train_spec({**BASE, "peft_method": "vera", "lora": {"alpha": 8}}, tiny_store)
    with pytest.raises(ValidationError, match="peft_method is 'none'"):
        resolve_train_spec({**BASE, "peft_method": "none", "lora": {"r": 8}}, tiny_store)
    with pytest.raises(ValidationError, match="packing already removes padding"):
        resolve_train_spec({**BASE, "group_by_length": True}, tiny_store)
    with pytest.raises(NotFoundError) as exc:
        resolve_train_spec({"base_model": "Qwen3-none-base", "dataset": "squad"}, tiny_store)
    assert "Qwen3-none-base" in str(exc.value) and "'squad' not found" in str(exc.value)
    assert snapshot(tiny_store) == before


def test_dataset_without_the_tasks_columns_is_a_failed_precondition(tiny_store):
    import json
    m = json.loads(tiny_store.get_bytes("datasets", "arc/manifest.json"))
    m["splits"]["train"]["columns"] = ["id", "question"]
    tiny_store.put_bytes("datasets", "broken/manifest.json", json.dumps(m).encode())
    try:
        # stored content that is wrong: the server's FAILED_PRECONDITION, not the caller's INVALID_ARGUMENT
        with pytest.raises(PreconditionError, match=r"lacks the ai2_arc columns \['answer'\]"):
            resolve_train_spec({"base_model": TINY, "dataset": "broken", "task": "arc"}, tiny_store)
    finally:
        tiny_store.delete("datasets", "broken/manifest.json")


def test_nonsense_combinations_are_refused(tiny_store, monkeypatch):
    # a method's impossible settings are the request's own problem (any trainer refuses them) ...
    with pytest.raises(ValidationError, match="full fine-tuning cannot update bitsandbytes-quantized"):
        resolve_train_spec({**BASE, "peft_method": "none", "training_quant": "qlora"}, tiny_store)
    with pytest.raises(ValidationError, match="PiSSA's SVD initialisation needs the base's float weights"):
        resolve_train_spec({**BASE, "peft_method": "pissa", "training_quant": "qlora"}, tiny_store)
    # ... this trainer's device, a precondition
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    with pytest.raises(PreconditionError, match="needs a CUDA GPU"):
        resolve_train_spec({**BASE, "optimizer": "adamw_8bit"}, tiny_store)
    monkeypatch.setenv("FTLAB_DEVICE", "cuda")
    assert resolve_train_spec({**BASE, "optimizer": "adamw_8bit"}, tiny_store)["optimizer"] == "adamw_8bit"


def test_over_the_device_budget_is_refused_with_the_estimate(tiny_store, monkeypatch):
    monkeypatch.setenv("FTLAB_DEVICE_MEMORY_GB", "0.5")
    with pytest.raises(PreconditionError) as exc:
        resolve_train_spec(BASE, tiny_store)
    assert "estimated training memory" in str(exc.value) and "FTLAB_DEVICE_MEMORY_GB=0.5" in str(exc.value)
    monkeypatch.setenv("FTLAB_DEVICE_MEMORY_GB", "64")
    assert resolve_train_spec(BASE, tiny_store)["memory_estimate_gb"] < 64


def test_run_key_names_the_settings_not_the_bookkeeping(tiny_store):
    import dataclasses
    a = TrainConfig.from_dict(resolve_train_spec(BASE, tiny_store))
    assert a.checkpoint_prefix.endswith("-" + a.run_key())
    assert a.run_key() == dataclasses.replace(a, save_steps=7, resume="never").run_key()
    assert a.run_key() != dataclasses.replace(a, learning_rate=1e-3).run_key()
    assert a.run_key() != dataclasses.replace(a, dtype="bfloat16").run_key()


def test_training_dtype(tiny_store, monkeypatch):
    """auto stays out of the record (runs keyed before the field existed keep their key); bf16
    halves the estimate's weights for full fine-tuning (an adapter on a CPU loads in fp32 first);
    a quantized base refuses any dtype but its own."""
    from services.trainer import config
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    monkeypatch.setattr(config, "cpu_has_bf16", lambda: True)
    auto = resolve_train_spec(BASE, tiny_store)
    assert "dtype" not in auto and resolve_train_spec({**BASE, "dtype": "auto"}, tiny_store) == auto
    bf16 = resolve_train_spec({**BASE, "dtype": "bfloat16"}, tiny_store)
    assert bf16["dtype"] == "bfloat16" and bf16["output_name"] == auto["output_name"].replace("_NoQuant", "_bf16_NoQuant")
    assert resolve_train_spec({**BASE, "dtype": "float32", "peft_method": "none"}, tiny_store)["output_name"].endswith(
        "_SFT_NoPeft_fp32_NoQuant")
    # an adapter on a CPU loads in fp32 and casts its frozen layers afterwards: the peak is fp32's
    assert bf16["memory_estimate"]["weights_gb"] == auto["memory_estimate"]["weights_gb"]
    full = {**BASE, "peft_method": "none"}
    assert resolve_train_spec({**full, "dtype": "bfloat16"}, tiny_store)["memory_estimate"]["weights_gb"] == \
        pytest.approx(resolve_train_spec(full, tiny_store)["memory_estimate"]["weights_gb"] / 2, abs=1e-4)
    with pytest.raises(ValidationError) as exc:
        resolve_train_spec({**BASE, "training_quant": "qlora", "dtype": "float32", "lora": {"r": 0}}, tiny_store)
    assert "qlora sets its own compute dtype" in str(exc.value) and "lora.r" in str(exc.value)  # all at once
    with pytest.raises(ValidationError, match="dtype: unknown 'fp16'"):
        resolve_train_spec({**BASE, "dtype": "fp16"}, tiny_store)
    monkeypatch.setattr(config, "cpu_has_bf16", lambda: False)  # emulated bf16 would be slower than fp32
    with pytest.raises(PreconditionError, match="no native bf16"):
        resolve_train_spec({**BASE, "dtype": "bfloat16"}, tiny_store)


@pytest.mark.parametrize("native", [True, False])
def test_auto_trains_an_adapters_frozen_layers_in_bf16_on_a_cpu_with_native_bf16(monkeypatch, native):
    from services.trainer import config
    monkeypatch.setattr(config, "cpu_has_bf16", lambda: native)

    def frozen_bf16(device="cpu", **spec):
        cfg = config.TrainConfig.from_dict({"base_model": "m", "dataset": "arc", "output_name": "o",
                                            "checkpoint_prefix": "p", **spec})
        return cfg.bf16_frozen_on_cpu(device)
    assert frozen_bf16() is native and frozen_bf16(peft_method="dora") is native
    assert frozen_bf16(dtype="bfloat16") and not frozen_bf16(dtype="float32")
    assert not frozen_bf16(peft_method="none")               # full fine-tuning: bf16 throughout only if asked
    assert not frozen_bf16(training_quant="int8")            # a quantized base sets its own compute dtype
    assert not frozen_bf16("cuda") and not frozen_bf16("cuda", dtype="bfloat16")  # GPUs: bf16 autocast


def test_catalogue_and_storage_configs():
    c8 = memory.model_config_for("Qwen3-8B-base")
    assert c8["hidden_size"] == 4096 and c8["num_hidden_layers"] == 36 and not c8["tie_word_embeddings"]
    assert memory.model_config_for("Qwen3-0.6B")["hidden_size"] == 1024
    assert memory.model_config_for("Qwen3-1.7B-base")["intermediate_size"] == 6144
    with pytest.raises(NotFoundError, match="known sizes"):
        memory.model_config_for("Llama-70B-base")


def test_catalogue_prefers_the_models_own_config(tiny_store):
    assert memory.model_config_for(TINY, tiny_store)["hidden_size"] == 64


def test_estimate_counts_the_known_parameter_totals_and_orders_the_methods():
    est = lambda mc, **c: memory.estimate_training_memory(mc, TrainConfig.resolve(
        {"base_model": "Qwen3-8B-base", "dataset": "arc", "per_device_batch_size": 1, "max_seq_length": 512, **c},
        device_type="cuda"))
    c8, c06 = memory.model_config_for("Qwen3-8B"), memory.model_config_for("Qwen3-0.6B")
    full8 = est(c8, peft_method="none")
    assert 8.1e9 < full8["trainable_params"] < 8.3e9          # Qwen3-8B: 8.2B parameters
    assert 0.55e9 < est(c06, peft_method="none")["total_params"] < 0.65e9  # 0.6B (tied embeddings)
    lora, qlora = est(c8, lora={"r": 256}), est(c8, lora={"r": 256}, training_quant="qlora")
    assert qlora["weights_gb"] < 0.4 * lora["weights_gb"] and qlora["total_gb"] < lora["total_gb"] < full8["total_gb"]
    assert est(c8, lora={"r": 256}, peft_method="dora")["trainable_params"] > lora["trainable_params"]
    assert est(c8, lora={"r": 256}, peft_method="vera")["trainable_params"] < lora["trainable_params"] / 100
    assert est(c8, gradient_checkpointing=True)["activations_gb"] < est(c8)["activations_gb"] / 5
    assert est(c8, peft_method="none", optimizer="adamw_8bit")["optimizer_gb"] < full8["optimizer_gb"] / 1.9


def test_trainer_door_imports_without_torch():
    import subprocess
    import sys
    code = ("import sys\nfor m in ('torch', 'transformers', 'peft', 'bitsandbytes'):\n    sys.modules[m] = None\n"
            "import services.trainer.config, services.trainer.peft, services.trainer.memory, services.trainer.checkpoints, "
            "services.trainer.server\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_missing_model_or_dataset_is_listed_with_the_other_problems(tiny_store):
    # a bad value used to hide that the base model is missing, and a missing dataset added
    # "task: unknown task 'nope'" although no task was asked for
    with pytest.raises(ValidationError) as exc:
        resolve_train_spec({"base_model": "Qwen3-none-base", "dataset": "nope", "lora": {"r": 0}}, tiny_store)
    assert exc.value.problems == ["lora.r: 0 must be in [1, 4096]",
                                  f"base_model: model 'Qwen3-none-base' not found in the models bucket (it holds: {TINY}; "
                                  "ftlab model list)",
                                  "dataset: 'nope' not found in the datasets bucket (it holds: arc; ftlab data list)"]
