"""Saving and loading trained SVF field artifacts, safely.

An artifact is ONE safetensors file. A path ending in ``.safetensors`` is that
file; any other path is a directory holding ``field.safetensors``. The safetensors
header metadata has exactly one key, ``"svf"``, whose value is the JSON text of the
metadata dict (see ``validate_metadata``). All tensors are float32 (see
``expected_shapes``). Format version 2 adds two optional tensors (``robust_norms``,
``covariances``) and two optional metadata fields (``default_direction``,
``default_target``); version 3 adds the optional tensor ``natural_B`` (the natural direction's
folded matrices, ``[len(natural.layers), m, d]``) with its metadata field ``natural``. A version 1
or 2 file loads as a version 3 file without the parts it lacks (its metadata normalised to
version 3).

Loading never unpickles anything. The 8-byte length prefix and the JSON header are
read and checked by hand (dtypes, shapes against the metadata, data offsets against
the file) before safetensors materialises a single tensor, so a hostile or corrupt
file fails with an ``ArtifactError`` naming the file and the problem, and a file that
declares a huge shape never allocates it. The bytes that safetensors parses are the
very bytes that were checked (one read of one open file), so the file cannot change
between the check and the load.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch as _st
import torch

from svf_kernels import SVFArgumentError

from .scorer import DIRECTIONS

__all__ = [
    "FIELD_FILENAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "NATURAL_TENSOR_NAME",
    "OPTIONAL_TENSOR_NAMES",
    "READABLE_VERSIONS",
    "TENSOR_NAMES",
    "ArtifactError",
    "check_compatible",
    "expected_shapes",
    "load_field",
    "save_field",
    "validate_metadata",
    "validate_tensors",
]

FORMAT_NAME = "svf-field"
FORMAT_VERSION = 3
#: Version 1 is version 2 without the optional tensors and the ``default_direction`` /
#: ``default_target`` metadata, version 2 is version 3 without ``natural_B`` and ``natural``;
#: both load as version 3 without them.
READABLE_VERSIONS = (1, 2, 3)
FIELD_FILENAME = "field.safetensors"
TENSOR_NAMES: tuple[str, ...] = (
    "R", "layer_emb", "Wg", "Wb", "W1", "b1", "w2", "b2", "mean_norms", "caa",
)
#: Written by training, both or neither: the robust strength unit and the covariances of the
#: preconditioned direction (a field without them steers along the gradient, in mean norms).
OPTIONAL_TENSOR_NAMES: tuple[str, ...] = ("robust_norms", "covariances")
#: The natural direction's folded matrices ``B = A @ M`` at the layers of metadata ``natural``
#: (there exactly when that field is not null).
NATURAL_TENSOR_NAME = "natural_B"
ACTIVATIONS: tuple[str, ...] = ("gelu_tanh",)

# Header length limit (the u64 prefix). A real header is a few KiB (metrics are capped at
# 64 KiB); the cap bounds what parsing a hostile header can allocate: Python objects for
# JSON such as ``[{},{},...]`` take ~25x the text, so 1 MiB costs at most ~30 MiB.
MAX_HEADER_BYTES = 1024 * 1024
MAX_MESSAGE_CHARS = 1000  # an error message's problem text is cut to this length
MAX_METRICS_BYTES = 64 * 1024  # serialized size limit of metadata["metrics"]
MAX_METRICS_DEPTH = 32  # nesting limit of metadata["metrics"] (avoids RecursionError)
MAX_CONCEPT_CHARS = 200

_META_KEYS = (
    "format", "format_version", "concept", "model", "train_layers", "steer_layers",
    "hparams", "default_strength", "metrics",
)
#: Optional metadata fields and the format version that introduced each.
_OPTIONAL_META_KEYS = {"default_direction": 2, "default_target": 2, "natural": 3}
_NATURAL_KEYS = ("layers", "lambdas", "samples", "validation_samples", "criterion")
_MODEL_KEYS = ("name", "hidden_size", "num_layers")
_HPARAM_KEYS = ("r", "de", "m", "eps", "activation")
_TENSOR_INFO_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_F32_BYTES = 4


class ArtifactError(ValueError):
    """A field artifact (file or metadata) is missing, corrupt, invalid or incompatible.

    The one error type of this module; the message names the file (or other source)
    and the exact problem, e.g. ``field.safetensors: missing tensor 'b2'``.
    """


# ----------------------------------------------------------------------------- helpers


def _fail(source: str, problem: str) -> ArtifactError:
    """Build the error for ``problem`` found in ``source`` (callers ``raise`` it).

    Values from the file are shortened where they are formatted (``_trim``/``_show``);
    the cut here is only a backstop so that no message grows with the file.
    """
    return ArtifactError(f"{source}: {_trim(problem, MAX_MESSAGE_CHARS)}")


def _trim(text: str, limit: int = 60) -> str:
    """Shorten ``text`` for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    """Short ``repr`` of a bad value plus its type, for error messages."""
    return f"{_trim(_repr(value))} ({type(value).__name__})"


def _repr(value: Any) -> str:
    """``repr`` that stays cheap for ints of thousands of digits."""
    if _is_int(value) and value.bit_length() > 256:
        return f"<int of {value.bit_length()} bits>"
    return repr(value)


def _shape(dims: Any) -> str:
    """A shape (tuple or list of ints) as a shortened tuple, for a message."""
    return _trim("(" + ", ".join(_num(x) for x in dims[:8]) + ("," if len(dims) == 1 else "")
                 + (", ..." if len(dims) > 8 else "") + ")", 200)


def _num(value: Any) -> str:
    """A number from the file, shortened for a message."""
    return _trim(_repr(value), 40)


def _key(value: Any) -> str:
    """A key or name from the file, shortened for a message."""
    return _trim(str(value), 60)


def _is_int(value: Any) -> bool:
    """True for ints but not bools (JSON ``true`` must never pass as ``1``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _dumps(obj: Any) -> str:
    """The one JSON encoding used for the metadata text (compact, ASCII, no NaN)."""
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` hook: refuse duplicate object keys (parsers disagree on which wins)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_trim(repr(key))}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    """``json`` hook: refuse ``NaN`` / ``Infinity``, which are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(text: str) -> Any:
    """``json`` hook: ``-0`` is a float, as the safetensors (serde) parser reads it."""
    return -0.0 if text == "-0" else int(text)


def _check_strings(obj: Any) -> None:
    """Refuse strings that are not Unicode text: ``json`` accepts a lone surrogate
    escape such as ``\\ud800`` that no UTF-8 encoder (nor safetensors) accepts."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"string {_trim(ascii(item))} holds a lone surrogate "
                                 "escape, which is not Unicode text") from None


def _loads(text: str) -> Any:
    """Strict JSON parse; any failure (including deep nesting) is a ``ValueError``."""
    try:
        obj = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants,
            parse_int=_parse_int,
        )
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    _check_strings(obj)
    return obj


def _check_keys(
    value: Any, name: str, keys: tuple[str, ...], source: str, what: str = "metadata field"
) -> Mapping[str, Any]:
    """Check that ``value`` is a dict with exactly ``keys``; return it."""
    if not isinstance(value, Mapping):
        raise _fail(source, f"{what} '{name}' must be a JSON object (dict), got {_show(value)}")
    prefix = "" if name == "<root>" else f"{name}."
    for key in keys:
        if key not in value:
            raise _fail(source, f"missing metadata field '{prefix}{key}'")
    for key in value:
        if key not in keys:
            raise _fail(source, f"unexpected metadata field '{prefix}{_key(key)}'")
    return value


def _int_field(value: Any, name: str, minimum: int, source: str) -> int:
    if not _is_int(value):
        raise _fail(source, f"metadata field '{name}' must be an int >= {minimum}, "
                            f"got {_show(value)}")
    if value < minimum:
        raise _fail(source, f"metadata field '{name}' must be an int >= {minimum}, "
                            f"got {_num(value)}")
    return int(value)


def _float_field(value: Any, name: str, source: str, *, positive: bool) -> float:
    """A finite float (ints accepted and converted; bools refused)."""
    want = "a finite number > 0" if positive else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, f"metadata field '{name}' must be {want}, got {_show(value)}")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out) or (positive and out <= 0.0):
        raise _fail(source, f"metadata field '{name}' must be {want}, got {_num(value)}")
    return out


def _str_field(value: Any, name: str, source: str) -> str:
    if not isinstance(value, str):
        raise _fail(source, f"metadata field '{name}' must be a string, got {_show(value)}")
    return str(value)


def _layers_field(value: Any, name: str, source: str) -> list[int]:
    """A non-empty, strictly increasing list of ints (a tuple is accepted)."""
    want = f"metadata field '{name}' must be a strictly increasing list of ints"
    if not isinstance(value, (list, tuple)):
        raise _fail(source, f"{want}, got {_show(value)}")
    if len(value) == 0:
        raise _fail(source, f"{want}, got an empty list (at least one layer is required)")
    for item in value:
        if not _is_int(item):
            raise _fail(source, f"{want}, got element {_show(item)}")
    out = [int(item) for item in value]
    for prev, cur in itertools.pairwise(out):
        if cur <= prev:
            raise _fail(source, f"{want}, got {_trim(repr(out))} ({_num(prev)} then "
                                f"{_num(cur)})")
    return out


def _json_value(value: Any, name: str, source: str, depth: int) -> Any:
    """Normalised copy of a free-form JSON value (the metrics); refuses non-JSON."""
    name = _trim(name, 120)
    if depth > MAX_METRICS_DEPTH:
        raise _fail(source, f"metadata field '{name}' is nested deeper than "
                            f"{MAX_METRICS_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if _is_int(value):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(source, f"metadata field '{name}' is {value!r}, which is not a "
                                "JSON number (NaN and Inf are not allowed)")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{name}[{i}]", source, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(source, f"metadata field '{name}' has a non-string key {_show(key)}")
            out[str(key)] = _json_value(item, f"{name}.{key}", source, depth + 1)
        return out
    raise _fail(source, f"metadata field '{name}' must hold only JSON values (numbers, "
                        f"strings, lists, dicts, bools, null), got {_show(value)}")


# -------------------------------------------------------------------------- metadata


def validate_metadata(meta: dict, source: str = "<metadata>") -> dict:
    """Check every field and type of the metadata strictly; return a normalised copy.

    Strict because the metadata decides the shapes that loading trusts: a bool is not
    an int, a float is not an int, NaN is not a number, unknown keys are refused (in
    ``model`` and ``hparams`` too). Normalisation: float fields given as ints become
    floats, tuples become lists, key order is canonical.
    """
    meta = _check_format(meta, source)
    for key in _META_KEYS:
        if key not in meta:
            raise _fail(source, f"missing metadata field '{key}'")
    for key in meta:
        since = _OPTIONAL_META_KEYS.get(key)
        if key not in _META_KEYS and not (since is not None and meta["format_version"] >= since):
            raise _fail(source, f"unexpected metadata field '{_key(key)}'")

    concept = _str_field(meta["concept"], "concept", source)
    if not concept or len(concept) > MAX_CONCEPT_CHARS:
        raise _fail(source, f"metadata field 'concept' must be a non-empty string of at most "
                            f"{MAX_CONCEPT_CHARS} characters, got {len(concept)} characters")

    model_in = _check_keys(meta["model"], "model", _MODEL_KEYS, source)
    model = {
        "name": _str_field(model_in["name"], "model.name", source),
        "hidden_size": _int_field(model_in["hidden_size"], "model.hidden_size", 1, source),
        "num_layers": _int_field(model_in["num_layers"], "model.num_layers", 1, source),
    }

    train = _layers_field(meta["train_layers"], "train_layers", source)
    for layer in train:
        if not 0 <= layer < model["num_layers"]:
            nl = _num(model["num_layers"])
            raise _fail(source, f"metadata field 'train_layers' has layer {_num(layer)}, out of "
                                f"range [0, {nl}) for model.num_layers={nl}")
    steer = _layers_field(meta["steer_layers"], "steer_layers", source)
    outside = [layer for layer in steer if layer not in set(train)]
    if outside:
        raise _fail(source, f"metadata field 'steer_layers' must be a subset of train_layers "
                            f"{_trim(repr(train))}; layers {_trim(repr(outside))} are not "
                            "training layers")

    hp_in = _check_keys(meta["hparams"], "hparams", _HPARAM_KEYS, source)
    hparams = {
        "r": _int_field(hp_in["r"], "hparams.r", 1, source),
        "de": _int_field(hp_in["de"], "hparams.de", 1, source),
        "m": _int_field(hp_in["m"], "hparams.m", 1, source),
        "eps": _float_field(hp_in["eps"], "hparams.eps", source, positive=True),
        "activation": _str_field(hp_in["activation"], "hparams.activation", source),
    }
    if hparams["activation"] not in ACTIVATIONS:
        raise _fail(source, f"metadata field 'hparams.activation' must be one of "
                            f"{list(ACTIVATIONS)}, got {_trim(repr(hparams['activation']))}")

    strength = _float_field(meta["default_strength"], "default_strength", source, positive=False)
    direction = meta.get("default_direction", "gradient")
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise _fail(source, f"metadata field 'default_direction' must be one of "
                            f"{list(DIRECTIONS)}, got {_show(direction)}")
    target = meta.get("default_target")
    if target is not None:
        target = _float_field(target, "default_target", source, positive=True)
        if not 0.5 < target < 1:
            raise _fail(source, f"metadata field 'default_target' must be null or a probability "
                                f"in (0.5, 1), got {_num(target)}")
    natural = _natural_field(meta.get("natural"), train, source)
    if direction == "natural":
        lacking = [layer for layer in steer if natural is None or layer not in natural["layers"]]
        if lacking:
            raise _fail(source, f"metadata field 'default_direction' is 'natural' but the natural "
                                f"direction has no matrices at steering layers "
                                f"{_trim(repr(lacking))}")

    metrics = _bounded_object(meta["metrics"], "metrics", source, 0)

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "concept": concept,
        "model": model,
        "train_layers": train,
        "steer_layers": steer,
        "hparams": hparams,
        "default_strength": strength,
        "default_direction": direction,
        "default_target": target,
        "natural": natural,
        "metrics": metrics,
    }


def _bounded_object(value: Any, name: str, source: str, depth: int) -> dict:
    """Metadata field ``name``: a free-form JSON object (:func:`_json_value`, nested ``depth``
    levels down) of at most :data:`MAX_METRICS_BYTES` as JSON."""
    if not isinstance(value, Mapping):
        raise _fail(source, f"metadata field '{name}' must be a JSON object (dict), got {_show(value)}")
    checked = _json_value(value, name, source, depth)
    size = len(_dumps(checked))
    if size > MAX_METRICS_BYTES:
        raise _fail(source, f"metadata field '{name}' is {size} bytes as JSON, over the "
                            f"{MAX_METRICS_BYTES}-byte limit")
    return checked


def _natural_field(value: Any, train: list[int], source: str) -> dict | None:
    """The ``natural`` metadata field: null, or which layers have a natural-direction matrix,
    each layer's damping ``lambda`` (relative to the Fisher's mean eigenvalue), the number of
    Fisher samples behind the matrices and behind the choice of ``lambda``, and the choice's
    criterion table (free-form JSON, bounded like the metrics)."""
    if value is None:
        return None
    nat = _check_keys(value, "natural", _NATURAL_KEYS, source)
    layers = _layers_field(nat["layers"], "natural.layers", source)
    outside = [layer for layer in layers if layer not in set(train)]
    if outside:
        raise _fail(source, f"metadata field 'natural.layers' must be a subset of train_layers "
                            f"{_trim(repr(train))}; layers {_trim(repr(outside))} are not "
                            "training layers")
    lambdas = nat["lambdas"]
    if not isinstance(lambdas, (list, tuple)) or len(lambdas) != len(layers):
        raise _fail(source, f"metadata field 'natural.lambdas' must be a list of one number per "
                            f"layer of natural.layers ({len(layers)}), got {_show(lambdas)}")
    lambdas = [_float_field(x, f"natural.lambdas[{i}]", source, positive=True)
               for i, x in enumerate(lambdas)]
    criterion = _bounded_object(nat["criterion"], "natural.criterion", source, 1)
    return {
        "layers": layers,
        "lambdas": lambdas,
        "samples": _int_field(nat["samples"], "natural.samples", 1, source),
        "validation_samples": _int_field(nat["validation_samples"], "natural.validation_samples",
                                         1, source),
        "criterion": criterion,
    }


def _check_format(meta: Any, source: str) -> Mapping[str, Any]:
    """Check the dict type, ``format`` and ``format_version`` before anything else,
    so a file of another kind or a newer version gets that message first."""
    if not isinstance(meta, Mapping):
        raise _fail(source, f"metadata must be a JSON object (dict), got {_show(meta)}")
    for key in ("format", "format_version"):
        if key not in meta:
            raise _fail(source, f"missing metadata field '{key}'")
    if not isinstance(meta["format"], str) or meta["format"] != FORMAT_NAME:
        raise _fail(source, f"metadata field 'format' must be {FORMAT_NAME!r}, got "
                            f"{_show(meta['format'])}: not an SVF field artifact")
    version = meta["format_version"]
    if not _is_int(version):
        raise _fail(source, f"metadata field 'format_version' must be an int, got {_show(version)}")
    if version not in READABLE_VERSIONS:
        raise _fail(source, f"unsupported format_version {_num(version)} (this library reads "
                            f"versions {', '.join(map(str, READABLE_VERSIONS))})")
    return meta


# --------------------------------------------------------------------------- tensors


def _expected(meta: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """Expected shape of every tensor with where it comes from (for messages)."""
    d = meta["model"]["hidden_size"]
    n = len(meta["train_layers"])
    r, de, m = (meta["hparams"][k] for k in ("r", "de", "m"))
    sd, sr, sde, sm = (_num(x) for x in (d, r, de, m))  # shortened for messages
    out = {
        "R": ((r, d), f"from hparams r={sr}, model.hidden_size={sd}"),
        "layer_emb": ((n, de), f"from len(train_layers)={n}, hparams de={sde}"),
        "Wg": ((r, de), f"from hparams r={sr}, de={sde}"),
        "Wb": ((r, de), f"from hparams r={sr}, de={sde}"),
        "W1": ((m, r), f"from hparams r={sr}, m={sm}"),
        "b1": ((m,), f"from hparams m={sm}"),
        "w2": ((m,), f"from hparams m={sm}"),
        "b2": ((1,), "(one scalar bias)"),
        "mean_norms": ((n,), f"from len(train_layers)={n}"),
        "caa": ((n, d), f"from len(train_layers)={n}, model.hidden_size={sd}"),
        "robust_norms": ((n,), f"from len(train_layers)={n}"),
        "covariances": ((n, r, r), f"from len(train_layers)={n}, hparams r={sr}"),
    }
    if meta.get("natural") is not None:
        k = len(meta["natural"]["layers"])
        why = f"from len(natural.layers)={k}, hparams m={sm}, model.hidden_size={sd}"
        out[NATURAL_TENSOR_NAME] = ((k, m, d), why)
    return out


def _present(names: Any) -> list[str]:
    """The artifact's tensor names in canonical order: the required, then the optional ones
    present."""
    optional = (*OPTIONAL_TENSOR_NAMES, NATURAL_TENSOR_NAME)
    return [*TENSOR_NAMES, *(n for n in optional if n in names)]


def expected_shapes(meta: dict) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor (required, then optional) that the (validated) metadata implies
    (``natural_B`` only when its metadata field ``natural`` is there)."""
    meta = validate_metadata(meta)
    return {name: shape for name, (shape, _) in _expected(meta).items()}


def _check_names(names: list[str], meta: dict, source: str) -> None:
    """Exact tensor name set: report the first missing, then the first unexpected. The
    optional tensors come both or neither."""
    missing = [n for n in TENSOR_NAMES if n not in names]
    if missing:
        more = f" (and {len(missing) - 1} more: {missing[1:]})" if len(missing) > 1 else ""
        raise _fail(source, f"missing tensor '{missing[0]}'{more}")
    optional = [n for n in OPTIONAL_TENSOR_NAMES if n in names]
    allowed = (*TENSOR_NAMES, *OPTIONAL_TENSOR_NAMES, NATURAL_TENSOR_NAME)
    if optional and len(optional) != len(OPTIONAL_TENSOR_NAMES):
        lacking = next(n for n in OPTIONAL_TENSOR_NAMES if n not in names)
        raise _fail(source, f"tensor '{optional[0]}' is there but '{lacking}' is missing "
                            "(they come together)")
    if meta["default_direction"] == "preconditioned" and not optional:
        raise _fail(source, "metadata field 'default_direction' is 'preconditioned' but the "
                            "tensor 'covariances' is missing")
    if meta["natural"] is not None and NATURAL_TENSOR_NAME not in names:
        raise _fail(source, f"metadata field 'natural' is there but the tensor "
                            f"'{NATURAL_TENSOR_NAME}' is missing")
    if meta["natural"] is None and NATURAL_TENSOR_NAME in names:
        raise _fail(source, f"tensor '{NATURAL_TENSOR_NAME}' is there but metadata field "
                            "'natural' is missing (null)")
    extra = sorted(n for n in names if n not in allowed)
    if extra:
        more = f" (and {len(extra) - 1} more: {extra[1:]})" if len(extra) > 1 else ""
        raise _fail(source, f"unexpected tensor {_trim(repr(extra[0]))}{_trim(more, 200)}")


def validate_tensors(
    tensors: dict[str, torch.Tensor], meta: dict, source: str = "<tensors>"
) -> None:
    """Check the exact name set, dtype float32, shapes, finiteness and mean_norms > 0.

    Any device is accepted (checks run where the tensor lives); contiguity is not
    required here (``save_field`` makes a contiguous copy).
    """
    meta = validate_metadata(meta, source)
    if not isinstance(tensors, Mapping):
        raise _fail(source, f"tensors must be a dict of name -> torch.Tensor, got {_show(tensors)}")
    for name in tensors:
        if not isinstance(name, str):
            raise _fail(source, f"unexpected tensor {_show(name)}")
    _check_names(list(tensors), meta, source)
    expected = _expected(meta)
    for name in _present(tensors):
        shape, why = expected[name]
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise _fail(source, f"tensor '{name}' must be a torch.Tensor, got {_show(t)}")
        if t.layout != torch.strided or t.device.type == "meta":
            raise _fail(source, f"tensor '{name}' must be a dense tensor with data "
                                f"(got layout {t.layout}, device {t.device})")
        if t.dtype != torch.float32:
            raise _fail(source, f"tensor '{name}' has dtype {t.dtype}, expected torch.float32")
        if tuple(t.shape) != shape:
            raise _fail(source, f"tensor '{name}' has shape {tuple(t.shape)}, "
                                f"expected {shape} {why}")
        finite = torch.isfinite(t.detach())
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise _fail(source, f"tensor '{name}' contains NaN or Inf ({bad} of {t.numel()} "
                                "values)")
    norms = tensors["mean_norms"].detach()
    if not bool((norms > 0).all()):
        i = int(torch.argmin(norms))
        raise _fail(source, f"tensor 'mean_norms' must be > 0 everywhere (mean activation "
                            f"norms); got {float(norms[i])!r} for training layer "
                            f"{meta['train_layers'][i]}")


# ----------------------------------------------------------------- model compatibility


def _check_compat(
    meta: dict, hidden_size: int | None, num_layers: int | None, source: str
) -> None:
    for arg, value in (("hidden_size", hidden_size), ("num_layers", num_layers)):
        if value is not None and (not _is_int(value) or value < 1):
            raise SVFArgumentError(f"{arg} must be an int >= 1 or None, got {_show(value)}")
    if hidden_size is not None and meta["model"]["hidden_size"] != hidden_size:
        raise _fail(source, f"field is for hidden_size {_num(meta['model']['hidden_size'])} but "
                            f"the model has {hidden_size}")
    if num_layers is not None:
        for layer in meta["train_layers"]:  # steer_layers is a subset of these
            if layer >= num_layers:
                raise _fail(source, f"field train_layers contains layer {_num(layer)} but the "
                                    f"model has only {num_layers} layers")
        if meta["model"]["num_layers"] != num_layers:
            raise _fail(source, f"field is for a model with "
                                f"{_num(meta['model']['num_layers'])} layers but the model "
                                f"has {num_layers}")


def check_compatible(meta: dict, hidden_size: int, num_layers: int, source: str = "<metadata>"
                     ) -> None:
    """Check that a field fits a model: equal hidden size, every layer index below
    ``num_layers``, and equal layer count (a field is trained for one architecture)."""
    meta = validate_metadata(meta, source)
    _check_compat(meta, hidden_size, num_layers, source)


# -------------------------------------------------------------------- header parsing


def _parse_header(raw: bytes, source: str) -> dict[str, Any]:
    """Parse the JSON header bytes (after the 8-byte length prefix) into a dict."""
    try:
        header = _loads(raw.decode("utf-8"))
    except ValueError as exc:  # includes UnicodeDecodeError and JSONDecodeError
        raise _fail(source, f"not a safetensors file (header is not valid UTF-8 JSON: {exc})"
                    ) from None
    if not isinstance(header, dict):
        raise _fail(source, f"not a safetensors file (header is JSON {type(header).__name__}, "
                            "not an object)")
    return header


def _check_header(header: dict[str, Any], data_len: int, source: str) -> dict:
    """Check the parsed header against the format and the data section length.

    Returns the normalised metadata. Checks the metadata, the tensor name set, each
    declared dtype (F32 only) and shape (against the metadata), and that data_offsets
    match the shapes and tile the data section exactly (no gap, overlap or overrun).
    """
    st_meta = header.get("__metadata__")
    if st_meta is None or (isinstance(st_meta, dict) and "svf" not in st_meta):
        raise _fail(source, "safetensors metadata has no 'svf' key: not an SVF field artifact")
    if not isinstance(st_meta, dict):
        raise _fail(source, f"safetensors '__metadata__' must map strings to strings, "
                            f"got {_show(st_meta)}")
    for key in st_meta:
        if key != "svf":
            raise _fail(source, f"unexpected safetensors metadata key {_trim(repr(key))} "
                                "(only 'svf' is allowed)")
    text = st_meta["svf"]
    if not isinstance(text, str):
        raise _fail(source, f"safetensors metadata 'svf' must be a string, got {_show(text)}")
    try:
        parsed = _loads(text)
    except ValueError as exc:
        raise _fail(source, f"metadata 'svf' is not valid JSON ({exc})") from None
    meta = validate_metadata(parsed, source)

    _check_names([k for k in header if k != "__metadata__"], meta, source)
    spans: list[tuple[int, int, str]] = []
    expected = _expected(meta)
    for name in _present(header):
        shape, why = expected[name]
        info = header[name]
        if not isinstance(info, dict) or set(info) != _TENSOR_INFO_KEYS:
            raise _fail(source, f"tensor '{name}' header entry must be an object with exactly "
                                f"'dtype', 'shape', 'data_offsets', got {_show(info)}")
        dtype = info["dtype"]
        if dtype != "F32":
            plain = (isinstance(dtype, str) and dtype.isascii() and len(dtype) <= 16
                     and dtype.replace("_", "").isalnum())  # a code like F16 or F8_E4M3
            shown = dtype if plain else _show(dtype)
            raise _fail(source, f"tensor '{name}' has dtype {shown}, expected F32 (float32)")
        dims = info["shape"]
        if not isinstance(dims, list) or not all(_is_int(x) and x >= 0 for x in dims):
            raise _fail(source, f"tensor '{name}' has an invalid shape {_show(dims)}")
        if tuple(dims) != shape:
            raise _fail(source, f"tensor '{name}' has shape {_shape(dims)}, expected "
                                f"{_shape(shape)} {why}")
        offsets = info["data_offsets"]
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(x) for x in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise _fail(source, f"tensor '{name}' has invalid data_offsets {_show(offsets)}")
        begin, end = offsets
        need = math.prod(shape) * _F32_BYTES
        if end - begin != need:
            raise _fail(source, f"tensor '{name}' data_offsets [{_num(begin)}, {_num(end)}] span "
                                f"{_num(end - begin)} bytes, but shape {_shape(shape)} float32 "
                                f"needs {_num(need)}")
        if end > data_len:
            raise _fail(source, f"file is truncated: tensor '{name}' data ends at byte "
                                f"{_num(end)} of the data section, which holds only {data_len} "
                                "bytes")
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            kind = "overlaps the previous tensor" if begin < pos else "leaves a gap"
            raise _fail(source, f"tensor '{name}' data_offsets [{_num(begin)}, {_num(end)}] "
                                f"{kind} "
                                f"(expected to start at byte {pos})")
        pos = end
    if pos != data_len:
        raise _fail(source, f"file has {data_len - pos} unexpected bytes after the tensor data")
    return meta


# ------------------------------------------------------------------------- save/load


def _file_path(path: str | os.PathLike[str]) -> Path:
    """``x.safetensors`` is the file itself; any other path is a directory."""
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise SVFArgumentError(f"path must be a str or os.PathLike, got {_show(path)}")
    p = Path(os.fspath(path))
    return p if p.name.endswith(".safetensors") else p / FIELD_FILENAME


def save_field(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict
) -> Path:
    """Validate, then write the artifact atomically; return the file's path.

    Nothing is written unless tensors and metadata are valid (and the serialized bytes
    pass the same header checks that loading applies). The file is written to a
    temporary file in the target directory and moved into place with ``os.replace``,
    so readers see either the old artifact or the complete new one.
    """
    file = _file_path(path)
    source = str(file)
    meta = validate_metadata(meta, source)
    validate_tensors(tensors, meta, source)
    # Fresh contiguous CPU copies: safetensors refuses views and shared storage.
    data = {n: tensors[n].detach().cpu().contiguous().clone() for n in _present(tensors)}
    blob = _st.save(data, metadata={"svf": _dumps(meta)})
    n = int.from_bytes(blob[:8], "little")
    _check_header(_parse_header(blob[8 : 8 + n], source), len(blob) - 8 - n, source)

    parent = file.parent
    if parent.exists() and not parent.is_dir():
        raise _fail(source, f"cannot save: {parent} exists and is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=parent)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise _fail(source, f"cannot save: {exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _fail(source, f"cannot save: {exc}") from None
        raise
    return file


def load_field(
    path: str | os.PathLike[str],
    *,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    max_bytes: int = 2**31,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Load and fully validate an artifact; return ``(tensors, metadata)``.

    Never unpickles. Order: file checks (exists, regular, size <= max_bytes); the
    8-byte header length (<= min(1 MiB, size - 8)); the JSON header (metadata,
    names, dtypes, shapes, offsets) and, if given, the model's hidden_size /
    num_layers; only then the tensor bytes are read and handed to safetensors, and
    the tensors are checked for NaN/Inf and mean_norms > 0.
    """
    if not _is_int(max_bytes) or max_bytes < 1:
        raise SVFArgumentError(f"max_bytes must be an int >= 1, got {_show(max_bytes)}")
    file = _file_path(path)
    source = str(file)
    try:
        st = os.stat(file)
    except FileNotFoundError:
        where = "" if file.parent.is_dir() else f" (directory {file.parent} does not exist)"
        raise _fail(source, f"field artifact not found{where}") from None
    except NotADirectoryError:
        raise _fail(source, f"{file.parent} is not a directory: a field path is a directory "
                            "holding field.safetensors or a file ending in .safetensors"
                    ) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise _fail(source, f"cannot read: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(source, "not a regular file")
    if st.st_size > max_bytes:
        raise _fail(source, f"file is {st.st_size} bytes, over the max_bytes limit of "
                            f"{max_bytes}")
    try:
        with open(file, "rb") as f:
            return _load_open(f, source, hidden_size, num_layers, max_bytes)
    except OSError as exc:
        raise _fail(source, f"cannot read: {exc}") from None


def _load_open(
    f: Any, source: str, hidden_size: int | None, num_layers: int | None, max_bytes: int
) -> tuple[dict[str, torch.Tensor], dict]:
    """``load_field`` on an open file: header checks, then one read, then safetensors."""
    size = os.fstat(f.fileno()).st_size
    if size > max_bytes:
        raise _fail(source, f"file is {size} bytes, over the max_bytes limit of {max_bytes}")
    if size < 8:
        raise _fail(source, f"not a safetensors file (file is {size} bytes, too short for the "
                            "8-byte header length)")
    prefix = f.read(8)
    if len(prefix) != 8:
        raise _fail(source, "file changed while being read")
    n = int.from_bytes(prefix, "little")
    if n > size - 8:
        raise _fail(source, f"not a safetensors file (header length {n} exceeds file size "
                            f"{size} minus the 8-byte length prefix)")
    if n > MAX_HEADER_BYTES:
        raise _fail(source, f"not a safetensors file (header length {n} exceeds the "
                            f"{MAX_HEADER_BYTES}-byte limit)")
    raw = f.read(n)
    if len(raw) != n:
        raise _fail(source, "file changed while being read")
    meta = _check_header(_parse_header(raw, source), size - 8 - n, source)
    _check_compat(meta, hidden_size, num_layers, source)

    f.seek(0)
    blob = f.read(size + 1)
    if len(blob) != size or blob[8 : 8 + n] != raw:
        raise _fail(source, "file changed while being read")
    try:
        loaded = _st.load(blob)
    except BaseException as exc:  # pyo3's PanicException is a BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _fail(source, f"safetensors could not load the file: "
                            f"{type(exc).__name__}: {exc}") from None
    del blob
    validate_tensors(loaded, meta, source)
    return {name: loaded[name] for name in _present(loaded)}, meta
