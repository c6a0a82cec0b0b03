"""Small adapters to Hugging Face decoder models (Llama family, GPT-2 family)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from svf_kernels import SVFArgumentError

_LAYER_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers", "layers", "h")


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' weight-loading progress bar off for the block (loading takes about a second
    and the commands report their own progress); the caller's setting is restored after."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def num_layers(model: nn.Module) -> int:
    """Number of decoder layers."""
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    return int(n) if n is not None else len(decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream."""
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)


def decoder_layers_path(model: nn.Module, num_layers: int | None = None) -> tuple[nn.Module, str]:
    """The module that owns the decoder layer list, and the list's attribute name.

    The one search rule for decoder layers, of Hugging Face models and of vLLM's (which keep
    them at ``model.layers`` too): the first non-empty ``nn.ModuleList`` at a known path; with
    ``num_layers``, the list must have that many layers, and a model whose layers sit elsewhere
    (a multimodal wrapper, say) is searched for a ``...layers`` list of that length.
    """
    for path in _LAYER_PATHS:
        layers = _get(model, path)
        if (isinstance(layers, nn.ModuleList) and len(layers) > 0
                and (num_layers is None or len(layers) == num_layers)):
            owner_path, _, name = path.rpartition(".")
            return (_get(model, owner_path) if owner_path else model), name
    if num_layers is not None:
        for path, module in model.named_modules():
            if (isinstance(module, nn.ModuleList) and path.endswith("layers")
                    and len(module) == num_layers):
                owner_path, _, name = path.rpartition(".")
                return (model.get_submodule(owner_path) if owner_path else model), name
        raise SVFArgumentError(f"found no list of {num_layers} decoder layers in "
                               f"{type(model).__name__}")
    raise SVFArgumentError(
        f"model must be a Hugging Face decoder model: cannot find the decoder layers of {type(model).__name__}"
    )


def decoder_layers(model: nn.Module, num_layers: int | None = None) -> nn.ModuleList:
    """The decoder layers, in order (:func:`decoder_layers_path` finds them)."""
    owner, name = decoder_layers_path(model, num_layers)
    return getattr(owner, name)


def layer_output(out: Any) -> torch.Tensor:
    """The residual stream from a decoder layer's output (tensor in transformers 5, tuple in 4)."""
    return out[0] if isinstance(out, tuple) else out


def check_layers(model: nn.Module, layers: list[int] | tuple[int, ...], what: str = "layers") -> None:
    """Every index must address a decoder layer."""
    n = num_layers(model)
    bad = [i for i in layers if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n]
    if bad:
        raise SVFArgumentError(f"{what} {bad} out of range: the model has {n} decoder layers (0..{n - 1})")


def check_model(model: object) -> None:
    """``model`` is an ``nn.Module`` with a config and a list of decoder layers."""
    if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
        raise SVFArgumentError(
            f"model must be a Hugging Face decoder model (an nn.Module with a config), got {type(model).__name__}"
        )
    decoder_layers_path(model)


def layer_list(layers: object, what: str = "layers") -> list[int]:
    """``layers`` as a list of ints (a sequence of ints, not a string or a single int)."""
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise SVFArgumentError(f"{what} must be a sequence of layer indices, got {layers!r}")
    out = list(layers)
    bad = [i for i in out if not isinstance(i, int) or isinstance(i, bool)]
    if bad:
        raise SVFArgumentError(f"{what} must be integers, got {bad}")
    return out


def distinct_layers(layers: object, what: str = "layers") -> list[int]:
    """:func:`layer_list`, non-empty and without duplicates (the layers one call steers or
    exports)."""
    out = layer_list(layers, what)
    if not out:
        raise SVFArgumentError(f"{what} is empty: give at least one layer")
    if len(set(out)) != len(out):
        raise SVFArgumentError(f"{what} has duplicates: {out}")
    return out
