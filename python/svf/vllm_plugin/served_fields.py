"""The fields one vLLM engine serves: loaded at start, packed per layer, wired into the model.

:class:`ServedFields` loads every configured entry (fields, control vectors or both; a
missing, bad or mismatched file raises the artifact error here, at engine start), packs them
as :func:`svf.steer_requests` does (same tables, same strength scales, so both paths steer
alike), wraps the steered decoder layers, and before each forward turns the scheduled batch
into per-token field ids and strengths (:meth:`set_batch`). Positions follow DESIGN.md §4: a request's last prompt
token, then every generated token; with chunked prefill a chunk that ends before the last
prompt token is not steered, and a preempted request recomputed from its prompt is steered
at the same positions again. No vLLM import here: the runner hooks pass plain arrays.

With ``slots`` (``fields_dir``), every layer is wrapped and every layer's table gets ``slots``
preallocated rows (:mod:`svf.vllm_plugin.entry_slots`); a request naming an entry of
``fields_dir`` (by content hash) that no slot holds loads its snapshot into a free slot, or into
the least recently used slot no running request needs. The scheduler admits at most ``slots``
such entries among the running requests (:func:`svf.vllm_plugin.vllm_hooks`), so one is
always there.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from svf_kernels import FieldTable, SVFArgumentError

from ..control_vectors import control_vector_from_field, load_control_vector
from ..field_packing import layer_tables
from ..steering_field import SteeringField
from ..table_entries import TableEntry, table_entry
from .config import DEFAULT_MAX_UNITS, FieldSpec
from .entry_slots import SlotCache, slot_table, write_slot
from .fields_dir import SLOT_EPS, load_snapshot, snapshot_store
from .request_params import MAX_STRENGTH, SteerRequest
from .steer_op import EngineTables, register_table, unregister

_ENGINE_IDS = itertools.count()


def load_entry(spec: FieldSpec, hidden_size: int, num_layers: int) -> TableEntry:
    """One served entry (its field's concepts, its control vector, or both), loaded and checked
    for a model of ``hidden_size`` and ``num_layers``, with the layers it steers."""
    what = f"field {spec.name!r}"

    def check_inside(layers) -> None:
        outside = [i for i in layers if i >= num_layers]
        if outside:
            raise SVFArgumentError(f"{what}: layers {outside} are outside the model's "
                                   f"{num_layers} layers")

    check_inside(spec.layers or ())
    concepts = [SteeringField.load(p, hidden_size=hidden_size, num_layers=num_layers)
                for p in spec.paths]
    parts: list = list(concepts)
    default = None
    if spec.method == "caa":  # the field's CAA vector, at the field's strength unit
        try:
            parts = [control_vector_from_field(concepts[0], method="caa", strength=1.0,
                                               layers=spec.layers)]
        except SVFArgumentError as exc:
            raise SVFArgumentError(f"{what}: {exc}") from None
        default = concepts[0].default_strength
    if spec.vector is not None:
        vector = load_control_vector(spec.vector)
        if vector.hidden_size != hidden_size:
            raise SVFArgumentError(f"{what}: the control vector {spec.vector} is for hidden size "
                                   f"{vector.hidden_size} but the model has {hidden_size}")
        parts.append(vector)
    entry = table_entry(parts if len(parts) > 1 else parts[0], spec.layers, what)
    check_inside(entry.layers)  # a control vector's own layers
    return entry if default is None else dataclasses.replace(entry, default_strength=default)


def alpha_bounds(specs: Mapping[str, FieldSpec], *, hidden_size: int,
                 num_layers: int) -> dict[str, float]:
    """Each entry's largest ``|alpha|`` a request may ask for: ``MAX_STRENGTH`` times its
    largest strength scale over the layers it steers (what strength ``MAX_STRENGTH`` moves
    there; the scales are those :class:`ServedFields` steers with)."""
    bounds = {}
    for name, spec in specs.items():
        entry = load_entry(spec, hidden_size, num_layers)
        bounds[name] = MAX_STRENGTH * max(entry.scale(i) for i in entry.layers)
    return bounds


class SteeredLayer(nn.Module):
    """A decoder layer followed by its field table's update of the residual stream."""

    def __init__(self, layer: nn.Module, index: int, table: FieldTable, field_ids: torch.Tensor,
                 alpha: torch.Tensor, live: torch.Tensor) -> None:
        super().__init__()
        self.layer, self.index, self.table = layer, index, table
        self.register_buffer("field_ids", field_ids, persistent=False)
        self.register_buffer("alpha", alpha, persistent=False)
        self.register_buffer("live", live, persistent=False)

    def forward(self, *args, **kwargs):
        out = self.layer(*args, **kwargs)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], torch.Tensor)):
            raise SVFArgumentError(f"decoder layer {self.index} ({type(self.layer).__name__}) does "
                                   "not return (hidden_states, residual); the svf plugin steers "
                                   "decoders of that form (Llama, Mistral, Qwen, Gemma families)")
        self.table.residual_update_(out[0], out[1], self.alpha, self.field_ids, self.live)
        return out


class ServedFields:
    """Named fields for one model of ``hidden_size`` and ``num_layers``; see the module doc."""

    def __init__(self, specs: Mapping[str, FieldSpec], *, hidden_size: int, num_layers: int,
                 max_tokens: int, device: torch.device | str = "cpu", slots: int = 0,
                 max_units: int = DEFAULT_MAX_UNITS, store: Path | None = None) -> None:
        if not specs and not slots:
            raise SVFArgumentError("no fields to serve")
        self.names = list(specs)
        self.entries = [load_entry(specs[name], hidden_size, num_layers) for name in self.names]
        packed = layer_tables(self.entries,
                              directions=[e.default_direction for e in self.entries],
                              targets=[e.default_target for e in self.entries]) if specs else {}
        self.index = {name: g for g, name in enumerate(self.names)}
        P = len(self.names)
        self.default_strengths = np.array([e.default_strength for e in self.entries] + [0.0] * slots,
                                          dtype=np.float32)
        device = torch.device(device)
        self.hidden_size, self.num_layers, self.max_units = hidden_size, num_layers, max_units
        self.store = snapshot_store() if store is None else store
        self.slots = SlotCache(slots)
        if not slots:
            self.layers = sorted(packed)
            self.id_maps = np.stack([packed[i].id_map.numpy() for i in self.layers])  # [L, F + 1]
            self.scales = np.stack([packed[i].scales.numpy() for i in self.layers])   # [L, F + 1]
            tables = {i: packed[i].table for i in self.layers}
        else:
            self.layers = list(range(num_layers))
            self.id_maps = np.full((num_layers, P + slots + 1), -1, dtype=np.int64)
            self.scales = np.zeros((num_layers, P + slots + 1), dtype=np.float32)
            C = max((t.table.A.shape[1] for t in packed.values()), default=1)
            m = max([max_units] + [t.table.A.shape[2] for t in packed.values()])
            tables = {}
            for i in self.layers:
                base = packed[i].table if i in packed else None
                if base is not None:
                    if base.eps != SLOT_EPS:
                        raise SVFArgumentError(f"a field served at layer {i} uses eps {base.eps:g}; "
                                               f"with fields_dir every field must use {SLOT_EPS:g}")
                    self.id_maps[i, :P + 1] = packed[i].id_map.numpy()
                    self.scales[i, :P + 1] = packed[i].scales.numpy()
                tables[i] = slot_table(base, slots, hidden_size=hidden_size, m=m, C=C,
                                       eps=SLOT_EPS)
            #: row of slot 0 in each layer's table (the pinned rows come first)
            self.slot_rows = np.array([0 if i not in packed else packed[i].table.num_fields
                                       for i in self.layers])
        self.steered = EngineTables({i: t.to(device) for i, t in tables.items()}, self.layers)
        self.uid = next(_ENGINE_IDS)
        # Persistent per-token buffers, one row per steered layer; -1 / 0: not steered.
        self.max_tokens = int(max_tokens)
        self.field_ids = torch.full((len(self.layers), self.max_tokens), -1, dtype=torch.long,
                                    device=device)
        self.alphas = torch.zeros((len(self.layers), self.max_tokens), device=device)
        self._host_ids = self.field_ids if device.type == "cpu" else \
            torch.full_like(self.field_ids, -1, device="cpu").pin_memory()
        self._host_alphas = self.alphas if device.type == "cpu" else \
            torch.zeros_like(self.alphas, device="cpu").pin_memory()
        self._filled = 0

    # -- engine start --------------------------------------------------------------------
    def attach(self, layers: nn.ModuleList) -> None:
        """Wrap each steered layer of ``layers`` (before the model is compiled)."""
        for row, i in enumerate(self.layers):
            register_table(f"svf_vllm.{self.uid}.{i}", self.steered, i)
            layers[i] = SteeredLayer(layers[i], i, self.steered.tables[i], self.field_ids[row],
                                     self.alphas[row], self.steered.flag(i))

    def close(self) -> None:
        """Take this engine's tables out of the registry (the engine shuts down)."""
        unregister(self.steered)

    # -- entries of fields_dir ----------------------------------------------------------
    def _entry_id(self, q: SteerRequest) -> int:
        """The global entry id of ``q``'s entry (its slot's, for an entry of fields_dir)."""
        if q.sha256 is None:
            return self.index[q.field]
        return len(self.names) + self.slots.get(q.sha256)

    def _load_slots(self, requests: Sequence[SteerRequest | None]) -> None:
        """Put every entry of fields_dir the batch needs into a slot, in the order of the
        requests (so every tensor-parallel rank fills the same slots)."""
        needed = list(dict.fromkeys(q.sha256 for q in requests
                                    if q is not None and q.sha256 is not None))
        for sha256 in [k for k in needed if k not in self.slots]:
            slot, _ = self.slots.place(sha256, needed)
            self.load_slot(slot, load_snapshot(self.store, sha256, hidden_size=self.hidden_size,
                                               num_layers=self.num_layers,
                                               max_units=self.max_units))

    def load_slot(self, slot: int, entry: TableEntry) -> None:
        """Write ``entry`` into ``slot`` of every layer's table (in place) and its ids, scales
        and default strength into the per-step maps."""
        g = len(self.names) + slot
        own = layer_tables([entry], directions=[entry.default_direction],
                           targets=[entry.default_target])
        for row, i in enumerate(self.layers):
            if i not in own:
                self.id_maps[row, g + 1], self.scales[row, g + 1] = -1, 0.0
                continue
            write_slot(self.steered.tables[i], int(self.slot_rows[row]) + slot, own[i].table)
            self.id_maps[row, g + 1] = int(self.slot_rows[row]) + slot
            self.scales[row, g + 1] = entry.scale(i)
        self.default_strengths[g] = entry.default_strength

    # -- before each forward -------------------------------------------------------------
    def set_batch(self, num_scheduled: np.ndarray, num_computed: np.ndarray,
                  num_prompt: np.ndarray, requests: Sequence[SteerRequest | None]) -> None:
        """Fill the per-token buffers for a batch whose request ``r`` runs
        ``num_scheduled[r]`` tokens from position ``num_computed[r]`` and has a prompt of
        ``num_prompt[r]`` tokens, steered as ``requests[r]`` says."""
        R = len(requests)
        if any(q is not None and q.sha256 is not None for q in requests):
            self._load_slots(requests)
        g = np.array([-1 if q is None else self._entry_id(q) for q in requests], dtype=np.int64)
        n = int(num_scheduled[:R].sum())
        if n > self.max_tokens:
            raise SVFArgumentError(f"{n} tokens in one step but the buffers hold {self.max_tokens}")
        ids_out, alphas_out = self._host_ids.numpy(), self._host_alphas.numpy()
        on = np.zeros(n, dtype=bool)
        if (g >= 0).any():
            value = np.zeros(R, dtype=np.float32)
            absolute = np.zeros(R, dtype=bool)
            for r, q in enumerate(requests):
                if q is None:
                    continue
                if q.alpha is not None:
                    value[r], absolute[r] = q.alpha, True
                else:
                    value[r] = self.default_strengths[g[r]] if q.strength is None else q.strength
            counts = num_scheduled[:R].astype(np.int64)
            req = np.repeat(np.arange(R), counts)                                   # [n]
            starts = np.cumsum(counts) - counts
            pos = num_computed[:R].astype(np.int64)[req] + np.arange(n) - starts[req]
            on = (g[req] >= 0) & (pos >= num_prompt[:R].astype(np.int64)[req] - 1)
        if on.any():
            g1 = np.where(on, g[req] + 1, 0)                                        # 0: no field
            ids = self.id_maps[:, g1]                                               # [L, n]
            alphas = np.where(absolute[req], value[req], value[req] * self.scales[:, g1])
            ids_out[:, :n] = ids
            alphas_out[:, :n] = np.where(ids >= 0, alphas, 0.0)
            written = n
            live = (ids >= 0).any(axis=1)
        else:
            written, live = 0, False
        # Entries a longer or steered earlier step left: unsteered again (a replayed CUDA
        # graph reads the buffers whatever ``live`` says).
        if self._filled > written:
            ids_out[:, written:self._filled] = -1
            alphas_out[:, written:self._filled] = 0.0
        high = max(written, self._filled)
        self._filled = written
        if self._host_ids is not self.field_ids and high:
            self.field_ids[:, :high].copy_(self._host_ids[:, :high])
            self.alphas[:, :high].copy_(self._host_alphas[:, :high])
        self.steered.flags.numpy()[:] = live
