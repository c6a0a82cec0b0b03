"""One dispatch point: which backend runs ``field_update_`` for a call.

Backends (``svf_kernels/ops/backends/``) register here by name with an availability check. The
routing, decided only here (``csrc/registration.cpp`` mirrors it for the C++ fast path):

* float64 ``hidden`` (reference checks) goes to the ``torch`` reference, whatever else is
  asked for;
* else ``SVF_BACKEND`` names the backend, failing loudly when it cannot run here;
* else the last-registered available backend serving the tensor's device type
  (``cuda`` over ``triton`` on CUDA tensors, ``cpu`` over ``torch`` on CPU tensors).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import SVFArgumentError


@dataclass(frozen=True)
class Backend:
    """A named implementation of the op and the device types it serves.

    ``impl(hidden, A, c, w2, b2, alpha, tau, normalize, eps, rows, field_ids, B, target, band,
    vectors)``
    serves both ops: one field (``field_ids`` None) and the field table (``A [F, C, m, d]``,
    ``rows`` None). ``why_unavailable()`` says why it cannot run here, asked when needed so the
    reason is current.
    """

    name: str
    device_types: tuple[str, ...]
    impl: Callable[..., torch.Tensor]
    available: Callable[[], bool]
    why_unavailable: Callable[[], str] = lambda: ""


# Later registrations take precedence: compiled kernels register after the torch reference.
_BACKENDS: dict[str, Backend] = {}
# (device type, SVF_BACKEND) -> the chosen backend: selection runs on every op call, and the
# availability checks behind it (torch.cuda.is_available(), ...) cost microseconds.
_CHOSEN: dict[tuple[str, str], Backend] = {}


def register_backend(backend: Backend) -> None:
    """Add a backend (compiled kernels register themselves at import)."""
    _BACKENDS[backend.name] = backend
    _CHOSEN.clear()


def available_backends(device_type: str | None = None) -> list[str]:
    """Names of the backends that can run here (optionally for one device type)."""
    return [
        b.name
        for b in _BACKENDS.values()
        if b.available() and (device_type is None or device_type in b.device_types)
    ]


REFERENCE = "torch"


def select_backend(device: torch.device, dtype: torch.dtype | None = None) -> Backend:
    """The backend for a call on ``device`` (see the module docstring for the routing)."""
    if dtype == torch.float64:
        return _BACKENDS[REFERENCE]
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
                + (f": {why}" if (why := backend.why_unavailable()) else "")
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
