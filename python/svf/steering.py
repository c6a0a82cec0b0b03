"""Attach fields to a Hugging Face model (DESIGN.md §4) and detach them exactly.

``steer(model, field, strength=...)`` returns a :class:`Steering`; use it as a context
manager or call ``attach()`` / ``detach()``. Attaching replaces the chosen decoder layers
by :class:`svf_kernels.FusedSteeringField` wrappers and adds one pre-forward hook that
computes the positions to steer; detaching puts the original layer objects back and
removes the hook, so the model is exactly what it was.

If ``generate`` raises while steering (an error, a ``KeyboardInterrupt``), the context
manager detaches as the exception leaves the block. After ``attach()`` the steering stays
attached -- and keeps steering correctly: the next forward pass starts a new plan -- until
``detach()``, so call that in a ``finally`` block. ``detach()`` is a no-op when not
attached, so calling it twice is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from svf_kernels import FusedSteeringField, RowField, SVFArgumentError
from svf_kernels.modules import check_field_ids, check_row_alpha

from .arguments import check_bool, check_strength_or_alpha
from .control_vectors import ControlVector, static_row_fields
from .field_packing import (
    STEER_METHODS,
    check_fits_model,
    model_mismatch,
    row_field,
)
from .hf import (
    check_layers,
    check_model,
    decoder_layers,
    decoder_layers_path,
    distinct_layers,
    hidden_size,
    num_layers,
)
from .positions import PositionTracker
from .steering_field import (
    SteeringField,
    check_direction,
    check_target,
    check_train_layers,
    check_unit,
    entry_concepts,
    strength_scale,
)


class Steering:
    """Steer ``model`` with one row field per layer; ``alphas[layer]`` is the L2 displacement.

    The row fields must be as wide as the model's residual stream; the model's size is
    recorded here and checked again by :meth:`attach`, so a steering never attaches to a model
    of another hidden size or layer count.
    """

    def __init__(
        self,
        model: nn.Module,
        layer_fields: dict[int, RowField],
        alphas: dict[int, float | torch.Tensor],
        *,
        refresh: int = 1,
        positions: str = "default",
        record_scores: bool = False,
        field_ids: dict[int, torch.Tensor] | None = None,
    ) -> None:
        check_model(model)
        if not layer_fields:
            raise SVFArgumentError("layer_fields is empty: give at least one layer to steer")
        check_layers(model, sorted(layer_fields), "steering layers")
        missing = sorted(set(layer_fields) - set(alphas))
        if missing:
            raise SVFArgumentError(f"no alpha given for steering layers {missing}")
        self.hidden_size, self.num_layers = hidden_size(model), num_layers(model)
        for i, field in layer_fields.items():
            width = getattr(field, "hidden_size", self.hidden_size)  # a custom RowField may not say
            problem = model_mismatch(f"the field at layer {i}", width, None, model)
            if problem:
                raise SVFArgumentError(problem)
        self.model = model
        self.layer_fields = dict(sorted(layer_fields.items()))
        self.alphas = alphas
        self.tracker = PositionTracker(refresh, positions)
        if record_scores and positions == "last":
            raise SVFArgumentError("record_scores needs the position tracker: "
                                   "use positions='default'")
        self.record_scores = record_scores
        self.field_ids = field_ids or {}
        self.trace: list[dict[str, torch.Tensor]] = []
        self._wrappers: dict[int, FusedSteeringField] = {}
        self._originals: dict[int, nn.Module] = {}
        self._hook = None
        self._attached = False

    @property
    def attached(self) -> bool:
        return self._attached

    def attach(self) -> Steering:
        """Wrap the steering layers.

        Raises :class:`SVFArgumentError`, changing nothing, if this steering is already
        attached, if ``model`` is not of the hidden size and layer count this steering was
        built for, or if another attached steering already steers one of its layers (steer
        with several fields in one call instead). Steerings of disjoint layers may be
        attached together: each steers its own layers as it would alone, and they detach in
        any order. An exception (or ``KeyboardInterrupt``) part way through puts back the
        layers already wrapped, so the model is never left half-steered.
        """
        if self.attached:
            raise SVFArgumentError("this steering is already attached")
        check_model(self.model)
        problem = model_mismatch("this steering", self.hidden_size, self.num_layers, self.model)
        if problem:
            raise SVFArgumentError(problem)
        layers = decoder_layers(self.model)
        for i in self.layer_fields:
            if isinstance(layers[i], FusedSteeringField):
                raise SVFArgumentError(
                    f"decoder layer {i} is already steered; detach the other steering first "
                    "(or steer with several fields in one call)"
                )
        owner, _ = decoder_layers_path(self.model)
        self.tracker.reset()
        self.trace = []
        last_only = self.tracker.positions == "last"
        try:
            for i, field in self.layer_fields.items():
                self._originals[i] = layers[i]
                wrapper = FusedSteeringField(layers[i], field, self.alphas[i], self._current_plan,
                                             field_ids=self.field_ids.get(i), last_only=last_only)
                self._wrappers[i] = wrapper
                layers[i] = wrapper
            if not last_only:  # positions="last" needs no host logic before the forward pass
                self._hook = owner.register_forward_pre_hook(self._before_forward, with_kwargs=True)
            if self.record_scores:
                next(iter(self._wrappers.values())).register_forward_hook(self._record)
        except BaseException:  # incl. KeyboardInterrupt: undo the layers wrapped so far
            self._restore()
            raise
        self._attached = True
        return self

    def detach(self) -> None:
        """Restore the original layers and remove the hook (a no-op when not attached)."""
        if not self._attached:
            return
        self._restore()
        self._attached = False  # last: a detach interrupted part way can simply be called again

    def set_row_inputs(self, layer: int, alpha: float | torch.Tensor,
                       field_ids: torch.Tensor | None = None) -> None:
        """Set ``layer``'s strength (a float or ``[B]`` per-row tensor) and, for a field table,
        its ``[B]`` per-row field ids, for the next forward passes.

        A tensor of the shape, dtype and device already held is copied into it in place, so a
        compiled forward keeps reading the same tensors; any other value replaces it (a tensor
        by a copy, so later calls never write into the caller's tensor), here and in the
        attached wrapper.
        """
        if layer not in self.layer_fields:
            raise SVFArgumentError(f"layer {layer!r} is not steered; steered: "
                                   f"{list(self.layer_fields)}")
        if (field_ids is None) != (layer not in self.field_ids):
            raise SVFArgumentError("field_ids must be given exactly when the layer's field is a "
                                   "FieldTable")
        check_row_alpha(alpha)
        if field_ids is not None:
            check_field_ids(field_ids)
        self.alphas[layer] = _in_place(self.alphas[layer], alpha)
        if field_ids is not None:
            self.field_ids[layer] = _in_place(self.field_ids[layer], field_ids)
        wrapper = self._wrappers.get(layer)
        if wrapper is not None:
            wrapper.alpha, wrapper.field_ids = self.alphas[layer], self.field_ids.get(layer)

    def _restore(self) -> None:
        layers = decoder_layers(self.model)
        for i, original in self._originals.items():
            layers[i] = original
        if self._hook is not None:
            self._hook.remove()
        self._hook = None
        self._originals.clear()
        self._wrappers.clear()

    def __enter__(self) -> Steering:  # noqa: PYI034 (attach returns self)
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _current_plan(self):
        return self.tracker.plan

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        ids = kwargs.get("input_ids", first)
        ref = ids if ids is not None else kwargs.get("inputs_embeds")
        if ref is None:
            raise SVFArgumentError("steering needs input_ids or inputs_embeds in the forward call")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._length = ref.shape[1]
        self.tracker.start_forward(ids, ref.shape[0], ref.shape[1], kwargs.get("attention_mask"),
                                   cache)

    def _record(self, module: FusedSteeringField, args: tuple, out: Any) -> None:
        plan, scores = self.tracker.plan, module.last_scores
        if plan is None or scores is None or plan.refresh.numel() == 0:
            return
        T = self._length
        rows, cols = (plan.refresh, torch.full_like(plan.refresh, T - 1)) if plan.last_only else (
            plan.refresh // T, plan.refresh % T)
        self.trace.append(
            {
                "rows": rows,
                "positions": self.tracker.past_length + cols,
                "scores": scores.detach().float().cpu(),
            }
        )

    def scores_by_position(self) -> list[tuple[int, int, torch.Tensor]]:
        """(batch row, absolute position, scores ``[C]``) of each refreshed position, in order.

        Recorded at the first steered layer when ``record_scores=True``.
        """
        return [
            (int(b), int(t), s)
            for e in self.trace
            for b, t, s in zip(e["rows"], e["positions"], e["scores"])
        ]


def _in_place(held: object, value: float | torch.Tensor) -> float | torch.Tensor:
    """``held`` with ``value`` copied in when both are tensors of one shape, dtype and device;
    else ``value`` (a copy of it if a tensor)."""
    if not isinstance(value, torch.Tensor):
        return value
    if (isinstance(held, torch.Tensor) and held.shape == value.shape and held.dtype == value.dtype
            and held.device == value.device):
        return held.copy_(value)
    return value.clone()


def steer(
    model: nn.Module,
    fields: SteeringField | Sequence[SteeringField] | ControlVector,
    *,
    strength: float | None = None,
    alpha: float | None = None,
    layers: Sequence[int] | None = None,
    method: str = "svf",
    refresh: int = 1,
    positions: str = "default",
    tau: float = 1.0,
    normalize: bool = True,
    record_scores: bool = False,
    direction: str | None = None,
    target: float | None = None,
    unit: str | None = None,
) -> Steering:
    """Build (not yet attached) steering of ``model`` by one or several concept fields.

    ``strength`` is relative and per layer: every steered layer moves by
    ``alpha = strength * strength_scale(fields, layer, unit)`` (``unit="robust"``: the training activations' norm
    there without the outlier dimensions; ``"mean_norm"``: their mean norm; None: robust when
    the fields store robust norms, else the mean norm; averaged over the fields), so steering
    more layers pushes more in total (docs/STEERING.md).
    ``alpha`` is an absolute L2 displacement per layer. Give one of them (neither: the first
    field's ``default_strength``). ``direction``: ``"gradient"``, ``"preconditioned"`` or
    ``"natural"`` (DESIGN.md §2; the natural one needs the fields' Fisher matrices at every
    steered layer, :mod:`svf.fisher`; None: the first field's ``default_direction``).
    ``target``: closed loop, a probability in (0.5, 1): a position whose score already gives
    the side steered toward that probability is not pushed, and the push fades over the last
    score unit before it (None: the first field's ``default_target``; open loop when that is
    None too; ``svf`` only). ``layers`` defaults to the first field's steering layers;
    several fields at one layer combine by softmin (``tau``). ``method="caa"`` steers the same
    layers with the fields' CAA vectors instead (summed over fields), so the two methods differ
    only in the field. A field trained for another hidden size or layer count is refused here
    (:class:`SVFArgumentError`), before anything is built.

    ``fields`` may instead be a static entry, a :class:`svf.control_vectors.ControlVector`
    (:func:`svf.load_control_vector` reads one from GGUF): each of its layers (or of ``layers``)
    is moved along its vector ``v`` by ``alpha = strength * ||v||``, so ``strength=1.0`` (its
    default) adds the vectors as they are, as llama.cpp at scale 1.0 does (llama.cpp steers every
    position: ``positions="all"``); ``alpha`` sets the displacement itself. The options of
    trained fields (``method``, ``tau``, ``normalize``, ``direction``, ``target``, ``unit``)
    do not apply to it and are refused when given.
    """
    check_model(model)
    if isinstance(fields, ControlVector):
        given = {name: value for name, value, default in (
            ("method", method, "svf"), ("tau", tau, 1.0), ("normalize", normalize, True),
            ("direction", direction, None), ("target", target, None), ("unit", unit, None))
            if value != default or type(value) is not type(default)}
        if given:
            raise SVFArgumentError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not "
                                   "apply to a ControlVector (a static entry steers along its own "
                                   "vectors)")
        check_bool(record_scores, "record_scores")
        layer_fields, alphas = static_row_fields(fields, layers, strength=strength, alpha=alpha)
        problem = model_mismatch("the control vector", fields.hidden_size, None, model)
        if problem:
            raise SVFArgumentError(problem)
        device = next(model.parameters()).device
        return Steering(model, {i: f.to(device) for i, f in layer_fields.items()}, alphas,
                        refresh=refresh, positions=positions, record_scores=record_scores)
    items = entry_concepts(fields)
    check_bool(normalize, "normalize")
    check_bool(record_scores, "record_scores")
    if method not in STEER_METHODS:
        raise SVFArgumentError(f"method must be one of {STEER_METHODS}, got {method!r}")
    check_strength_or_alpha(strength, alpha)
    check_unit(unit)
    direction = items[0].default_direction if direction is None else direction
    check_direction(direction)
    target = items[0].default_target if target is None else target
    check_target(target)
    check_fits_model(items, model)  # so every field has the same hidden size too
    layers = distinct_layers(items[0].steer_layers if layers is None else layers)
    check_train_layers(items, layers)
    if strength is None and alpha is None:
        strength = items[0].default_strength
    layer_fields: dict[int, RowField] = {}
    alphas: dict[int, float] = {}
    for i in layers:
        layer_fields[i] = row_field(items, i, method, tau=tau, normalize=normalize,
                                    direction=direction, target=target)
        alphas[i] = float(alpha) if alpha is not None else float(strength) * strength_scale(items, i, unit)
    device = next(model.parameters()).device
    layer_fields = {i: f.to(device) for i, f in layer_fields.items()}
    return Steering(model, layer_fields, alphas, refresh=refresh, positions=positions,
                    record_scores=record_scores)
