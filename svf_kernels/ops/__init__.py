"""The op layer: the fused field update as ``torch.library`` ops, their checks, one dispatch
point and one module per backend. Depends on torch only (triton optional)."""

from . import backends  # noqa: F401 - registers every backend with the dispatch
from .checks import alpha_tensor, check_field_args, check_positive, check_table_args, target_tensor
from .dispatch import available_backends, select_backend
from .op import (
    field_table_update_,
    field_table_update_op,
    field_update_,
    field_update_op,
    residual_table_update_op,
    signed_targets,
)
from .reference import (
    field_direction,
    field_table_update_reference,
    field_update_reference,
    gelu_tanh,
    gelu_tanh_grad,
)

__all__ = [
    "alpha_tensor",
    "available_backends",
    "check_field_args",
    "check_positive",
    "check_table_args",
    "field_direction",
    "field_table_update_",
    "field_table_update_op",
    "field_table_update_reference",
    "field_update_",
    "field_update_op",
    "field_update_reference",
    "gelu_tanh",
    "gelu_tanh_grad",
    "residual_table_update_op",
    "select_backend",
    "signed_targets",
    "target_tensor",
]
