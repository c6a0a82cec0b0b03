"""Argument checks shared by the public functions of ``svf``.

Each check raises :class:`SVFArgumentError` with a message that names the argument and shows
the bad value, before any work is done, so a bad call changes nothing. Checks of the op's
tensors live beside the op (``svf_kernels.ops.op``); checks of models and layers in :mod:`svf.hf`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from svf_kernels import SVFArgumentError

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def show(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (error messages stay short)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_bool(value: object, name: str) -> bool:
    """``value`` is True or False (not 0/1, not None)."""
    if not isinstance(value, bool):
        raise SVFArgumentError(f"{name} must be True or False, got {show(value)}")
    return value


def check_optional_bool(value: object, name: str) -> bool | None:
    """``value`` is True, False or None (not 0/1)."""
    if value is not None and not isinstance(value, bool):
        raise SVFArgumentError(f"{name} must be True, False or None, got {show(value)}")
    return value


def check_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` is an int (not a bool) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SVFArgumentError(f"{name} must be an integer, got {show(value)}")
    if minimum is not None and value < minimum:
        raise SVFArgumentError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SVFArgumentError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_optional_int(value: object, name: str, minimum: int | None = None) -> int | None:
    """``None`` or an int >= ``minimum``."""
    return None if value is None else check_int(value, name, minimum)


def check_number(value: object, name: str, *, minimum: float | None = None, positive: bool = False,
                 maximum: float | None = None) -> float:
    """``value`` is a finite real number (>= ``minimum``, > 0 if ``positive``, <= ``maximum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SVFArgumentError(f"{name} must be a number, got {show(value)}")
    if not math.isfinite(value):
        raise SVFArgumentError(f"{name} must be finite, got {value}")
    if positive and not value > 0:
        raise SVFArgumentError(f"{name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise SVFArgumentError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SVFArgumentError(f"{name} must be <= {maximum}, got {value}")
    return float(value)


def check_strength_or_alpha(strength: object, alpha: object) -> None:
    """At most one of a relative ``strength`` and an absolute ``alpha``, each a finite number."""
    if strength is not None and alpha is not None:
        raise SVFArgumentError("give either strength (relative) or alpha (absolute), not both")
    for name, value in (("strength", strength), ("alpha", alpha)):
        if value is not None:
            check_number(value, name)


def check_text(value: object, name: str, *, allow_empty: bool = False) -> str:
    """``value`` is a string (non-empty unless ``allow_empty``)."""
    if not isinstance(value, str):
        raise SVFArgumentError(f"{name} must be a string, got {show(value)}")
    if not value and not allow_empty:
        raise SVFArgumentError(f"{name} must be a non-empty string")
    return value


def check_texts(value: object, name: str) -> list[str]:
    """``value`` is a non-empty sequence of strings (a lone string is refused, not split)."""
    if isinstance(value, (str, bytes)):
        raise SVFArgumentError(f"{name} must be a sequence of strings, not a single string: "
                               f"use [{show(value, 40)}]")
    if not isinstance(value, Sequence) or not value:
        raise SVFArgumentError(f"{name} must be a non-empty sequence of strings, got {show(value)}")
    bad = [i for i, t in enumerate(value) if not isinstance(t, str)]
    if bad:
        raise SVFArgumentError(f"{name}[{bad[0]}] must be a string, got {show(value[bad[0]])}")
    return list(value)


def check_pairs(value: object, name: str = "pairs", minimum: int = 1) -> list:
    """A sequence of at least ``minimum`` contrastive pairs (``.positive`` / ``.negative`` strings)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise SVFArgumentError(f"{name} must be a sequence of contrastive pairs, got {show(value)}")
    for i, p in enumerate(value):
        for side in ("positive", "negative"):
            if not isinstance(getattr(p, side, None), str):
                raise SVFArgumentError(f"{name}[{i}] must have string .positive and .negative "
                                       f"(e.g. svf.ContrastivePair), got {show(p)}")
    if len(value) < minimum:
        raise SVFArgumentError(f"{name} has {len(value)} pairs; at least {minimum} are needed")
    return list(value)


def check_path(value: object, name: str) -> Path:
    """``value`` is a ``str`` or ``os.PathLike`` naming a file system path."""
    if not isinstance(value, (str, os.PathLike)):
        raise SVFArgumentError(f"{name} must be a path (str or os.PathLike), got {show(value)}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise SVFArgumentError(f"{name} must be a text path, got {show(value)}")
    if not text or "\0" in text:
        raise SVFArgumentError(f"{name} must be a non-empty path without NUL bytes, got {show(text)}")
    return Path(text)


def check_float_dtype(value: object, name: str = "dtype") -> torch.dtype:
    """``value`` is a floating ``torch.dtype`` a model can run in."""
    if not isinstance(value, torch.dtype) or value not in _FLOAT_DTYPES:
        raise SVFArgumentError(f"{name} must be one of torch.float32, torch.bfloat16, torch.float16, "
                               f"torch.float64, got {show(value)}")
    return value


def check_device(value: object, name: str = "device") -> torch.device:
    """``value`` names a device that exists here (``"cpu"``, ``"cuda:0"``, a ``torch.device``)."""
    if not isinstance(value, (str, torch.device)):
        raise SVFArgumentError(f"{name} must be a str or torch.device, got {show(value)}")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise SVFArgumentError(f"{name} {show(value)} is not a device: {exc}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise SVFArgumentError(f"{name} {show(value)} is not available here "
                                   f"({count} CUDA device{'s' if count != 1 else ''})")
    elif device.type not in ("cpu", "meta") and not _backend_available(device.type):
        raise SVFArgumentError(f"{name} {show(value)} is not available here")
    return device


def _backend_available(kind: str) -> bool:
    module = getattr(torch, kind, None) or getattr(torch.backends, kind, None)
    available = getattr(module, "is_available", None)
    return bool(available()) if callable(available) else False


def check_tokenizer(value: Any, name: str = "tokenizer") -> Any:
    """``value`` is a Hugging Face tokenizer: callable, with ``batch_decode`` and a pad or eos token."""
    if not callable(value) or not callable(getattr(value, "batch_decode", None)):
        raise SVFArgumentError(f"{name} must be a Hugging Face tokenizer, got {type(value).__name__}")
    if getattr(value, "pad_token_id", None) is None and getattr(value, "eos_token_id", None) is None:
        raise SVFArgumentError(f"{name} has neither a pad token nor an eos token to pad batches with")
    return value
