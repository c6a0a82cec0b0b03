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

Beside (or instead of) ``fields``, ``fields_dir`` names a directory whose artifacts are served by
name while the engine runs (:mod:`svf.vllm_plugin.fields_dir`), in ``max_entries`` preallocated
slots of at most ``max_units`` hidden units each.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from svf_kernels import SVFArgumentError

from ..arguments import show

ENV_VAR = "SVF_VLLM_FIELDS"
CONFIG_KEY = "svf"


#: How a served entry steers with its field: the field itself, or its CAA vector.
METHODS = ("svf", "caa")
_KEYS = ("layers", "method", "paths", "vector")
_SECTION_KEYS = ("fields", "fields_dir", "max_entries", "max_units")
#: Slots for entries loaded from ``fields_dir`` while the engine runs, unless configured.
DEFAULT_MAX_ENTRIES = 8
#: Hidden units a slot holds per concept, unless configured: the default scorer's ``m``.
DEFAULT_MAX_UNITS = 64


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


@dataclass(frozen=True)
class ServingConfig:
    """What one engine serves: the entries loaded at start (pinned) by name, and the directory
    of entries loaded by name while it runs (None: none), with its slot count and slot width."""

    fields: dict[str, FieldSpec] = field(default_factory=dict)
    fields_dir: str | None = None
    max_entries: int = 0
    max_units: int = DEFAULT_MAX_UNITS

    def __bool__(self) -> bool:
        """Whether anything is served (the plugin's hooks do nothing otherwise)."""
        return bool(self.fields) or self.fields_dir is not None


def _count(section: Mapping, key: str, default: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise _problem(f"additional_config[{CONFIG_KEY!r}][{key!r}] must be an integer from 1 to "
                       f"4096, got {show(value)}")
    return value


def _section(section: object) -> ServingConfig:
    where = f"additional_config[{CONFIG_KEY!r}]"
    if not isinstance(section, Mapping) or not section or set(section) - set(_SECTION_KEYS):
        raise _problem(f"{where} must be a mapping with the keys 'fields' ({{name: path(s)}}) "
                       f"and/or 'fields_dir' (with 'max_entries', 'max_units'), got {show(section)}")
    if "fields" not in section and "fields_dir" not in section:
        raise _problem(f"{where} needs 'fields', 'fields_dir' or both, got {show(section)}")
    fields = _mapping(section["fields"], f"{where}['fields']") if "fields" in section else {}
    folder = section.get("fields_dir")
    if folder is None:
        extra = sorted(set(section) & {"max_entries", "max_units"})
        if extra:
            raise _problem(f"{where} gives {extra} without 'fields_dir'")
        return ServingConfig(fields)
    if not isinstance(folder, str) or not folder:
        raise _problem(f"{where}['fields_dir'] must be a directory path, got {show(folder)}")
    if not os.path.isdir(folder):
        raise _problem(f"{where}['fields_dir'] {folder!r} is not a directory")
    return ServingConfig(fields, os.path.realpath(folder),
                         _count(section, "max_entries", DEFAULT_MAX_ENTRIES),
                         _count(section, "max_units", DEFAULT_MAX_UNITS))


def serving_config(additional_config: Mapping | None,
                   environ: Mapping[str, str] = os.environ) -> ServingConfig:
    """What the engine is configured to serve (empty when nothing is). A malformed
    configuration, or fields given both ways, is an :class:`SVFArgumentError` naming the
    problem."""
    section = (additional_config or {}).get(CONFIG_KEY) if isinstance(additional_config, Mapping) \
        else None
    text = environ.get(ENV_VAR)
    if section is not None and text:
        raise _problem(f"fields are given both in additional_config[{CONFIG_KEY!r}] and in "
                       f"${ENV_VAR}; give them one way")
    if section is not None:
        return _section(section)
    if text:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _problem(f"${ENV_VAR} is not JSON: {exc}") from None
        return ServingConfig(_mapping(value, f"${ENV_VAR}"))
    return ServingConfig()
