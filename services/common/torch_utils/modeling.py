"""Torch-side helpers shared by the three recipes: device and dtype choice, model import
(the tiny Qwen3 and real hub models take the same path), loading models fetched from storage,
memory and version facts. Imported only inside job child processes and the CLI's model
commands: the rest of services/common stays torch-free."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
from pathlib import Path
from typing import Any

import torch

from services.common.storage import artifacts
from services.common.hardware import devices
from services.common.contract import settings
from services.common.hardware.cpu_features import cpu_has_bf16
from services.common.contract.errors import NotFoundError, PreconditionError, ValidationError
from services.common.storage.store import ObjectStore

MODELS = "models"

# The tiny Qwen3: same architecture and tokenizer as Qwen/Qwen3-*, small enough for a 2-core CPU.
TINY_QWEN3 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, rope_theta=1_000_000.0,
                  tie_word_embeddings=True, vocab_size=151936, rms_norm_eps=1e-6)


def device() -> torch.device:
    """FTLAB_DEVICE (cpu | cuda | cuda:N) or the first GPU when there is one
    (services/common/hardware/devices.py, which honours CUDA_VISIBLE_DEVICES)."""
    return devices.torch_device()


def cap_cpu_threads() -> None:
    """Apply FTLAB_CPU_THREADS (:func:`settings.cpu_threads`) to torch in an evaluation or
    quantization job. These run beside training on a small CPU, where one thread per job beats two
    spinning OpenMP threads per job (docs/EVALUATOR.md, docs/QUANTIZER.md). Unset: torch's default.
    The trainer does not call it, so ``ftlab demo`` can set it for the whole stack."""
    if (n := settings.cpu_threads()) is not None:
        torch.set_num_threads(n)


def compute_dtype(dev: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it (the study's setting), fp32 on CPU."""
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def eval_dtype(dev: torch.device) -> torch.dtype:
    """Evaluation dtype: FTLAB_EVAL_DTYPE (float32 | bfloat16 | auto, default auto). auto = the
    training compute dtype on GPU; on CPU bf16 where the CPU has native bf16 (greedy evaluation
    of SmolLM2-135M ran ~2x faster with the same parsed answers, docs/BENCHMARKS.md), else fp32."""
    want = os.environ.get("FTLAB_EVAL_DTYPE") or "auto"  # empty (compose default) = auto
    if want not in ("auto", "float32", "bfloat16"):
        raise ValidationError(f"FTLAB_EVAL_DTYPE={want!r}: expected auto, float32 or bfloat16")
    if want != "auto":
        return getattr(torch, want)
    if dev.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return compute_dtype(dev)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "ftlab"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent, check=True).stdout.strip() or None
    except Exception:  # not a checkout (an installed image): lineage says so
        return None


def hardware() -> dict[str, Any]:
    dev = device()
    info: dict[str, Any] = {"device": str(dev), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, float]:
    """CUDA reserved/allocated on GPU (the study's columns) and this process's peak RSS.
    Each job runs in its own child process, so the RSS peak is the job's own."""
    out = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3),
           "peak_vram_reserved_gb": 0.0, "peak_vram_allocated_gb": 0.0}
    if torch.cuda.is_available():
        out["peak_vram_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1024 ** 3, 3)
        out["peak_vram_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1024 ** 3, 3)
    return out


# ----------------------------------------------------------------------------- import


def make_tiny_qwen3(tokenizer_source: str, out_dir: str | os.PathLike, seed: int = 0) -> dict[str, Any]:
    """A deterministic random-weight Qwen3 with the real tokenizer and chat template."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_source)
    except (OSError, ValueError) as e:  # no such folder, not a tokenizer, an invalid hub id, offline
        raise ValidationError(f"--tokenizer {str(tokenizer_source)[:200]}: cannot load a tokenizer "
                              f"(a folder such as ../shared/tokenizers/qwen3, or a hub id): {str(e)[:200]}") from None
    cfg = Qwen3Config(**TINY_QWEN3, bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                      eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = [cfg.eos_token_id, tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"source": "tiny-random-qwen3", "tokenizer_source": str(tokenizer_source), "seed": seed,
            "config": TINY_QWEN3}


def download_hf_model(repo_or_path: str, out_dir: str | os.PathLike) -> dict[str, Any]:
    """A Hugging Face model (hub id on an online host, or a local folder) saved as-is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(repo_or_path, dtype="auto", use_safetensors=True)  # no pickles
    AutoTokenizer.from_pretrained(repo_or_path).save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return {"source": "huggingface", "repo": repo_or_path}


def commit_base_model(store: ObjectStore, name: str, local_dir: str | os.PathLike, origin: dict[str, Any],
                      overwrite: bool = False) -> dict[str, Any]:
    return artifacts.commit_dir(store, MODELS, name, local_dir, {
        "kind": "base", "name": name, "origin": origin, "parents": [],
        "quantization": {"method": "NoQuant", "quant_tag": "NoQuant"},
        "versions": library_versions(), "git_commit": git_commit()}, overwrite=overwrite)


# ----------------------------------------------------------------------------- loading


def fetch_model(store: ObjectStore, name: str, workdir: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """Model ``name`` into ``workdir/models/name``, through the service's model cache
    (services/common/storage/model_cache.py: keyed by manifest digest, LRU, size-bounded)."""
    from services.common.storage import model_cache
    dest = Path(workdir) / "models" / name
    manifest = artifacts.require_manifest(store, MODELS, name, "model")
    model_cache.fetch(manifest, lambda folder: _fetch_exact(store, name, folder, manifest), dest)
    return dest, manifest


def _fetch_exact(store: ObjectStore, name: str, folder: Path, manifest: dict[str, Any]) -> None:
    got = artifacts.fetch_dir(store, MODELS, name, folder)
    if artifacts.manifest_digest(got) != artifacts.manifest_digest(manifest):  # re-committed meanwhile
        raise PreconditionError(f"model {name!r} was re-committed while it was being fetched; submit again")


def model_manifest(store: ObjectStore, name: str) -> dict[str, Any]:
    m = artifacts.read_manifest(store, MODELS, name)
    if m is None:
        raise NotFoundError(f"model {name!r} not found in the models bucket (no manifest.json)")
    return m


# Training-time quantization of a base (the study's QuantMethod values) -> how it is loaded.
TRAINING_QUANT_METHODS = ("QLORA", "INT8")


def load_quantized_base(base_dir: str | os.PathLike, method: str, dev: torch.device | None = None):
    """The base exactly as a run with training-time quantization ``method`` loads it — one
    definition for the trainer and every merge: QLORA = the study's QLoRA (NF4, double quant,
    bf16 compute, lm_head left unquantized in bf16); INT8 = bitsandbytes LLM.int8 (lm_head
    unquantized, compute dtype of the device). Raises ValueError for another method."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    dev = dev or device()
    if method == "QLORA":
        qconf = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["lm_head"])
        dtype = torch.bfloat16
    elif method == "INT8":
        qconf, dtype = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"]), compute_dtype(dev)
    else:
        raise ValueError(f"not a training-time quantization: {method!r} (known: {', '.join(TRAINING_QUANT_METHODS)})")
    return AutoModelForCausalLM.from_pretrained(
        base_dir, quantization_config=qconf, dtype=dtype, use_safetensors=True,
        device_map={"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"})


def merge_adapter(base_dir: str | os.PathLike, adapter_dir: str | os.PathLike, trained_on: str | None,
                  dev: torch.device | None = None, dtype: torch.dtype | str = "auto"):
    """The one way any service merges an adapter into its base; returns the merged (unquantized)
    model. ``trained_on``: the training-time quantization of the base the adapter was fitted to
    (the model manifest's ``quantization.method``). For QLORA / INT8 the adapter is merged onto
    that quantized base *dequantized* — the very function trained (merging into 4/8-bit blocks
    would round the update away; merging onto the full-precision base would add back the
    quantization error the adapter learned around). Otherwise onto the base as stored, or cast
    to ``dtype`` (the trainer's bf16 adapters on a CPU merge in fp32: services/trainer/cpu_bf16.py)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    if trained_on in TRAINING_QUANT_METHODS:
        base = load_quantized_base(base_dir, trained_on, dev)
        base.dequantize()
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, use_safetensors=True)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def load_tokenizer(path: str | os.PathLike, padding_side: str = "right"):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | os.PathLike, dev: torch.device | None = None, for_training: bool = False,
                   dtype: torch.dtype | None = None):
    """Load a fetched model folder: full weights (fp, bitsandbytes or compressed-tensors — the
    quantization config in config.json is honoured; compressed-tensors layers decompress on the
    first forward on CPU), or an adapter-only folder on top of its base. ``dtype`` (default: the
    compute dtype) applies to unquantized weights; quantized models keep the compute dtype."""
    from transformers import AutoModelForCausalLM
    path = Path(path)
    dev = dev or device()
    if not (path / "config.json").exists():
        raise ValidationError(f"{path.name}: not a Hugging Face model folder (no config.json)")
    cfg = json.loads((path / "config.json").read_text())
    quantized = "quantization_config" in cfg
    kwargs: dict[str, Any] = {"dtype": (None if quantized else dtype) or compute_dtype(dev),
                              "use_safetensors": True}  # never unpickle weights
    if "quantization_config" in cfg:
        kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if "quantization_config" not in cfg:
        model.to(dev)
    if not for_training:
        model.eval()
    return model
