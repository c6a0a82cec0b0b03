"""A cache of the fields ``svf eval`` trains, so that the parts of one split run train once.

An evaluation split into parts (by concept, or by methods of one concept) trains the same
fields in every part: the same model, pairs, layers and training configuration give the same
field. With ``svf eval --field-cache DIR`` the first part saves each field it trains under a
key of everything training reads, and later parts load it instead of training again.

The key hashes: the model's name, its configuration and a fingerprint of its weights (a
strided sample of every parameter); the tokenizer's vocabulary size; the concept's name and
pairs; the training and steering layers, the training configuration and the chat setting; the
source of the modules training runs (so a change to the training code misses the cache); and
the torch version. A damaged entry is trained again and replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..artifacts import ArtifactError
from ..concepts import Concept
from ..steering_field import SteeringField

#: The modules whose source decides what training makes.
TRAINING_MODULES = ("svf.training", "svf.scorer", "svf.fisher", "svf.activations", "svf.pair_data",
                    "svf.data", "svf.tokenization", "svf.steering_field", "svf.artifacts")
_REPORT = "train_report.json"


def _weights_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)][:4096].float().cpu()
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def _code_fingerprint() -> str:
    import importlib

    h = hashlib.sha256()
    for name in TRAINING_MODULES:
        h.update(inspect.getsource(importlib.import_module(name)).encode())
    return h.hexdigest()


def field_key(model: nn.Module, tokenizer, concept: Concept, cfg, model_name: str, what: str,
              train_config) -> str:
    """The cache key of one trained field (``what``: which of the concept's fields)."""
    config = getattr(model, "config", None)
    facts = {
        "what": what,
        "model_name": model_name,
        "model_config": config.to_json_string(use_diff=False) if config is not None else "",
        "weights": _weights_fingerprint(model),
        "vocab": len(tokenizer) if hasattr(tokenizer, "__len__") else None,
        "concept": concept.name,
        "pairs": hashlib.sha256(json.dumps([dataclasses.astuple(p) if dataclasses.is_dataclass(p) else p
                                            for p in concept.pairs], default=str).encode()).hexdigest(),
        "train_layers": list(cfg.train_layers),
        "steer_layers": list(cfg.steer_layers),
        "chat": cfg.chat,
        "train": dataclasses.asdict(train_config),
        "code": _code_fingerprint(),
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached_field(cache: Path | None, key: str,
                 train: Callable[[], tuple[SteeringField, dict]]) -> tuple[SteeringField, dict]:
    """The field and its training report under ``key`` in ``cache``, or ``train()``'s, saved
    there (written beside the entry and renamed, so a part never reads a half-written one).
    ``cache`` None: ``train()``."""
    if cache is None:
        return train()
    entry = Path(cache) / key
    if entry.is_dir():
        try:
            return SteeringField.load(entry), json.loads((entry / _REPORT).read_text())
        except (ArtifactError, OSError, ValueError):
            shutil.rmtree(entry, ignore_errors=True)  # damaged: trained again below
    field, report = train()
    tmp = Path(cache) / f".{key}.{uuid.uuid4().hex}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        field.save(tmp)
        (tmp / _REPORT).write_text(json.dumps(report, default=float))
        try:
            tmp.rename(entry)
        except OSError:  # another part saved it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return field, report
