"""``svf_vllm::steer_residual_``: the one opaque op each steered decoder layer calls.

vLLM's decoder layers return ``(hidden_states, residual)``; the residual stream a field was
trained on is their sum. The op forms the sum in ``hidden``, moves its rows with the layer's
field table (``field_table_update_``: row ``t`` by field ``field_ids[t]`` at ``alpha[t]``;
``-1``: not at all) and zeroes ``residual``, so the next layer's fused add-and-norm reads the
same stream. ``field_ids`` and ``alpha`` are persistent per-token buffers (their first
``hidden.shape[0]`` entries are this step's tokens), filled by the model runner before each
forward, so a compiled graph keeps reading the same tensors. The op finds its table by name,
as vLLM's attention op finds its layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from svf_kernels import FieldTable


@dataclass
class EngineTables:
    """One engine's tables by layer, and the layers at which this step steers some token."""

    tables: dict[int, FieldTable]
    live: frozenset[int] = frozenset()
    names: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Whether this step steers any token at any layer."""
        return bool(self.live)


_REGISTRY: dict[str, tuple[EngineTables, int]] = {}


def register_table(name: str, layers: EngineTables, layer: int) -> None:
    """Make ``layers.tables[layer]`` the table the op finds under ``name``."""
    _REGISTRY[name] = (layers, layer)
    layers.names.append(name)


def unregister(layers: EngineTables) -> None:
    """Forget every name registered for ``layers``."""
    for name in layers.names:
        _REGISTRY.pop(name, None)
    layers.names.clear()


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


# Defined with ``torch.library.Library`` plus a fake, as vLLM registers its own ops: the call
# path is the dispatcher and one Python hop, where ``custom_op`` adds its own Python wrapping to
# each of the (up to one per layer) calls a step makes.
_LIB = torch.library.Library("svf_vllm", "DEF")
_LIB.define("steer_residual_(Tensor(a!) hidden, Tensor(b!) residual, Tensor field_ids, "
            "Tensor alpha, str name) -> ()")


def steer_residual_(hidden: torch.Tensor, residual: torch.Tensor, field_ids: torch.Tensor,
                    alpha: torch.Tensor, name: str) -> None:
    """Move the stream ``hidden + residual`` in place; leaves ``(stream, 0)`` when steering."""
    layers, layer = _REGISTRY[name]
    # A step that steers no token at this layer leaves its output untouched (unless a CUDA
    # graph is being captured: its replays may steer).
    if layer not in layers.live and not _capturing(hidden):
        return
    n = hidden.shape[0]
    hidden.add_(residual)
    layers.tables[layer].apply_(hidden, alpha[:n], field_ids[:n])
    residual.zero_()


_LIB.impl("steer_residual_", steer_residual_, "CompositeExplicitAutograd")


@torch.library.register_fake("svf_vllm::steer_residual_", lib=_LIB)
def _(hidden, residual, field_ids, alpha, name) -> None:
    return None
