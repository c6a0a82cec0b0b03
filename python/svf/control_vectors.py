"""Control vectors: static per-layer steering vectors in llama.cpp's GGUF format, both ways.

A :class:`ControlVector` is a *static entry*: one vector ``v[N]`` per decoder layer ``N``, added
as it is (``h += v[N]``) to that layer's output. It is what llama.cpp's ``--control-vector``
loads, what its ``cvector-generator`` and repeng's ``ControlVector.export_gguf`` write, and what
:func:`svf.steer` takes beside trained fields.

The file format, as the readers implement it (llama.cpp ``common/common.cpp``,
``common_control_vector_load_one``, and ``src/llama-adapter.cpp``, ``llama_adapter_cvec::apply``;
repeng ``repeng/extract.py``, ``ControlVector.import_gguf``):

* every tensor is named ``direction.N`` with ``N >= 1`` (llama.cpp refuses the whole file on any
  other name, and on ``direction.0``: block 0's output cannot be steered);
* F32, one dimension (as ggml counts them) of the model's hidden size, the same in every tensor;
* ``direction.N`` is added with a plain ``+``, at every position, to the output of block ``N``
  (0-based: Hugging Face's ``model.layers[N]``), after the block's last residual add; llama.cpp
  scales the sum of the files it loads by one number per file (``--control-vector-scaled
  FILE:SCALE``; 1.0 for ``--control-vector``) and matches no norm;
* the loader reads no metadata. Writers put ``general.architecture = "controlvector"``,
  ``controlvector.model_hint`` (repeng: the Hugging Face ``model_type``; llama.cpp: its own
  architecture name) and ``controlvector.layer_count`` (the number of ``direction.N`` tensors;
  llama.cpp writes an int32, repeng a uint32). repeng's reader requires ``model_hint``.

This module writes the same keys (``layer_count`` as llama.cpp writes it) plus the entry's
``info`` as ``controlvector.svf.<name>`` keys, which both readers ignore. A file exported from a
trained field (:func:`control_vector_from_field`) records there which field strength its
magnitudes are: the GGUF readers cannot apply a relative strength, so the strength is in the
magnitudes themselves.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from svf_kernels import StaticVector, SVFArgumentError, field_direction

from .arguments import check_number, check_path, check_strength_or_alpha, check_text, show
from .artifacts import ArtifactError
from .hf import distinct_layers

#: ``general.architecture`` of a control vector file.
GGUF_ARCHITECTURE = "controlvector"
MODEL_HINT_KEY = f"{GGUF_ARCHITECTURE}.model_hint"
LAYER_COUNT_KEY = f"{GGUF_ARCHITECTURE}.layer_count"
#: Keys of :attr:`ControlVector.info` are written under this prefix.
INFO_PREFIX = f"{GGUF_ARCHITECTURE}.svf."
#: How :func:`control_vector_from_field` makes a field's vector at a layer.
EXPORT_METHODS = ("caa", "mean-direction")

_TENSOR_NAME = re.compile(r"direction\.([0-9]+)")
_INFO_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_GGUF_MAGIC = b"GGUF"
#: The suffix of a plain per-layer vector file.
SAFETENSORS_SUFFIX = ".safetensors"


@dataclass(eq=False)
class ControlVector:
    """A static entry: ``vectors[N]`` (``[d]`` float32) is added to the output of decoder layer
    ``N`` (Hugging Face ``model.layers[N]``; the GGUF tensor ``direction.N``).

    ``model_hint``: the model the vectors are for, as the file names it (repeng writes the
    Hugging Face ``model_type``, llama.cpp its architecture name); ``info``: other facts, written
    as ``controlvector.svf.<name>`` keys (a vector exported from a field: its concept, method,
    strength and unit). Layer 0 is allowed here (:func:`svf.steer` can steer it) but cannot be
    written to a file. Two control vectors are equal when their layers, vectors (bit for bit),
    hint and info are.
    """

    vectors: dict[int, torch.Tensor]
    model_hint: str | None = None
    info: dict[str, str | int | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, Mapping) or not self.vectors:
            raise SVFArgumentError("vectors must be a non-empty dict {layer: [d] tensor}, got "
                                   f"{show(self.vectors)}")
        bad = [k for k in self.vectors if isinstance(k, bool) or not isinstance(k, int) or k < 0]
        if bad:
            raise SVFArgumentError(f"vectors: layer {show(bad[0])} is not a layer index >= 0")
        out: dict[int, torch.Tensor] = {}
        width = None
        for layer in sorted(self.vectors):
            v = self.vectors[layer]
            if not isinstance(v, torch.Tensor) or v.dim() != 1 or not v.is_floating_point():
                what = f"{v.dtype} {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
                raise SVFArgumentError(f"vectors[{layer}] must be a 1-D floating-point tensor [d], "
                                       f"got {what}")
            if v.numel() == 0:
                raise SVFArgumentError(f"vectors[{layer}] is empty")
            if width is not None and v.numel() != width:
                raise SVFArgumentError(f"vectors[{layer}] has {v.numel()} values but vectors"
                                       f"[{next(iter(out))}] has {width}: one hidden size for all")
            width = v.numel()
            v = v.detach().to("cpu", torch.float32, copy=True).contiguous()  # owned, not shared
            if not torch.isfinite(v).all():
                raise SVFArgumentError(f"vectors[{layer}] has non-finite values")
            out[layer] = v
        self.vectors = out
        if self.model_hint is not None:
            check_text(self.model_hint, "model_hint")
        if not isinstance(self.info, Mapping):
            raise SVFArgumentError(f"info must be a dict, got {show(self.info)}")
        for key, value in self.info.items():
            if not isinstance(key, str) or not _INFO_NAME.fullmatch(key):
                raise SVFArgumentError(f"info key {show(key)} must be 1-100 letters, digits, '_', "
                                       "'.' or '-'")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise SVFArgumentError(f"info[{key!r}] must be a str, int or float, got {show(value)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise SVFArgumentError(f"info[{key!r}] must be finite, got {value}")
        self.info = dict(self.info)

    @property
    def hidden_size(self) -> int:
        return next(iter(self.vectors.values())).numel()

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers with a vector, increasing."""
        return tuple(self.vectors)

    def norm(self, layer: int) -> float:
        """``||vectors[layer]||``: how far strength 1.0 moves that layer."""
        return float(self.vectors[layer].norm())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """:func:`write_control_vector` of this entry; returns the file."""
        return write_control_vector(self, path)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControlVector):
            return NotImplemented
        return (self.layers == other.layers and self.model_hint == other.model_hint
                and self.info == other.info
                and all(torch.equal(self.vectors[i], other.vectors[i]) for i in self.layers))

    __hash__ = None  # mutable, compared by value


# ------------------------------------------------------------------------------ steering


def static_row_fields(entry: ControlVector, layers: Sequence[int] | None = None, *,
                      strength: float | None = None, alpha: float | None = None
                      ) -> tuple[dict[int, StaticVector], dict[int, float]]:
    """The row fields and strengths that steer by ``entry`` (what :func:`svf.steer` attaches).

    Each layer gets ``StaticVector(v)`` (``v`` made unit length) with ``alpha_l = strength *
    ||v||``: strength 1.0 (the default) adds the vectors as they are, as llama.cpp at scale 1.0
    does. ``alpha``: the absolute L2 displacement of every layer instead. ``layers`` (default:
    every layer of the entry) must have vectors; a zero vector adds nothing and is left out.
    """
    if not isinstance(entry, ControlVector):
        raise SVFArgumentError(f"entry must be a ControlVector, got {type(entry).__name__}")
    check_strength_or_alpha(strength, alpha)
    layers = distinct_layers(entry.layers if layers is None else layers)
    missing = [i for i in layers if i not in entry.vectors]
    if missing:
        raise SVFArgumentError(f"layers {missing} have no vector in the control vector (its layers: "
                               f"{list(entry.layers)})")
    fields: dict[int, StaticVector] = {}
    alphas: dict[int, float] = {}
    for i in layers:
        norm = entry.norm(i)
        if norm == 0:
            continue
        fields[i] = StaticVector(entry.vectors[i])
        alphas[i] = float(alpha) if alpha is not None else (
            1.0 if strength is None else float(strength)) * norm
    if not fields:
        raise SVFArgumentError(f"every vector of layers {layers} is zero: nothing to steer")
    return fields, alphas


# ------------------------------------------------------------------------------ from a field


def control_vector_from_field(
    steering_field,
    *,
    method: str = "caa",
    layers: Sequence[int] | None = None,
    strength: float | None = None,
    unit: str | None = None,
    model: nn.Module | None = None,
    tokenizer=None,
    prompts: Sequence[str] | None = None,
    model_hint: str | None = None,
    progress: bool | None = None,
) -> ControlVector:
    """A trained field as a static entry: one vector per layer, of the length that strength
    ``strength`` (default: the field's ``default_strength``) gives there, so the entry at strength
    1.0 (llama.cpp at scale 1.0) moves each layer as far as :func:`svf.steer` does at
    ``strength`` in ``unit`` (default: the field's own).

    ``method``: ``"caa"``, the field's CAA direction made unit length (at strength 1.0 the
    entry adds exactly what ``svf.steer(model, field, method="caa", strength=strength)`` adds);
    ``"mean-direction"``, the field's own unit direction (along its ``default_direction``)
    averaged over the last-token activations of ``prompts`` (default :data:`svf.NEUTRAL_PROMPTS`,
    rendered as :func:`svf.generate` renders prompts) at each layer, unsteered, then made unit
    length: needs ``model`` and ``tokenizer``. ``layers`` default to the field's steering layers
    and must be among its training layers. ``model_hint`` defaults to ``model``'s ``model_type``
    when a model is given. ``info`` records the concept, method, strength and unit.
    """
    from .data import NEUTRAL_PROMPTS
    from .field_packing import check_fits_model
    from .steering_field import SteeringField, check_train_layers, check_unit, strength_scale

    if not isinstance(steering_field, SteeringField):
        raise SVFArgumentError(f"steering_field must be a SteeringField, got "
                               f"{type(steering_field).__name__}")
    if method not in EXPORT_METHODS:
        raise SVFArgumentError(f"method must be one of {EXPORT_METHODS}, got {show(method)}")
    check_unit(unit)
    strength = steering_field.default_strength if strength is None else check_number(strength, "strength")
    layers = distinct_layers(steering_field.steer_layers if layers is None else layers)
    check_train_layers([steering_field], layers)
    if model is not None:
        from .hf import check_model

        check_model(model)
        check_fits_model([steering_field], model)
    if model_hint is None and model is not None:
        model_hint = getattr(model.config, "model_type", None) or None
    resolved_unit = unit or steering_field.unit
    if method == "caa":
        directions = {i: _unit(steering_field.caa_vector(i).float(), f"the CAA vector at layer {i}")
                      for i in layers}
    else:
        if model is None or tokenizer is None:
            raise SVFArgumentError("method='mean-direction' needs the model and its tokenizer "
                                   "(the field's direction depends on the activations)")
        directions = _mean_directions(steering_field, model, tokenizer,
                                      list(NEUTRAL_PROMPTS) if prompts is None else prompts,
                                      layers, progress)
    vectors = {i: directions[i] * (strength * strength_scale([steering_field], i, unit))
               for i in layers}
    info = {"concept": steering_field.concept, "method": method, "strength": float(strength),
            "unit": resolved_unit, "field_model": steering_field.model_name}
    return ControlVector(vectors, model_hint=model_hint, info={k: v for k, v in info.items() if v != ""})


def _unit(v: torch.Tensor, what: str) -> torch.Tensor:
    norm = v.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise SVFArgumentError(f"{what} is zero or not finite: it has no direction")
    return v / norm


@torch.no_grad()
def _mean_directions(steering_field, model: nn.Module, tokenizer, prompts: Sequence[str],
                     layers: list[int], progress: bool | None) -> dict[int, torch.Tensor]:
    """The field's unit direction at each layer, averaged over the prompts' last-token
    activations (unsteered), made unit length."""
    from .activations import last_token_activations
    from .arguments import check_texts
    from .tokenization import format_prompts

    prompts = check_texts(prompts, "prompts")
    acts = last_token_activations(model, tokenizer, format_prompts(tokenizer, prompts), layers,
                                  desc="mean direction", progress=progress)
    eps = steering_field.scorer.config.eps
    out = {}
    for k, i in enumerate(layers):
        f = steering_field.fold(i, steering_field.default_direction)
        _, v = field_direction(acts[:, k], f.A[None], f.c[None], f.w2[None], f.b2.reshape(1),
                               eps=eps, B=None if f.B is None else f.B[None])
        norms = v.norm(dim=-1, keepdim=True)
        keep = (norms[:, 0] > 0) & torch.isfinite(norms[:, 0])
        if not keep.any():
            raise SVFArgumentError(f"the field's direction at layer {i} is zero or not finite at "
                                   "every prompt: it has no mean direction")
        out[i] = _unit((v[keep] / norms[keep]).mean(0), f"the mean direction at layer {i}")
    return out


# ------------------------------------------------------------------------------ GGUF files


def write_control_vector(entry: ControlVector, path: str | os.PathLike[str], *,
                         model_hint: str | None = None) -> Path:
    """Write ``entry`` as a GGUF control vector at ``path``; returns the path.

    Tensors ``direction.N`` (F32, ``[d]``) in increasing ``N``; keys ``general.architecture =
    "controlvector"``, ``controlvector.model_hint`` (``model_hint``, default ``entry.model_hint``:
    one of them is needed, as repeng's reader requires it), ``controlvector.layer_count`` (int32,
    the number of tensors) and ``controlvector.svf.<name>`` for each ``info`` item (str, int64
    or float64). Layer 0 is refused (the format starts at block 1). The file is written beside
    ``path`` under a temporary name, read back and checked, then renamed into place: a failed
    write leaves nothing (an existing file at ``path`` stays as it was).
    """
    import gguf

    if not isinstance(entry, ControlVector):
        raise SVFArgumentError(f"entry must be a ControlVector, got {type(entry).__name__}")
    target = check_path(path, "path")
    hint = entry.model_hint if model_hint is None else check_text(model_hint, "model_hint")
    if hint is None:
        raise SVFArgumentError("model_hint is needed (repeng's reader requires "
                               f"{MODEL_HINT_KEY}): give the model's Hugging Face model_type, "
                               "e.g. 'llama'")
    if 0 in entry.vectors:
        raise SVFArgumentError("layer 0 cannot be written: a GGUF control vector starts at block 1 "
                               "(direction.N, N >= 1; llama.cpp refuses direction.0)")
    if target.is_dir():
        raise SVFArgumentError(f"path {os.fspath(target)!r} is a directory, not a file")
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        writer = gguf.GGUFWriter(tmp, GGUF_ARCHITECTURE)
        writer.add_string(MODEL_HINT_KEY, hint)
        writer.add_int32(LAYER_COUNT_KEY, len(entry.vectors))
        for key, value in entry.info.items():
            if isinstance(value, str):
                writer.add_string(INFO_PREFIX + key, value)
            elif isinstance(value, int):
                writer.add_int64(INFO_PREFIX + key, value)
            else:
                writer.add_float64(INFO_PREFIX + key, value)
        for layer, v in entry.vectors.items():
            writer.add_tensor(f"direction.{layer}", v.numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        back = load_control_vector(tmp)
        expected = ControlVector(entry.vectors, hint, entry.info)
        if back != expected:
            raise ArtifactError(f"{tmp}: the file read back differs from what was written")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for directory in created:  # innermost first; only the ones made here, if still empty
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return target


def load_control_vector(path: str | os.PathLike[str]) -> ControlVector:
    """Read a control vector into a :class:`ControlVector`: a GGUF file (llama.cpp's
    ``cvector-generator``, repeng's ``export_gguf`` or :func:`write_control_vector`), or a plain
    per-layer vector file, ``.safetensors`` with one 1-D floating-point tensor per layer named
    by the layer's index (``"16"``: added to the output of ``model.layers[16]``; metadata
    ``model_hint`` optional).

    For GGUF, checks what llama.cpp's loader checks, and refuses with an :class:`ArtifactError`
    naming the file and the problem: a file that is missing or not GGUF; an architecture other than
    ``controlvector`` (a model file, say); no tensors; a tensor not named ``direction.N`` with
    ``N`` a layer >= 1 written in decimal without leading zeros; a tensor that is not F32, not
    one-dimensional (ggml does not count trailing dimensions of size 1) or of another size than
    the others; non-finite values; a ``model_hint`` that is not a string. ``layer_count`` is not
    read (no reader uses it). ``controlvector.svf.<name>`` keys of scalar type become ``info``.
    """
    import gguf
    import numpy as np

    file = check_path(path, "path")
    source = os.fspath(file)

    def fail(problem: str) -> ArtifactError:
        return ArtifactError(f"{source}: {problem}")

    if not file.exists():
        raise fail("control vector file not found")
    if not file.is_file():
        raise fail("not a regular file")
    try:
        with file.open("rb") as fh:
            head = fh.read(len(_GGUF_MAGIC))
    except OSError as exc:
        raise fail(f"cannot read: {exc}") from None
    if head != _GGUF_MAGIC:
        if file.suffix == SAFETENSORS_SUFFIX:
            return _load_safetensors(file, fail)
        raise fail(f"not a GGUF file: it starts with {head!r}, not {_GGUF_MAGIC!r} (a per-layer "
                   f"vector file must end in {SAFETENSORS_SUFFIX})")
    try:
        reader = gguf.GGUFReader(file)
    except Exception as exc:  # noqa: BLE001 - the reader fails in many ways on a damaged file
        raise fail(f"not a readable GGUF file: {type(exc).__name__}: {exc}") from None
    fields = reader.fields
    arch = _scalar(fields.get("general.architecture"))
    if arch is not None and arch != GGUF_ARCHITECTURE:
        raise fail(f"general.architecture is {arch!r}, not {GGUF_ARCHITECTURE!r}: not a control "
                   "vector (a model file?)")
    if not reader.tensors:
        raise fail("no tensors: a control vector holds direction.N tensors")
    vectors: dict[int, torch.Tensor] = {}
    width = None
    for t in reader.tensors:
        match = _TENSOR_NAME.fullmatch(t.name)
        if match is None:
            raise fail(f"tensor {t.name!r} is not named direction.N (llama.cpp reads only those)")
        digits = match.group(1)
        if int(digits) == 0:
            raise fail(f"tensor {t.name!r}: layer 0 cannot carry a control vector (N >= 1; "
                       "llama.cpp refuses direction.0)")
        if digits != str(int(digits)):
            raise fail(f"tensor {t.name!r}: write the layer without leading zeros")
        layer = int(digits)
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise fail(f"tensor {t.name!r} is {t.tensor_type.name}, not F32")
        dims = [int(n) for n in t.shape]
        while len(dims) > 1 and dims[-1] == 1:
            dims.pop()
        if len(dims) != 1:
            raise fail(f"tensor {t.name!r} has shape {[int(n) for n in t.shape]}, not one dimension")
        if dims[0] == 0:
            raise fail(f"tensor {t.name!r} is empty")
        if width is not None and dims[0] != width:
            raise fail(f"tensor {t.name!r} has {dims[0]} values but the tensors before it have "
                       f"{width}: one hidden size for all")
        width = dims[0]
        v = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
        if not torch.isfinite(v).all():
            raise fail(f"tensor {t.name!r} has non-finite values")
        vectors[layer] = v
    hint_field = fields.get(MODEL_HINT_KEY)
    hint = _scalar(hint_field)
    if hint_field is not None and not isinstance(hint, str):
        raise fail(f"{MODEL_HINT_KEY} is not a string")
    info = {}
    for key, f in fields.items():
        if key.startswith(INFO_PREFIX):
            value = _scalar(f)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                info[key[len(INFO_PREFIX):]] = value
    try:
        return ControlVector(vectors, model_hint=hint or None, info=info)
    except SVFArgumentError as exc:
        raise fail(str(exc)) from None


def _load_safetensors(file: Path, fail) -> ControlVector:
    """A ``.safetensors`` file of per-layer vectors (see :func:`load_control_vector`)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(file), framework="pt") as f:
            names = list(f.keys())
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in names}
    except Exception as exc:  # noqa: BLE001 - the reader fails in many ways on a damaged file
        raise fail(f"not a readable safetensors file: {type(exc).__name__}: {exc}") from None
    if not tensors:
        raise fail("no tensors: a per-layer vector file holds one tensor per layer")
    vectors = {}
    for name, v in tensors.items():
        if not name.isdecimal() or name != str(int(name)):
            raise fail(f"tensor {name!r} is not named by a layer index (\"16\": the output of "
                       "model.layers[16]), written in decimal without leading zeros")
        if not v.is_floating_point():
            raise fail(f"tensor {name!r} is {v.dtype}, not floating point")
        vectors[int(name)] = v
    hint = meta.get("model_hint")
    try:
        return ControlVector(vectors, model_hint=hint or None)
    except SVFArgumentError as exc:
        raise fail(str(exc)) from None


def _scalar(f) -> str | int | float | None:
    """A GGUF key's value when it is one string or number (None: absent, or an array)."""
    if f is None or len(f.types) != 1:
        return None
    from gguf import GGUFValueType

    value = f.contents()
    if f.types[0] == GGUFValueType.STRING:
        return str(value)
    if f.types[0] in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return float(value)
    if f.types[0] == GGUFValueType.BOOL:
        return bool(value)
    return int(value)
