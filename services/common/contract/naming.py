"""The study's naming, in one place for trainer, quantizer, evaluator and reports.

Trained models: ``{base}-{dataset}_SFT_{Peft}{r}_{quant_tag}``
(``Qwen3-8B-openmath_SFT_LoRa256_QLORA_w4_headbf16``, ``Qwen3-4B-openmath_SFT_NoPeft_NoQuant``);
post-training-quantized: the source name with its ``_NoQuant`` tag replaced, or the tag appended
(``Qwen3-4B-openmath_SFT_NoPeft_Int8_BnB``, ``Qwen3-4B-base_GPTQ_w4_g64_headfp16``).

The quantization tag is the study's (``utils/quantization_utils.py``: ``tag_quant`` and
``QuantizationSpec.tag``): ``{Method}[_w{bits}][_g{group}][_a{act bits}][_kv{kv bits}][_{extras}]``,
extras sorted by key, ``{key}{value}`` (``headbf16``, ``alpha0.5``) or the bare key for a true flag.
The study's older literal tags (``Int8_BnB``, ``4bit_BnB``) and ftlab's first llm-compressor tags
(``W4A16_GPTQ``) stay valid names: :func:`parse_tag` reads all of them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from services.common.contract.errors import ValidationError, quote

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class QuantMethod(str):
    """A quantization method's name in the study's vocabulary (its ``QuantMethod`` enum) or one of
    ftlab's additions: an open set. The training-time names (:data:`NO_QUANT`, :data:`QLORA`,
    :data:`INT8`: the base a fine-tune was trained on) are declared here; every post-training name
    is declared by its PTQ plugin (services/quantizer/ptq/<method>.py, :func:`quant_method`), so a
    new method adds its names in its own file. ``tag``: the fixed tag a method without parameters
    gets (``Int8_BnB``), None for a study-style parametric name (``GPTQ_w4_g64``)."""
    tag: str | None

    def __new__(cls, name: str, tag: str | None = None) -> "QuantMethod":
        self = super().__new__(cls, name)
        self.tag = tag
        return self

    @property
    def value(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"QuantMethod({str(self)!r})"

    @classmethod
    def from_any(cls, value: Any) -> "QuantMethod":
        """The study's normalisation: case, '-' and '_' ignored (``smooth_quant`` -> SmoothQuant),
        and a method's declared aliases. Raises ValidationError listing the known names."""
        if isinstance(value, cls):
            return value
        key = _canonical(str(value or ""))
        found = _BY_KEY.get(key)
        if found is None and _load_plugins():
            found = _BY_KEY.get(key)
        if found is None:
            raise ValidationError(f"quantization method: unknown {_short(value)}; known: "
                                  f"{', '.join(known_quant_methods())}")
        return found


def _canonical(s: str) -> str:
    return s.replace("-", "").replace("_", "").lower()


# name -> method, in declaration order (the error messages' order); normalised spelling -> method
_METHODS: dict[str, QuantMethod] = {}
_BY_KEY: dict[str, QuantMethod] = {}
# Fixed tags: the study's literal names and ftlab's first tags. A method without parameters
# gets its literal tag (``tag_quant(INT8) == "Int8_BnB"``). Filled by :func:`quant_method`.
QUANT_TAGS: dict[QuantMethod, str] = {}


def quant_method(name: str, *, tag: str | None = None, aliases: tuple[str, ...] = ()) -> QuantMethod:
    """Declare a quantization method name (a PTQ plugin declares its own): the study-style
    ``name`` (``GPTQ``), its literal ``tag`` if it has one (``W8A16_RTN``), and ``aliases`` that
    :meth:`QuantMethod.from_any` also accepts (normalised as the study does: case, '-' and '_'
    ignored). Declaring a name again the same way returns it (INT8 is both the trainer's int8
    base and the bnb_int8 plugin's); any other clash raises ValueError."""
    have = _METHODS.get(name)
    if have is not None:
        if have.tag != tag or any(_BY_KEY.get(_canonical(a)) is not have for a in aliases):
            raise ValueError(f"quantization method {name!r} is already declared differently (tag {have.tag!r})")
        return have
    method = QuantMethod(name, tag)
    keys = [_canonical(k) for k in (name, *aliases)]
    taken = [k for k in keys if k in _BY_KEY] + ([tag] if tag in QUANT_TAGS.values() else [])
    if not name or taken:
        raise ValueError(f"quantization method {name!r}: {', '.join(map(repr, taken)) or 'empty name'} "
                         "already names another method")
    _METHODS[name] = method
    _BY_KEY.update((k, method) for k in keys)
    if tag:
        QUANT_TAGS[method] = tag
    return method


def known_quant_methods() -> tuple[QuantMethod, ...]:
    """Every declared name: the training-time ones, then every PTQ plugin's."""
    _load_plugins()
    return tuple(_METHODS.values())


# Where the post-training names are declared (the PTQ registry, which also imports third-party
# plugins named under the ``ftlab.ptq`` entry-point group). Loaded on the first lookup, so a
# process that never imports the quantizer (the evaluator parsing a GPTQ model's tag) knows them
# too; imported by name because the plugins import this module (they sit in a service above
# services/common, which the layering forbids importing statically).
PLUGIN_PACKAGES = ("services.quantizer.ptq",)
_loaded = False


def _load_plugins() -> bool:
    """Import the PTQ plugin packages once; True when this call did (a lookup may then retry)."""
    global _loaded
    if _loaded:
        return False
    _loaded = True
    import importlib
    for package in PLUGIN_PACKAGES:
        importlib.import_module(package)
    return True


# The training-time names (the trainer's TRAINING_QUANT); NoQuant is also the suffix a
# post-training tag replaces.
NO_QUANT = QuantMethod.NO_QUANT = quant_method("NoQuant", tag="NoQuant")
INT8 = QuantMethod.INT8 = quant_method("INT8", tag="Int8_BnB")   # bitsandbytes LLM.int8
QLORA = QuantMethod.QLORA = quant_method("QLORA", tag="QLORA_w4_headbf16")  # NF4 base, double quant, bf16 compute


def _literals() -> list[tuple[str, QuantMethod]]:
    """Literal tags that are not a method name followed by parameters, longest first for parsing."""
    _load_plugins()
    return sorted(((t, m) for m, t in QUANT_TAGS.items() if m not in (NO_QUANT, QLORA)), key=lambda x: -len(x[0]))


# Extra keys whose values start with letters (``headbf16``): parsed by known key, not by letters.
EXTRA_KEYS = ("head", "alpha")

def _segment(value: Any) -> str:
    """The study's ``_sanitize_segment``: 0.5 -> '0.5', 6.0 -> '6', True -> '1', text -> alnum, '-', '.'."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else str(int(value))
    if isinstance(value, int):
        return str(value)
    return "".join(ch for ch in str(value) if ch.isalnum() or ch in "-.")


@dataclass(frozen=True)
class QuantTag:
    """One quantization tag's parts. ``literal`` is the fixed tag it starts with, if any."""
    method: QuantMethod
    bits: int | None = None
    group_size: int | None = None
    acts_bits: int | None = None
    kv_bits: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    literal: str | None = None

    def tag(self) -> str:
        parts = [self.literal or str(self.method)]
        for label, value in (("w", self.bits), ("g", self.group_size), ("a", self.acts_bits), ("kv", self.kv_bits)):
            if value is not None:
                parts.append(f"{label}{value}")
        for key in sorted(self.extras):  # the study's _extras_to_segments
            value = self.extras[key]
            if value is None or value is False:
                continue
            parts.append(_segment(key) + ("" if value is True else _segment(value)))
        return "_".join(parts)


def tag_quant(method: QuantMethod | str, *, bits: int | None = None, group_size: int | None = None,
              acts_bits: int | None = None, kv_bits: int | None = None, head: str | None = None,
              extras: dict[str, Any] | None = None) -> str:
    """The study's tag from a method and its parameters: ``tag_quant("GPTQ", bits=4, group_size=64,
    head="fp16") == "GPTQ_w4_g64_headfp16"``; without parameters a method with a literal tag gets it
    (``tag_quant(QuantMethod.INT8) == "Int8_BnB"``). As in the study's ``QuantizationSpec.tag``, the
    caller leaves out activation and KV bits of 8 or 16 (the study's defaults). ``head`` is the
    lm_head precision (the study's ``extras["head"]``). Raises ValidationError for unknown methods."""
    m = QuantMethod.from_any(method)
    all_extras = {**(extras or {}), **({"head": head} if head else {})}
    if m.tag and not any((bits, group_size, acts_bits, kv_bits, all_extras)):
        return m.tag
    return QuantTag(m, bits, group_size, acts_bits, kv_bits, all_extras).tag()


_NUMBERED = {"w": "bits", "g": "group_size", "a": "acts_bits", "kv": "kv_bits"}


def parse_tag(tag: str) -> QuantTag:
    """A tag back into its parts (inverse of :func:`tag_quant`; ``parse_tag(t).tag() == t`` for
    every tag ftlab or the study writes). Literal tags come first (``Int8_BnB_t4`` -> INT8 with
    extras ``{"t": "4"}``); otherwise the first segment is the method, then ``w``, ``g``, ``a``,
    ``kv`` numbers in that order, then extras. Raises ValidationError when the method is unknown."""
    literal, method, rest = None, None, tag
    for lit, m in _literals():
        if tag == lit or tag.startswith(lit + "_"):
            literal, method, rest = lit, m, tag[len(lit) + 1:]
            break
    segments = [s for s in rest.split("_") if s] if rest else []
    if method is None:
        if not segments:
            raise ValidationError("quantization tag: empty")
        method = QuantMethod.from_any(segments.pop(0))
    numbers: dict[str, int] = {}
    order = list(_NUMBERED)
    while segments:
        match = re.fullmatch(r"(kv|w|g|a)(\d+)", segments[0])
        if not match or match.group(1) not in order:
            break
        order = order[order.index(match.group(1)) + 1:]  # each at most once, in the study's order
        numbers[_NUMBERED[match.group(1)]] = int(match.group(2))
        segments.pop(0)
    extras: dict[str, Any] = {}
    for seg in segments:
        key = next((k for k in EXTRA_KEYS if seg.startswith(k) and len(seg) > len(k)), None)
        if key is None:
            key = re.match(r"[A-Za-z-]*", seg).group(0) or seg
        extras[key] = seg[len(key):] or True
    return QuantTag(method, extras=extras, literal=literal, **numbers)


def model_tag(model_name: str) -> QuantTag | None:
    """The quantization tag a model name ends with (``Qwen3-8B-openmath_SFT_LoRa256_QLORA_w4_headbf16``
    -> QLORA, w4, head bf16), or None for a name without one (``Qwen3-4B-base``)."""
    segments = model_name.split("_")
    for i in range(1, len(segments)):
        try:
            return parse_tag("_".join(segments[i:]))
        except ValidationError:
            continue
    return None


def with_kv_bits(tag: str, kv_bits: int | None) -> str:
    """``tag`` with the KV-cache precision where the study puts it (after the activation bits);
    8 and 16 bits are the study's defaults and stay out of the tag, as in its ``QuantizationSpec.tag``."""
    parsed = parse_tag(tag)
    kv = None if kv_bits in (None, 8, 16) else kv_bits
    return QuantTag(parsed.method, parsed.bits, parsed.group_size, parsed.acts_bits, kv, parsed.extras,
                    parsed.literal).tag()


def _short(value: Any, limit: int = 40) -> str:
    """A bad value quoted for an error message: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def check_name(field: str, value: str) -> list[str]:
    """Names become object-key prefixes: no '/', '..', spaces or control characters."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        return [f"{field}: {quote(value)} is not a valid name (1-128 of letters, digits, '.', '_', '-'; "
                "starting with a letter or digit; no '..')"]
    return []


def base_stem(base_model: str) -> str:
    """``Qwen3-8B-base`` -> ``Qwen3-8B`` (the study names trained models after the size)."""
    return base_model[: -len("-base")] if base_model.endswith("-base") else base_model


def trained_model_name(base_model: str, dataset: str, peft_tag: str, r: int | None, quant: QuantMethod) -> str:
    """The study's trained-model name: ``Qwen3-8B-arc_SFT_LoRa256_NoQuant``. ``peft_tag``: the PEFT
    method's name fragment (services/trainer/peft/: ``LoRa``, ``NoPeft``); ``r``: its rank,
    None for full fine-tuning."""
    peft_part = peft_tag + ("" if r is None else str(r))
    return f"{base_stem(base_model)}-{dataset}_SFT_{peft_part}_{tag_quant(quant)}"


def quantized_model_name(source_model: str, quant: QuantMethod | str, variant: str = "") -> str:
    """``quant``: a QuantMethod (its literal tag) or a full tag (``GPTQ_w4_g64_headbf16``);
    ``variant`` names non-default options after a literal tag (``W4A16_GPTQ_g32``, ``4bit_BnB_noDQ``)."""
    tag = (tag_quant(quant) if isinstance(quant, QuantMethod) else quant) + (f"_{variant}" if variant else "")
    suffix = "_" + NO_QUANT.tag
    if source_model.endswith(suffix):
        return source_model[: -len(suffix)] + "_" + tag
    return f"{source_model}_{tag}"


def require_name(field: str, value: str) -> None:
    problems = check_name(field, value)
    if problems:
        raise ValidationError(problems)


# ----------------------------------------------------------------------------- sweep suffixes
# A sweep over these fields gives one model per value under one study name; the value goes into the
# name as a readable segment before the quantization tag (``..._SFT_LoRa8_lr2e-4_s2_NoQuant``), in this
# order, and :func:`split_variant` reads it back (the report groups seeds of one configuration).
VARIANT_FIELDS = {"learning_rate": "lr", "num_train_epochs": "ep", "max_steps": "steps", "seed": "s"}
_VARIANT_RE = re.compile(r"^(lr|ep|steps|s)(\d+(?:\.\d+)?(?:e-?\d+)?)$")


def _variant_value(value: Any) -> str:
    """2e-4 -> '2e-4', 1.5 -> '1.5', 3 -> '3': short, and a valid name segment."""
    if isinstance(value, float) and value and abs(value) < 0.01:
        mantissa, exp = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
    return _segment(value)


def variant_suffix(values: dict[str, Any]) -> str:
    """``{"seed": 2, "learning_rate": 2e-4}`` -> ``_lr2e-4_s2`` (VARIANT_FIELDS' order)."""
    return "".join(f"_{tag}{_variant_value(values[f])}" for f, tag in VARIANT_FIELDS.items() if f in values)


def with_variant(name: str, values: dict[str, Any], quant_tag: str = "") -> str:
    """``name`` with :func:`variant_suffix` before its quantization tag (``quant_tag``, when the name
    ends with it), else at the end."""
    suffix = variant_suffix(values)
    if quant_tag and name.endswith("_" + quant_tag):
        return f"{name[: -len(quant_tag) - 1]}{suffix}_{quant_tag}"
    return name + suffix


def split_variant(name: str) -> tuple[str, dict[str, Any]]:
    """A model name back into its study name and the swept values its segments after ``_SFT_``
    carry: ``X_SFT_LoRa8_s2_NoQuant`` -> (``X_SFT_LoRa8_NoQuant``, {"seed": 2})."""
    head, sep, tail = name.partition("_SFT_")
    if not sep:
        return name, {}
    fields = {tag: f for f, tag in VARIANT_FIELDS.items()}
    kept, values = [], {}
    for seg in tail.split("_"):
        m = _VARIANT_RE.match(seg)
        if m and fields[m.group(1)] not in values:
            raw = m.group(2)
            values[fields[m.group(1)]] = int(raw) if re.fullmatch(r"\d+", raw) and m.group(1) in ("s", "steps") \
                else float(raw)
        else:
            kept.append(seg)
    return head + sep + "_".join(kept), values


def without_seed(name: str) -> tuple[str, int | None]:
    """The configuration a model replicates and its seed: ``X_SFT_LoRa8_s2_Int8_BnB`` ->
    (``X_SFT_LoRa8_Int8_BnB``, 2); other swept values stay in the name (they are other configurations)."""
    head, sep, tail = name.partition("_SFT_")
    segments = tail.split("_") if sep else []
    for i, seg in enumerate(segments):
        if re.fullmatch(r"s\d+", seg):
            return head + sep + "_".join(segments[:i] + segments[i + 1:]), int(seg[1:])
    return name, None
