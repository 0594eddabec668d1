"""The trainer service over real gRPC with the real tiny Qwen3 and the seed ARC data: every
training configuration of the study trains on CPU and leaves loadable artifacts, a trained model
answers in the evaluator's exact format, events stream, 2-process DDP matches one process."""
from __future__ import annotations

import json

import pytest

from services.common.storage import artifacts
from services.common.data import tasks
from services.common.hardware.cpu_features import cpu_has_bf16
from services.common.rpc.clients import ServiceClient, state_name
from services.common.generated.ftlab.v1 import jobs_pb2
from tests.conftest import SEED_DATA, TINY

FAST = {"base_model": TINY, "dataset": "arc", "max_steps": 2, "train_limit": 4, "per_device_batch_size": 2,
        "gradient_accumulation_steps": 1, "max_seq_length": 64, "save_steps": 0}


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, tiny_model_dir):
    from services.common.torch_utils import modeling
    from services.common.data.importing import import_dataset
    from services.common.jobs.runtime import RuntimeOptions
    from services.common.rpc.service import RunningService
    from services.common.storage.store import LocalStore
    from services.trainer.server import SERVICE
    store = LocalStore(tmp_path_factory.mktemp("trainer-store"))
    store.ensure_buckets()
    modeling.commit_base_model(store, TINY, tiny_model_dir, {"source": "tiny-random-qwen3"})
    import_dataset(store, "arc", "seed", SEED_DATA)
    svc = RunningService(SERVICE, store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=2.0))
    client = ServiceClient("trainer", svc.address)
    yield client, store
    client.close()
    svc.stop(grace_s=2.0)


def _fetch(store, name, dest):
    artifacts.fetch_dir(store, "models", name, dest)
    return dest


def _generate(model, tok, n=3):
    ids = tok("Hello", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + n


@pytest.mark.parametrize("spec,name,quant_tag", [
    ({"peft_method": "lora", "lora": {"r": 4}}, "Qwen3-tiny-arc_SFT_LoRa4_NoQuant", "NoQuant"),
    ({"peft_method": "dora", "lora": {"r": 4, "target_modules": ["all-linear"]}},
     "Qwen3-tiny-arc_SFT_DoRa4_NoQuant", "NoQuant"),
    ({"peft_method": "vera", "lora": {"r": 16, "d_initial": 0.1}}, "Qwen3-tiny-arc_SFT_VeRa16_NoQuant", "NoQuant"),
    ({"peft_method": "lora", "lora": {"r": 4}, "training_quant": "qlora"},
     "Qwen3-tiny-arc_SFT_LoRa4_QLORA_w4_headbf16", "QLORA_w4_headbf16"),
    ({"peft_method": "lora", "lora": {"r": 4}, "training_quant": "int8", "packing": False, "group_by_length": True,
      "gradient_checkpointing": True, "optimizer": "adafactor", "lr_scheduler": "cosine"},
     "Qwen3-tiny-arc_SFT_LoRa4_Int8_BnB", "Int8_BnB"),
    pytest.param({"peft_method": "lora", "lora": {"r": 4}, "dtype": "bfloat16"},
                 "Qwen3-tiny-arc_SFT_LoRa4_bf16_NoQuant", "NoQuant",
                 marks=pytest.mark.skipif(not cpu_has_bf16(), reason="bf16 training needs a CPU with native bf16")),
])
def test_every_adapter_configuration_trains_and_reloads(trainer, tmp_path, spec, name, quant_tag):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    client, store = trainer
    job = client.run({**FAST, **spec}, f"cfg-{name}", timeout_s=300)
    assert job.outputs["model"] == f"s3://models/{name}/" and job.metrics["memory_estimate_gb"] > 0
    meta = json.loads(store.get_bytes("models", f"{name}/training_metadata.json"))
    assert meta["quantization"]["quant_tag"] == quant_tag and len(meta["loss_curve"]) == 2
    # auto: bf16 compute under QLoRA; for an adapter on a plain base on a CPU with native bf16, the
    # frozen layers in bf16 (services/trainer/cpu_bf16.py); else fp32 on a CPU
    bf16_auto = quant_tag.startswith("QLORA") or (quant_tag == "NoQuant" and meta["device"] == "cpu" and cpu_has_bf16())
    assert meta["dtype"] == spec.get("dtype", "bfloat16" if bf16_auto else "float32")
    info = meta["model_info"]
    assert 0 < info["trainable_params"] < info["total_params"] and 0 < info["trainable_percentage"] < 100
    assert meta["tokens_per_s"] > 0 and meta["memory"]["peak_rss_gb"] > 0
    assert meta["memory_estimate"]["at_submit"]["total_gb"] >= meta["memory_estimate"]["with_actual_lengths"]["total_gb"]
    local = _fetch(store, name, tmp_path / name)
    config = json.loads((local / "config.json").read_text())
    assert "quantization_config" not in config  # merged = dequantized base + adapter: what was trained
    if meta["dtype"] == "bfloat16" and quant_tag == "NoQuant":  # a GPU trains bf16 weights and saves them; on a CPU only the
        # frozen layers computed in bf16, and the adapter is merged in fp32 (services/trainer/cpu_bf16.py)
        assert config["dtype"] == ("float32" if meta["device"] == "cpu" else "bfloat16")
    tok = AutoTokenizer.from_pretrained(local)
    assert tok.chat_template
    merged = AutoModelForCausalLM.from_pretrained(local)
    _generate(merged, tok)
    base = AutoModelForCausalLM.from_pretrained(local)  # the adapter loads onto a model of the base's shape
    _generate(PeftModel.from_pretrained(base, local / "adapter"), tok)
    if quant_tag == "QLORA_w4_headbf16":
        from transformers import BitsAndBytesConfig
        import torch
        q = AutoModelForCausalLM.from_pretrained(local, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["lm_head"]), dtype=torch.bfloat16)
        assert q.lm_head.weight.dtype == torch.bfloat16
        _generate(PeftModel.from_pretrained(q, local / "adapter"), tok)
    assert not store.list_keys("jobs", "checkpoints/")  # a committed run leaves no checkpoints


def test_full_fine_tuning_learns_the_evaluators_answer_format(trainer, tmp_path):
    """The tiny random model, fully fine-tuned at a high learning rate on four ARC rows (24 steps), answers
    those prompts with ``\\boxed{X}`` that the evaluator's parser reads, and the events stream
    loss, learning rate, tokens/s and step/total while it trains."""
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    client, store = trainer
    events = []
    spec = {**FAST, "peft_method": "none", "max_steps": 24, "per_device_batch_size": 4, "learning_rate": 1e-2,
            "lr_scheduler": "constant_with_warmup", "warmup_ratio": 0.0, "max_seq_length": 128, "logging_steps": 4}
    job = client.run(spec, "format", timeout_s=600, on_event=events.append)
    name = "Qwen3-tiny-arc_SFT_NoPeft_NoQuant"
    assert state_name(job.state) == "SUCCEEDED" and job.outputs["model"] == f"s3://models/{name}/"
    progress = [e for e in events if e.type == jobs_pb2.EVENT_TYPE_PROGRESS]
    assert [e.step for e in progress] == [4, 8, 12, 16, 20, 24] and {e.total for e in progress} == {24}
    assert all({"loss", "learning_rate", "tokens_per_s"} <= set(e.metrics) for e in progress)
    meta = json.loads(store.get_bytes("models", f"{name}/training_metadata.json"))
    assert meta["model_info"]["trainable_params"] == meta["model_info"]["total_params"]
    assert meta["loss_curve"][-1]["loss"] < meta["loss_curve"][0]["loss"] / 4
    assert not store.exists("models", f"{name}/adapter/adapter_config.json")

    local = _fetch(store, name, tmp_path / name)
    tok = AutoTokenizer.from_pretrained(local)
    model = AutoModelForCausalLM.from_pretrained(local).eval()
    task = tasks.get_task("arc")
    rows = pd.read_parquet(next(SEED_DATA.glob("train-ai2_arc*.parquet"))).head(4).to_dict("records")
    parsed = []
    for row in rows:
        prompt = tok.apply_chat_template(tasks.build_messages(task, row), add_generation_prompt=True,
                                         enable_thinking=False, tokenize=False)
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=12, do_sample=False)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert text.strip().startswith("\\boxed{"), text
        parsed.append(tasks.parse_answer(task, text))
    assert all(p in task.labels for p in parsed), parsed


def test_two_process_ddp_matches_one_process(trainer):
    """torchrun + gloo, 2 x 4 rows per step against 1 x 8 rows, 2 steps: each step sees all 8 rows in both
    runs, so the loss curves agree up to float summation order. Tolerance: 0.5% relative."""
    client, store = trainer
    common = {**FAST, "train_limit": 8, "max_steps": 2, "learning_rate": 1e-2, "warmup_ratio": 0.0,
              "lora": {"r": 4, "dropout": 0.0}, "max_seq_length": 48}
    submitted = client.submit({**common, "per_device_batch_size": 8, "output_name": "ddp-one"}, "ddp-one")
    assert submitted.metrics["memory_estimate_gb"] > 0  # the estimate is in the Job from submit on
    one = client.run({**common, "per_device_batch_size": 8, "output_name": "ddp-one"}, "ddp-one", timeout_s=300)
    two = client.run({**common, "per_device_batch_size": 4, "world_size": 2, "output_name": "ddp-two"},
                     "ddp-two", timeout_s=300)
    curves = [json.loads(store.get_bytes("models", f"{n}/training_metadata.json"))["loss_curve"]
              for n in ("ddp-one", "ddp-two")]
    assert [p["step"] for p in curves[1]] == [1, 2]
    for a, b in zip(*curves):
        assert abs(a["loss"] - b["loss"]) / a["loss"] < 5e-3, (a, b)
    assert curves[0][-1]["loss"] < curves[0][0]["loss"]  # it trained
    assert one.metrics["final_loss"] > 0 and two.metrics["tokens_per_s"] > 0
