"""svf-kernels: the fused Steering Vector Field update and the module that applies it.

``field_update_`` is the op (DESIGN.md §3; exact arithmetic in :mod:`svf_kernels.reference`),
``FusedSteeringField`` wraps a decoder layer. Depends on torch only.
"""

from . import backends  # noqa: F401 - registers the compiled backends (cpu, cuda) if built
from .dispatch import available_backends, select_backend
from .errors import SVFArgumentError
from .fused_steering_field import FusedSteeringField, StepPlan
from .op import field_table_update_, field_update_
from .reference import (
    field_direction,
    field_table_update_reference,
    field_update_reference,
    gelu_tanh,
    gelu_tanh_grad,
)
from .row_fields import ConstantField, FieldTable, PackedField, RowField

__all__ = [
    "ConstantField",
    "FieldTable",
    "FusedSteeringField",
    "PackedField",
    "RowField",
    "SVFArgumentError",
    "StepPlan",
    "available_backends",
    "field_direction",
    "field_table_update_",
    "field_table_update_reference",
    "field_update_",
    "field_update_reference",
    "gelu_tanh",
    "gelu_tanh_grad",
    "select_backend",
]
