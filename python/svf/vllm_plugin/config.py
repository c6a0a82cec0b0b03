"""Which fields the engine serves: a mapping name -> artifact(s), read at engine start.

Given through vLLM's own ``additional_config`` (``LLM(..., additional_config={"svf":
{"fields": {...}}})``, ``vllm serve ... --additional-config '{"svf": {"fields": {...}}}'``)
or, for launchers that only pass environment, the JSON mapping in ``SVF_VLLM_FIELDS``.
Each value is an artifact path, a list of paths (one multi-concept field, combined by
softmin), or a mapping with the keys ``paths`` (the field's artifacts), ``vector`` (a control
vector file: GGUF, or ``.safetensors`` with one tensor per layer; :func:`svf.load_control_vector`),
``layers`` (other layers than the entry's own) and ``method`` (``"svf"``; ``"caa"``: the field's
CAA vector, served as a static entry). ``paths`` and ``vector`` together serve the field and the
vector as one entry (:mod:`svf.table_entries`); ``vector`` alone, a static entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from svf_kernels import SVFArgumentError

from ..arguments import show

ENV_VAR = "SVF_VLLM_FIELDS"
CONFIG_KEY = "svf"


#: How a served entry steers with its field: the field itself, or its CAA vector.
METHODS = ("svf", "caa")
_KEYS = ("layers", "method", "paths", "vector")


@dataclass(frozen=True)
class FieldSpec:
    """One served entry: its field's artifact paths (several: softmin; none for a control
    vector alone), its control vector file (or None), the layers it steers (None: its own) and
    ``method`` (``"caa"``: the field's CAA vector instead of the field)."""

    name: str
    paths: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None
    vector: str | None = None
    method: str = "svf"


def _problem(text: str) -> SVFArgumentError:
    return SVFArgumentError(f"svf plugin configuration: {text}")


def _paths(name: str, value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p for p in items):
        raise _problem(f"field {name!r} needs an artifact path or a non-empty list of paths, "
                       f"got {show(value)}")
    return tuple(items)


def _spec(name: object, value: object) -> FieldSpec:
    if not isinstance(name, str) or not name:
        raise _problem(f"field names must be non-empty strings, got {show(name)}")
    if not isinstance(value, Mapping):
        return FieldSpec(name, _paths(name, value))
    unknown = sorted(set(value) - set(_KEYS), key=str)
    if unknown:
        raise _problem(f"field {name!r} has unknown keys {unknown}; known: {list(_KEYS)}")
    if "paths" not in value and "vector" not in value:
        raise _problem(f"field {name!r} needs 'paths' (its field), 'vector' (a control vector "
                       "file) or both")
    vector = value.get("vector")
    if vector is not None and (not isinstance(vector, str) or not vector):
        raise _problem(f"field {name!r}: vector must be a file path, got {show(vector)}")
    method = value.get("method", "svf")
    if method not in METHODS:
        raise _problem(f"field {name!r}: method must be one of {list(METHODS)}, got {show(method)}")
    paths = _paths(name, value["paths"]) if "paths" in value else ()
    if method == "caa" and (len(paths) != 1 or vector is not None):
        raise _problem(f"field {name!r}: method 'caa' serves the CAA vector of one artifact: give "
                       "one path and no vector")
    layers = value.get("layers")
    if layers is not None:
        if (not isinstance(layers, list) or not layers
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)):
            raise _problem(f"field {name!r}: layers must be a non-empty list of layer indices, "
                           f"got {show(layers)}")
        layers = tuple(sorted(set(layers)))
    return FieldSpec(name, paths, layers, vector, method)


def _mapping(value: object, where: str) -> dict[str, FieldSpec]:
    if not isinstance(value, Mapping) or not value:
        raise _problem(f"{where} must be a non-empty mapping of field name -> artifact path(s), "
                       f"got {show(value)}")
    return {spec.name: spec for spec in (_spec(k, v) for k, v in value.items())}


def served_fields(additional_config: Mapping | None,
                  environ: Mapping[str, str] = os.environ) -> dict[str, FieldSpec]:
    """The configured fields by name ({} when none is configured). A malformed configuration,
    or fields given both ways, is an :class:`SVFArgumentError` naming the problem."""
    section = (additional_config or {}).get(CONFIG_KEY) if isinstance(additional_config, Mapping) \
        else None
    text = environ.get(ENV_VAR)
    if section is not None and text:
        raise _problem(f"fields are given both in additional_config[{CONFIG_KEY!r}] and in "
                       f"${ENV_VAR}; give them one way")
    if section is not None:
        if not isinstance(section, Mapping) or set(section) != {"fields"}:
            raise _problem(f"additional_config[{CONFIG_KEY!r}] must be {{'fields': {{name: "
                           f"path(s)}}}}, got {show(section)}")
        return _mapping(section["fields"], f"additional_config[{CONFIG_KEY!r}]['fields']")
    if text:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _problem(f"${ENV_VAR} is not JSON: {exc}") from None
        return _mapping(value, f"${ENV_VAR}")
    return {}
