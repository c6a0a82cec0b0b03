"""svf-kernels: the fused Steering Vector Field update and the modules that apply it.

Two layers (DESIGN.md §5): :mod:`svf_kernels.ops`, the op ``field_update_`` and its field-table
variant (DESIGN.md §3; exact arithmetic in :mod:`svf_kernels.ops.reference`) with one dispatch
point and a module per backend; :mod:`svf_kernels.modules`, the row fields that call the op and
``FusedSteeringField``, which wraps a decoder layer. Depends on torch only.
"""

from .errors import SVFArgumentError
from .modules import FieldTable, FusedSteeringField, PackedField, RowField, StaticVector, StepPlan
from .ops import (
    available_backends,
    field_direction,
    field_table_update_,
    field_table_update_reference,
    field_update_,
    field_update_reference,
    gelu_tanh,
    gelu_tanh_grad,
    select_backend,
)

__all__ = [
    "FieldTable",
    "FusedSteeringField",
    "PackedField",
    "RowField",
    "SVFArgumentError",
    "StaticVector",
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
