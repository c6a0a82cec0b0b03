"""svf: Steering Vector Fields for Hugging Face language models.

Train a concept field from contrastive pairs (:func:`train_field`), steer ``generate()``
with it (:func:`steer`), save and load it safely (:class:`SteeringField`). The scorer's
math (DESIGN.md §2) is in :mod:`svf.scorer`; the fused update it folds into lives in
``svf_kernels``.
"""

from svf_kernels import SVFArgumentError

from .artifacts import ArtifactError
from .batch_steering import BatchSteering, steer_requests
from .concepts import CONCEPTS, Concept, load_concept
from .control_vectors import (
    ControlVector,
    control_vector_from_field,
    load_control_vector,
    write_control_vector,
)
from .data import NEUTRAL_PROMPTS, ContrastivePair, mwe_pairs, sentiment_pairs
from .generation import generate
from .models import load_model
from .pair_data import load_pairs
from .scorer import ConceptScorer, ScorerConfig
from .steering import Steering, steer
from .steering_field import SteeringField
from .training import TrainConfig, TrainReport, train_field

__all__ = [
    "CONCEPTS",
    "NEUTRAL_PROMPTS",
    "ArtifactError",
    "BatchSteering",
    "Concept",
    "ConceptScorer",
    "ContrastivePair",
    "ControlVector",
    "SVFArgumentError",
    "ScorerConfig",
    "Steering",
    "SteeringField",
    "TrainConfig",
    "TrainReport",
    "control_vector_from_field",
    "generate",
    "load_concept",
    "load_control_vector",
    "load_model",
    "load_pairs",
    "mwe_pairs",
    "sentiment_pairs",
    "steer",
    "steer_requests",
    "train_field",
    "write_control_vector",
]
