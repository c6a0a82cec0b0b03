"""One dispatch point: which backend runs ``field_update_`` for a device.

Backends are registered here by name with an availability check. The default is the first
available backend for the tensor's device; the environment variable ``SVF_BACKEND``
overrides it and fails loudly when the requested backend cannot run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import SVFArgumentError
from .reference import field_table_update_reference, field_update_reference


@dataclass(frozen=True)
class Backend:
    """A named implementation of the op and the device types it serves.

    ``impl(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, rows, field_ids=None)``
    serves both ops: one field (``field_ids`` None) and the field table (``A [F, C, m, d]``).
    """

    name: str
    device_types: tuple[str, ...]
    impl: Callable[..., torch.Tensor]
    available: Callable[[], bool]
    why_unavailable: str = ""


# Later registrations take precedence: compiled kernels register after the torch reference.
_BACKENDS: dict[str, Backend] = {}
# (device type, SVF_BACKEND) -> the chosen backend: selection runs on every op call, and the
# availability checks behind it (torch.cuda.is_available(), ...) cost microseconds.
_CHOSEN: dict[tuple[str, str], Backend] = {}


def register_backend(backend: Backend) -> None:
    """Add a backend (compiled kernels register themselves at import)."""
    _BACKENDS[backend.name] = backend
    _CHOSEN.clear()


def field_update_torch(hidden, A, c, w2, b2, alpha, tau=1.0, normalize=True, activation="gelu_tanh",
                       eps=1e-6, rows=None, field_ids=None):
    """The ``torch`` backend: the reference, one field (``A [C, m, d]``) or a table (``field_ids``).

    The reference computes in float64 whatever it is given, so the hot path's one cheap check
    that the compiled kernels make themselves is made here: ``hidden`` is floating point.
    """
    if not hidden.is_floating_point():
        raise SVFArgumentError(f"hidden dtype must be float32, bfloat16 or float16, got {hidden.dtype}")
    if field_ids is None:
        return field_update_reference(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, rows)
    return field_table_update_reference(hidden, A, c, w2, b2, field_ids, alpha, tau, normalize,
                                        activation, eps)


register_backend(
    Backend("torch", ("cpu", "cuda", "mps", "xpu", "meta"), field_update_torch, lambda: True)
)


def available_backends(device_type: str | None = None) -> list[str]:
    """Names of the backends that can run here (optionally for one device type)."""
    return [
        b.name
        for b in _BACKENDS.values()
        if b.available() and (device_type is None or device_type in b.device_types)
    ]


def select_backend(device: torch.device) -> Backend:
    """The backend for tensors on ``device``: ``SVF_BACKEND`` if set, else the preferred one."""
    requested = os.environ.get("SVF_BACKEND", "").strip().lower()
    key = (device.type, requested)
    chosen = _CHOSEN.get(key)
    if chosen is None:
        chosen = _CHOSEN[key] = _choose(device, requested)
    return chosen


def _choose(device: torch.device, requested: str) -> Backend:
    if requested:
        backend = _BACKENDS.get(requested)
        if backend is None:
            raise SVFArgumentError(
                f"SVF_BACKEND={requested!r} is not a backend; known: {sorted(_BACKENDS)}"
            )
        if not backend.available():
            raise SVFArgumentError(
                f"SVF_BACKEND={requested!r} is not available here"
                + (f": {backend.why_unavailable}" if backend.why_unavailable else "")
            )
        if device.type not in backend.device_types:
            raise SVFArgumentError(
                f"SVF_BACKEND={requested!r} cannot run on {device.type} tensors "
                f"(it serves {list(backend.device_types)})"
            )
        return backend
    for backend in reversed(list(_BACKENDS.values())):
        if device.type in backend.device_types and backend.available():
            return backend
    raise SVFArgumentError(f"no field_update_ backend serves {device.type} tensors")
