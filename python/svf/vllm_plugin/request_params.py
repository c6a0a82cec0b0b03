"""A request's steering, read from ``SamplingParams.extra_args`` and checked.

Two spellings: ``{"svf": {"field": NAME, "strength": S}}`` (offline; through the
OpenAI-compatible server, whose ``vllm_xargs`` values are flat, ``"svf"`` may be that
object's JSON text) or flat keys ``{"svf_field": NAME, "svf_strength": S}``. ``strength`` is
relative (as in :func:`svf.steer`), ``alpha`` an absolute L2 displacement per steered
layer; neither: the field's default strength. A strength must lie within ``±MAX_STRENGTH``, an
alpha within ``±MAX_STRENGTH`` times the field's largest strength scale (what strength
``MAX_STRENGTH`` moves there). No ``svf`` key: the request is not steered. Anything else fails
the request with a message naming the problem, before it reaches the engine.

The front end hands the engine each steered request's parsed steering under ``RESOLVED_KEY``
(with the content hash of an entry from ``fields_dir``); a client may not set that key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from svf_kernels import SVFArgumentError

from ..arguments import show

KEY = "svf"
PREFIX = "svf_"
#: Where the front end puts a request's checked steering for the engine (``SteerRequest.resolved``).
RESOLVED_KEY = "_svf_resolved"
# The largest |strength| a request may ask for. A field's default is about 0.25; at 10 each
# steered layer moves ten times the norm of a typical hidden state there, far past where text
# stays text (a huge strength overflows the residual stream and the reply comes back empty).
MAX_STRENGTH = 10.0


@dataclass(frozen=True)
class SteerRequest:
    """One request's steering: a served field and a relative ``strength`` or an absolute
    ``alpha`` (None for both: the field's default strength); ``sha256``: the content hash of an
    entry loaded from ``fields_dir`` (None: an entry configured at start)."""

    field: str
    strength: float | None = None
    alpha: float | None = None
    sha256: str | None = None

    def cache_salt(self) -> str:
        """What separates this steering's prefix-cache entries from any other's."""
        how = ("alpha", self.alpha) if self.alpha is not None else ("strength", self.strength)
        content = "" if self.sha256 is None else f":{self.sha256}"
        return f"svf:{self.field!r}{content}:{how[0]}:{how[1]!r}"

    def resolved(self) -> dict:
        """This steering as the engine reads it back (:meth:`from_resolved`)."""
        return {"field": self.field, "strength": self.strength, "alpha": self.alpha,
                "sha256": self.sha256}

    @classmethod
    def from_resolved(cls, value: Mapping) -> SteerRequest:
        """The steering :meth:`resolved` wrote."""
        return cls(value["field"], value["strength"], value["alpha"], value["sha256"])


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SVFArgumentError(f"{where} must be a number, got {show(value)}")
    if not math.isfinite(value):
        raise SVFArgumentError(f"{where} must be finite, got {value}")
    return float(value)


def _options(extra_args: Mapping) -> tuple[Mapping, str] | None:
    """The steering options and how to name one (``{}`` -> ``extra_args['svf']['field']``)."""
    flat = {k[len(PREFIX):]: v for k, v in extra_args.items()
            if isinstance(k, str) and k.startswith(PREFIX)}
    if KEY not in extra_args:
        return (flat, "extra_args['" + PREFIX + "{}']") if flat else None
    if flat:
        raise SVFArgumentError(f"extra_args gives both 'svf' and {sorted(PREFIX + k for k in flat)}; "
                               "give the steering one way")
    value = extra_args[KEY]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SVFArgumentError(f"extra_args['svf'] is text but not JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise SVFArgumentError("extra_args['svf'] must be an object like {\"field\": NAME, "
                               f"\"strength\": S}} (or its JSON text), got {show(value)}")
    return value, "extra_args['svf']['{}']"


def parse_request(extra_args: Mapping | None, fields: Collection[str],
                  alpha_bound: Callable[[str], float] | None = None,
                  lookup: Callable[[str], tuple[str, float]] | None = None) -> SteerRequest | None:
    """The steering ``extra_args`` asks for among the served ``fields`` (None: unsteered).
    ``alpha_bound(name)``: the largest ``|alpha|`` for that field, asked only of a request that
    gives an alpha (None: alpha is held to being finite only). ``lookup(name)``: a name not in
    ``fields`` as ``fields_dir`` has it now, ``(content hash, largest |alpha|)``, or an error
    naming the problem (None: no ``fields_dir``)."""
    if isinstance(extra_args, Mapping) and RESOLVED_KEY in extra_args:
        raise SVFArgumentError(f"extra_args[{RESOLVED_KEY!r}] is set by the svf plugin, not by "
                               "a request")
    found = _options(extra_args) if isinstance(extra_args, Mapping) else None
    if found is None:
        return None
    value, where = found
    unknown = sorted(set(value) - {"field", "strength", "alpha"}, key=str)
    if unknown:
        raise SVFArgumentError(f"unknown steering keys {[where.format(k) for k in unknown]}; "
                               f"known: {[where.format(k) for k in ('field', 'strength', 'alpha')]}")
    if "field" not in value:
        raise SVFArgumentError(f"{where.format('field')} is missing: the name of a served field")
    name = value["field"]
    if not isinstance(name, str):
        raise SVFArgumentError(f"{where.format('field')} must be a field name, got {show(name)}")
    sha256 = entry_bound = None
    if name not in fields and lookup is not None:
        sha256, entry_bound = lookup(name)
    elif name not in fields:
        served = sorted(fields)
        raise SVFArgumentError(f"unknown field {name!r} in {where.format('field')}; served "
                               f"fields: {served}" if served else
                               f"{where.format('field')} asks for field {name!r} but this engine "
                               "serves no SVF fields (configure them at start: additional_config "
                               "{'svf': {'fields': ...}} or $SVF_VLLM_FIELDS)")
    if "strength" in value and "alpha" in value:
        raise SVFArgumentError(f"both {where.format('strength')} (relative) and "
                               f"{where.format('alpha')} (absolute) are given; give one")
    strength = _number(value["strength"], where.format("strength")) if "strength" in value else None
    if strength is not None and abs(strength) > MAX_STRENGTH:
        raise SVFArgumentError(f"{where.format('strength')} must be between {-MAX_STRENGTH:g} and "
                               f"{MAX_STRENGTH:g} (a relative strength; a field's default is "
                               f"about 0.25), got {strength:g}")
    alpha = _number(value["alpha"], where.format("alpha")) if "alpha" in value else None
    if alpha is not None and (entry_bound is not None or alpha_bound is not None):
        bound = entry_bound if entry_bound is not None else alpha_bound(name)
        if abs(alpha) > bound:
            raise SVFArgumentError(f"{where.format('alpha')} must be between {-bound:.6g} and "
                                   f"{bound:.6g} for field {name!r} ({MAX_STRENGTH:g} times its "
                                   f"largest strength scale), got {alpha:g}")
    return SteerRequest(name, strength, alpha, sha256)
