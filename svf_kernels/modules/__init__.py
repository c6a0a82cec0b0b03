"""The module layer: per-layer row fields that call the ops, and ``FusedSteeringField``, the
``nn.Module`` that wraps a decoder layer and applies one of them to the layer's output."""

from .fused_steering_field import FusedSteeringField, StepPlan, check_field_ids, check_row_alpha
from .row_fields import FieldTable, PackedField, RowField, StaticVector

__all__ = ["FieldTable", "FusedSteeringField", "PackedField", "RowField", "StaticVector", "StepPlan",
           "check_field_ids", "check_row_alpha"]
