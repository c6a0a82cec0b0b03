"""One engine's field tables by layer, and which layers a step steers.

vLLM's decoder layers return ``(hidden_states, residual)``; the residual stream a field was
trained on is their sum. Each steered layer calls ``svf::residual_table_update_`` on that pair
(:meth:`svf_kernels.FieldTable.residual_update_`): it forms the sum in ``hidden``, moves its
rows with the layer's table (row ``t`` by field ``field_ids[t]`` at ``alpha[t]``; ``-1``: not
at all) and zeroes ``residual``, so the next layer's fused add-and-norm reads the same stream.
``field_ids``, ``alpha`` and the layer's ``live`` flag are persistent buffers (their first
``hidden.shape[0]`` entries are this step's tokens) filled by the model runner before each
forward, so a compiled graph keeps reading the same tensors; a layer whose flag is off this step
is left as it is. The registry keeps each open engine's tables by layer name (what
:meth:`ServedFields.close` releases).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from svf_kernels import FieldTable


@dataclass
class EngineTables:
    """One engine's tables by layer, and a ``live`` flag per layer (one CPU bool per entry of
    ``layers``): whether this step steers a token there."""

    tables: dict[int, FieldTable]
    layers: Sequence[int] = ()
    flags: torch.Tensor = field(init=False)
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layers = list(self.layers) or sorted(self.tables)
        self.flags = torch.zeros(len(self.layers), dtype=torch.bool)

    @property
    def live(self) -> frozenset[int]:
        """The layers at which this step steers some token."""
        return frozenset(i for i, on in zip(self.layers, self.flags.tolist()) if on)

    @property
    def active(self) -> bool:
        """Whether this step steers any token at any layer."""
        return bool(self.flags.any())

    def flag(self, layer: int) -> torch.Tensor:
        """The one-element view of ``flags`` that layer ``layer``'s op reads."""
        row = self.layers.index(layer)
        return self.flags[row:row + 1]


_REGISTRY: dict[str, tuple[EngineTables, int]] = {}


def register_table(name: str, layers: EngineTables, layer: int) -> None:
    """Keep ``layers.tables[layer]`` under ``name`` until :func:`unregister`."""
    _REGISTRY[name] = (layers, layer)
    layers.names.append(name)


def unregister(layers: EngineTables) -> None:
    """Forget every name registered for ``layers``."""
    for name in layers.names:
        _REGISTRY.pop(name, None)
    layers.names.clear()
