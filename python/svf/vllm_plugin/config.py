"""Which fields the engine serves: a mapping name -> artifact(s), read at engine start.

Given through vLLM's own ``additional_config`` (``LLM(..., additional_config={"svf":
{"fields": {...}}})``, ``vllm serve ... --additional-config '{"svf": {"fields": {...}}}'``)
or, for launchers that only pass environment, the JSON mapping in ``SVF_VLLM_FIELDS``.
Each value is an artifact path, a list of paths (one multi-concept field, combined by
softmin), or ``{"paths": [...], "layers": [...]}`` to steer other layers than the field's own.
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


@dataclass(frozen=True)
class FieldSpec:
    """One served field: its artifact paths (several: softmin) and the layers it steers
    (None: the first artifact's own steering layers)."""

    name: str
    paths: tuple[str, ...]
    layers: tuple[int, ...] | None = None


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
    unknown = sorted(set(value) - {"paths", "layers"}, key=str)
    if unknown:
        raise _problem(f"field {name!r} has unknown keys {unknown}; known: ['layers', 'paths']")
    if "paths" not in value:
        raise _problem(f"field {name!r} needs 'paths'")
    layers = value.get("layers")
    if layers is not None:
        if (not isinstance(layers, list) or not layers
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)):
            raise _problem(f"field {name!r}: layers must be a non-empty list of layer indices, "
                           f"got {show(layers)}")
        layers = tuple(sorted(set(layers)))
    return FieldSpec(name, _paths(name, value["paths"]), layers)


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
