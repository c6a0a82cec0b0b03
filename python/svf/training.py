"""Train a concept field from contrastive pairs (DESIGN.md §2, "Training").

Features are last-token hidden states at every layer of a training window; the scorer is
trained with BCE over all (example, layer) pairs, AdamW (paper defaults lr 3e-4, weight
decay 1e-2), mini-batches, and early stopping on a validation split's loss. The CAA
direction has nothing to stop early, so it uses every pair outside the test split. The report
compares the scorer's held-out accuracy per layer with a linear baseline (the projection on
that CAA direction, thresholded on the same pairs) and says when the field is undertrained.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from svf_kernels import SVFArgumentError

from .activations import last_token_activations
from .arguments import (
    check_int,
    check_number,
    check_optional_bool,
    check_text,
    check_tokenizer,
    show,
)
from .calibration import robust_norm, within_class_covariance
from .data import TRAIN_PAIRS_NEEDED, min_split_size, pairs_needed, training_split
from .hf import check_layers, check_model, hidden_size, layer_list, num_layers
from .pair_data import as_pairs
from .progress import progress_bar
from .scorer import ConceptScorer, ScorerConfig, rms_normalize
from .steering_field import DEFAULT_STRENGTH, SteeringField

#: Held-out scorer accuracy under which a layer counts as undertrained (0.5 is chance).
MIN_HELDOUT_ACCURACY = 0.6
#: How far the scorer may fall under the linear (CAA) baseline before a layer counts as
#: undertrained: test-split noise (one standard error is about 0.035 at 100 test pairs).
LINEAR_MARGIN = 0.05


@dataclass
class TrainConfig:
    """Training hyper-parameters. ``max_epochs`` bounds training; early stopping ends it.

    ``fractions``: the train/val/test shares, or ``None`` for the adaptive split of
    :func:`svf.data.split_sizes` (10 % validation and 20 % test, each at least 2 and at most
    100 pairs; every other pair trains the scorer).
    """

    r: int = 64
    de: int = 8
    m: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 40
    patience: int = 4
    fractions: tuple[float, float, float] | None = None
    seed: int = 0
    default_strength: float = DEFAULT_STRENGTH

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SVFArgumentError` naming the first bad field (also after edits)."""
        for name in ("r", "de", "m", "batch_size", "max_epochs", "patience"):
            check_int(getattr(self, name), f"TrainConfig.{name}", minimum=1)
        check_int(self.seed, "TrainConfig.seed")
        check_number(self.lr, "TrainConfig.lr", positive=True)
        check_number(self.weight_decay, "TrainConfig.weight_decay", minimum=0.0)
        check_number(self.default_strength, "TrainConfig.default_strength")
        fr = self.fractions
        if fr is not None and (
                isinstance(fr, (str, bytes)) or not isinstance(fr, Sequence) or len(fr) != 3
                or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0 for f in fr)
                or not all(map(math.isfinite, fr)) or abs(sum(fr) - 1.0) > 1e-6):
            raise SVFArgumentError("TrainConfig.fractions must be None (the adaptive split) or "
                                   "three finite numbers > 0 (train, val, test) summing to 1, "
                                   f"got {show(fr)}")


@dataclass
class Features:
    """Activations of one split: ``pos``/``neg`` are ``[n, L, d]``."""

    pos: torch.Tensor
    neg: torch.Tensor

    def join(self, other: Features) -> Features:
        """The pairs of both, ``self``'s first."""
        return Features(torch.cat([self.pos, other.pos]), torch.cat([self.neg, other.neg]))

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All (example, layer) samples: hidden ``[2nL, d]``, layer positions, labels."""
        n, L, d = self.pos.shape
        h = torch.cat([self.pos.reshape(-1, d), self.neg.reshape(-1, d)])
        layer_pos = torch.arange(L).repeat(n).repeat(2)
        y = torch.cat([torch.ones(n * L), torch.zeros(n * L)])
        return h, layer_pos, y


@dataclass
class TrainReport:
    """What training measured; ``per_layer`` holds held-out accuracies per training layer."""

    per_layer: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0

    @property
    def undertrained_layers(self) -> list[int]:
        """Layers whose held-out scorer accuracy is under :data:`MIN_HELDOUT_ACCURACY` or more
        than :data:`LINEAR_MARGIN` under the linear (CAA) baseline."""
        return [r["layer"] for r in self.per_layer
                if r["scorer_acc"] < max(MIN_HELDOUT_ACCURACY, r["linear_acc"] - LINEAR_MARGIN)]

    @property
    def warning(self) -> str | None:
        """``"warning: undertrained: ..."`` when a layer is undertrained or the scorer got
        fewer than :data:`svf.data.TRAIN_PAIRS_NEEDED` training pairs; else None."""
        parts = []
        bad = self.undertrained_layers
        if bad:
            accs = [r["scorer_acc"] for r in self.per_layer if r["layer"] in bad]
            lo, hi = min(accs), max(accs)
            shown = f"{lo:.2f}" if hi - lo < 0.005 else f"{lo:.2f}-{hi:.2f}"
            parts.append(f"held-out accuracy {shown} at layers {bad} (under "
                         f"{MIN_HELDOUT_ACCURACY} or {LINEAR_MARGIN} under the linear baseline)")
        if self.n_train < TRAIN_PAIRS_NEEDED:
            parts.append(f"trained on {self.n_train} pairs, the scorer needs about "
                         f"{TRAIN_PAIRS_NEEDED} (about {pairs_needed()} pairs in all with the "
                         "default split)")
        return "warning: undertrained: " + "; ".join(parts) if parts else None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["undertrained_layers"] = self.undertrained_layers
        d["warning"] = self.warning
        return d

    def table(self) -> str:
        """The split sizes, held-out accuracy per layer (scorer vs linear baseline), and the
        undertrained warning when there is one."""
        sizes = (f"pairs: {self.n_train} train, {self.n_val} validation (early stopping; CAA uses "
                 f"train + validation), {self.n_test} test (held out)")
        lines = [sizes, f"{'layer':>5}  {'scorer':>7}  {'linear(CAA)':>11}"]
        for r in self.per_layer:
            lines.append(f"{r['layer']:>5}  {r['scorer_acc']:>7.3f}  {r['linear_acc']:>11.3f}")
        lines.append(self.warning or f"held-out accuracy >= {MIN_HELDOUT_ACCURACY} and within "
                     f"{LINEAR_MARGIN} of the linear baseline at every training layer")
        return "\n".join(lines)


def linear_baseline(train: Features, test: Features) -> list[tuple[float, torch.Tensor]]:
    """Per layer: the CAA direction (mean difference over ``train``) and the held-out accuracy on
    ``test`` of thresholding ``h · direction`` (threshold fit on ``train``)."""
    out = []
    for layer in range(train.pos.shape[1]):
        direction = train.pos[:, layer].mean(0) - train.neg[:, layer].mean(0)
        p_tr = torch.cat([train.pos[:, layer], train.neg[:, layer]]) @ direction
        y_tr = torch.cat([torch.ones(len(train.pos)), torch.zeros(len(train.neg))])
        thr = _best_threshold(p_tr, y_tr)
        p_te = torch.cat([test.pos[:, layer], test.neg[:, layer]]) @ direction
        y_te = torch.cat([torch.ones(len(test.pos)), torch.zeros(len(test.neg))])
        out.append((float(((p_te > thr).float() == y_te).float().mean()), direction))
    return out


def _best_threshold(proj: torch.Tensor, y: torch.Tensor) -> float:
    values, order = proj.sort()
    ys = y[order]
    # predicted positive = above threshold; accuracy for a cut after index i
    neg_below = torch.cumsum(1 - ys, 0)
    pos_above = ys.sum() - torch.cumsum(ys, 0)
    acc = (neg_below + pos_above) / len(ys)
    i = int(acc.argmax())
    upper = values[i + 1] if i + 1 < len(values) else values[i] + 1
    return float((values[i] + upper) / 2)


def _loss(scorer: ConceptScorer, h, pos, y, batch: int = 4096) -> float:
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(y), batch):
            logits = scorer(h[s : s + batch], pos[s : s + batch])
            total += float(F.binary_cross_entropy_with_logits(logits, y[s : s + batch], reduction="sum"))
    return total / max(len(y), 1)


def train_scorer(
    train: Features, val: Features, train_layers: Sequence[int], config: TrainConfig,
    progress: bool | None = None,
) -> tuple[ConceptScorer, list[dict], int]:
    """Fit a :class:`ConceptScorer`; returns it (best validation loss), the history, the best epoch.
    ``progress``: an epoch bar on stderr (None: only on a terminal, :func:`svf.progress.progress_bar`)."""
    torch.manual_seed(config.seed)
    d = train.pos.shape[-1]
    scorer = ConceptScorer(ScorerConfig(d, tuple(train_layers), config.r, config.de, config.m))
    h, pos, y = train.flat()
    scorer.init_projection_pca(h)
    hv, posv, yv = val.flat()
    opt = torch.optim.AdamW(scorer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    best = (_loss(scorer, hv, posv, yv), 0, copy.deepcopy(scorer.state_dict()))
    history = [{"epoch": 0, "train_loss": _loss(scorer, h, pos, y), "val_loss": best[0]}]
    bar = progress_bar(range(1, config.max_epochs + 1), desc="train scorer", enabled=progress)
    for epoch in bar:
        scorer.train()
        perm = torch.randperm(len(y), generator=gen)
        total = 0.0
        for s in range(0, len(y), config.batch_size):
            b = perm[s : s + config.batch_size]
            loss = F.binary_cross_entropy_with_logits(scorer(h[b], pos[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        scorer.eval()
        val_loss = _loss(scorer, hv, posv, yv)
        history.append({"epoch": epoch, "train_loss": total / len(y), "val_loss": val_loss})
        bar.set_postfix(val_loss=f"{val_loss:.4f}")
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(scorer.state_dict()))
        elif epoch - best[1] >= config.patience:
            break
    scorer.load_state_dict(best[2])
    scorer.eval()
    return scorer, history, best[1]


def scorer_accuracy(scorer: ConceptScorer, feats: Features) -> list[float]:
    """Held-out accuracy per training layer (score > 0 means positive)."""
    accs = []
    with torch.no_grad():
        for j, layer in enumerate(scorer.config.train_layers):
            sp = scorer.score_layer(feats.pos[:, j], layer)
            sn = scorer.score_layer(feats.neg[:, j], layer)
            accs.append(float(torch.cat([(sp > 0).float(), (sn <= 0).float()]).mean()))
    return accs


@dataclass
class PairFeatures:
    """Activations of the train/val/test splits of a set of pairs at ``layers`` (extract once,
    train several fields on any subset of the layers)."""

    layers: tuple[int, ...]
    train: Features
    val: Features
    test: Features

    def select(self, layers: Sequence[int]) -> tuple[Features, Features, Features]:
        missing = sorted(set(layers) - set(self.layers))
        if missing:
            raise SVFArgumentError(f"features lack layers {missing} (have {list(self.layers)})")
        idx = [self.layers.index(i) for i in layers]
        return tuple(Features(f.pos[:, idx], f.neg[:, idx]) for f in (self.train, self.val, self.test))


def _check_config(config: object) -> TrainConfig:
    """``config`` is None (the defaults) or a valid :class:`TrainConfig` (checked again: it may
    have been edited after construction)."""
    if config is None:
        return TrainConfig()
    if not isinstance(config, TrainConfig):
        raise SVFArgumentError(f"config must be a TrainConfig or None, got {type(config).__name__}")
    config.validate()
    return config


def _check_features(features: object, model: nn.Module) -> None:
    """``features`` came from :func:`pair_features` on a model of this hidden size."""
    if not isinstance(features, PairFeatures):
        raise SVFArgumentError(f"features must be PairFeatures from pair_features(), got {type(features).__name__}")
    d = hidden_size(model)
    for name in ("train", "val", "test"):
        part = getattr(features, name)
        if not isinstance(part, Features) or part.pos.dim() != 3 or part.pos.shape != part.neg.shape:
            raise SVFArgumentError(f"features.{name} must hold pos/neg activations [n, L, d] of equal shapes")
        if part.pos.shape[-1] != d or part.pos.shape[1] != len(features.layers):
            raise SVFArgumentError(f"features.{name} is {tuple(part.pos.shape)} but the model has hidden "
                                   f"size {d} and features.layers has {len(features.layers)} layers")
        if part.pos.shape[0] < 2:
            raise SVFArgumentError(f"features.{name} has {part.pos.shape[0]} pairs; at least 2 are needed")


def pair_features(model: nn.Module, tokenizer, pairs: Sequence, layers: Sequence[int],
                  config: TrainConfig | None = None, *, batch_size: int = 16,
                  progress: bool | None = None) -> PairFeatures:
    """Split ``pairs`` by ``config.fractions`` (see :class:`TrainConfig`) and extract each
    split's last-token activations. ``progress``: bars on stderr (None: only on a terminal)."""
    config = _check_config(config)
    check_model(model)
    check_tokenizer(tokenizer)
    pairs = as_pairs(pairs)
    layers = layer_list(layers, "layers")
    check_layers(model, layers, "layers")
    if not layers:
        raise SVFArgumentError("layers is empty: give at least one layer")
    check_int(batch_size, "batch_size", minimum=1)
    check_optional_bool(progress, "progress")
    tr, va, te = training_split(pairs, config.fractions, config.seed)
    if min(len(tr), len(va), len(te)) < 2:
        rule = "the adaptive split" if config.fractions is None else f"fractions {config.fractions}"
        raise SVFArgumentError(f"pairs has {len(pairs)} pairs; training needs at least "
                               f"{min_split_size(config.fractions)}: 2 each for the train, "
                               f"validation and test splits ({rule} gives "
                               f"{len(tr)}/{len(va)}/{len(te)})")

    def feats(part: list, name: str) -> Features:
        texts = [p.positive for p in part] + [p.negative for p in part]
        acts = last_token_activations(model, tokenizer, texts, layers, batch_size=batch_size,
                                      desc=f"activations ({name})", progress=progress)
        return Features(acts[: len(part)], acts[len(part) :])

    return PairFeatures(tuple(layers), feats(tr, "train"), feats(va, "val"), feats(te, "test"))


def train_field(
    model: nn.Module,
    tokenizer,
    pairs: Sequence,
    *,
    concept: str,
    train_layers: Sequence[int],
    steer_layers: Sequence[int] | None = None,
    config: TrainConfig | None = None,
    model_name: str = "",
    batch_size: int = 16,
    progress: bool | None = None,
    features: PairFeatures | None = None,
) -> tuple[SteeringField, TrainReport]:
    """Train a field from contrastive pairs: :class:`svf.ContrastivePair`, ``(positive,
    negative)`` tuples or ``{"positive": ..., "negative": ...}`` dicts (:func:`svf.load_pairs`
    reads them from a JSONL file).

    Pairs are split train/val/test by ``config.fractions`` (see :class:`TrainConfig`). The
    scorer trains on the train split and stops early on the validation split; the CAA vector
    and the mean norms use both; the test split is used once, for the report's held-out
    accuracies. ``features``: activations already extracted by :func:`pair_features` from the
    same pairs and config (for a superset of the layers). ``progress``: bars on stderr for the
    activations and the epochs (None: only when stderr is a terminal; False: never).
    """
    config = _check_config(config)
    check_model(model)
    check_tokenizer(tokenizer)
    check_text(concept, "concept")
    train_layers = layer_list(train_layers, "train_layers")
    check_layers(model, train_layers, "train_layers")
    if not train_layers or sorted(set(train_layers)) != train_layers:
        raise SVFArgumentError(f"train_layers must be non-empty and strictly increasing, got {train_layers}")
    steer_layers = layer_list(steer_layers, "steer_layers") if steer_layers is not None else train_layers[:4]
    if not steer_layers or len(set(steer_layers)) != len(steer_layers):
        raise SVFArgumentError(f"steer_layers must be non-empty, without duplicates, got {steer_layers}")
    if not set(steer_layers) <= set(train_layers):
        raise SVFArgumentError(f"steer_layers {steer_layers} must be a subset of train_layers {train_layers}")
    check_text(model_name, "model_name", allow_empty=True)
    check_int(batch_size, "batch_size", minimum=1)
    check_optional_bool(progress, "progress")
    if features is not None:
        _check_features(features, model)
    if features is None:
        features = pair_features(model, tokenizer, pairs, train_layers, config, batch_size=batch_size,
                                 progress=progress)
    f_tr, f_va, f_te = features.select(train_layers)
    tr, va, te = f_tr.pos, f_va.pos, f_te.pos  # sizes for the report
    scorer, history, best_epoch = train_scorer(f_tr, f_va, train_layers, config, progress)
    fit = f_tr.join(f_va)  # CAA has nothing to stop early: every pair outside the test split
    linear = linear_baseline(fit, f_te)
    accs = scorer_accuracy(scorer, f_te)
    report = TrainReport(
        per_layer=[
            {"layer": layer, "scorer_acc": a, "linear_acc": lin[0]}
            for layer, a, lin in zip(train_layers, accs, linear)
        ],
        history=history, best_epoch=best_epoch, n_train=len(tr), n_val=len(va), n_test=len(te),
    )
    all_fit = torch.cat([fit.pos, fit.neg])
    field_ = SteeringField(
        scorer=scorer,
        concept=concept,
        model_name=model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        num_layers=num_layers(model),
        steer_layers=tuple(steer_layers),
        mean_norms=all_fit.norm(dim=-1).mean(0),
        caa=torch.stack([lin[1] for lin in linear]),
        default_strength=config.default_strength,
        metrics=report.as_dict(),
        robust_norms=torch.tensor([robust_norm(all_fit[:, j]) for j in range(len(train_layers))]),
        covariances=projected_covariances(scorer, fit),
    )
    return field_, report


def projected_covariances(scorer: ConceptScorer, feats: Features) -> torch.Tensor:
    """Per training layer, the within-class covariance ``[r, r]`` of ``u = R @ hn`` over
    ``feats`` (the preconditioner of the ``preconditioned`` direction): ``[L, r, r]``."""
    with torch.no_grad():
        R, eps = scorer.R.detach().float(), scorer.config.eps
        return torch.stack([within_class_covariance(rms_normalize(feats.pos[:, j].float(), eps) @ R.T,
                                                    rms_normalize(feats.neg[:, j].float(), eps) @ R.T)
                            for j in range(feats.pos.shape[1])])
