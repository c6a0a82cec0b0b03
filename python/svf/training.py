"""Train a concept field from contrastive pairs (DESIGN.md §2, "Training").

Features are last-token hidden states at every layer of a training window (or, with
``TrainConfig.positions="inner"``, hidden states at positions inside the texts as well); the
scorer is trained with BCE over all (example, layer) pairs, AdamW (paper defaults lr 3e-4,
weight decay 1e-2), mini-batches, and early stopping on a validation split's loss. The CAA
direction has nothing to stop early, so it uses every pair outside the test split. The report
compares the scorer's held-out accuracy per layer with a linear baseline (the projection on
that CAA direction, thresholded on the same pairs), at the last token and at positions inside
the texts, and says when the field is undertrained.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from svf_kernels import SVFArgumentError

from .activations import last_token_activations, position_activations
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
#: The values of :attr:`TrainConfig.positions`.
TRAIN_POSITIONS = ("last", "inner")
#: Most positions read per text at inner positions (evenly spaced, the last token included).
MAX_INNER_POSITIONS = 16


@dataclass
class TrainConfig:
    """Training hyper-parameters. ``max_epochs`` bounds training; early stopping ends it.

    ``fractions``: the train/val/test shares, or ``None`` for the adaptive split of
    :func:`svf.data.split_sizes` (10 % validation and 20 % test, each at least 2 and at most
    100 pairs; every other pair trains the scorer).

    ``positions``: where in each pair text the scorer trains. ``"last"``: the last token only.
    ``"inner"``: also at positions inside the text, each with the pair's label: every token from
    index ``inner_skip`` (0-based, the tokenizer's leading special tokens counted) to the last,
    at most :data:`MAX_INNER_POSITIONS` of them evenly spaced, the last always included
    (:func:`svf.activations.position_activations`). A field scores and steers every generated
    token, that is inside unfinished text, where a last-token scorer has seen no examples; the
    first ``inner_skip`` tokens are left out because they carry little of the concept yet.
    ``inner_skip`` also sets the positions of the report's inner accuracies, in either mode.
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
    positions: str = "last"
    inner_skip: int = 3
    default_strength: float = DEFAULT_STRENGTH
    #: Fisher samples for the natural direction at the steering layers (svf.fisher); 0: none.
    fisher_samples: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SVFArgumentError` naming the first bad field (also after edits)."""
        for name in ("r", "de", "m", "batch_size", "max_epochs", "patience"):
            check_int(getattr(self, name), f"TrainConfig.{name}", minimum=1)
        check_int(self.seed, "TrainConfig.seed")
        if not isinstance(self.positions, str) or self.positions not in TRAIN_POSITIONS:
            raise SVFArgumentError("TrainConfig.positions must be 'last' (each text's last token) or "
                                   "'inner' (also positions inside the texts), got "
                                   f"{show(self.positions)}")
        check_int(self.inner_skip, "TrainConfig.inner_skip", minimum=0)
        check_number(self.lr, "TrainConfig.lr", positive=True)
        check_number(self.weight_decay, "TrainConfig.weight_decay", minimum=0.0)
        check_number(self.default_strength, "TrainConfig.default_strength")
        check_int(self.fisher_samples, "TrainConfig.fisher_samples", minimum=0)
        if self.fisher_samples == 1:
            raise SVFArgumentError("TrainConfig.fisher_samples must be 0 (no natural direction) or "
                                   ">= 2 (one to estimate the Fisher, one to choose its damping)")
        fr = self.fractions
        if fr is not None and (
                isinstance(fr, (str, bytes)) or not isinstance(fr, Sequence) or len(fr) != 3
                or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0 for f in fr)
                or not all(map(math.isfinite, fr)) or abs(sum(fr) - 1.0) > 1e-6):
            raise SVFArgumentError("TrainConfig.fractions must be None (the adaptive split) or "
                                   "three finite numbers > 0 (train, val, test) summing to 1, "
                                   f"got {show(fr)}")


@dataclass
class PositionFeatures:
    """One side (the positive or the negative texts) of a split at several positions per text:
    ``hidden`` ``[P, L, d]``; ``pair`` ``[P]`` long, the pair (index into the split) each row came
    from; ``last`` ``[P]`` bool, whether the row is its text's last token."""

    hidden: torch.Tensor
    pair: torch.Tensor
    last: torch.Tensor

    def join(self, other: PositionFeatures, offset: int) -> PositionFeatures:
        """The rows of both, ``other``'s pairs numbered from ``offset``."""
        return PositionFeatures(torch.cat([self.hidden, other.hidden]),
                                torch.cat([self.pair, other.pair + offset]),
                                torch.cat([self.last, other.last]))


@dataclass
class Features:
    """Activations of one split: ``pos``/``neg`` are ``[n, L, d]`` at each text's last token;
    ``pos_inner``/``neg_inner`` (optional) the same texts at positions inside them, the last
    token among them (:class:`PositionFeatures`)."""

    pos: torch.Tensor
    neg: torch.Tensor
    pos_inner: PositionFeatures | None = None
    neg_inner: PositionFeatures | None = None

    def join(self, other: Features) -> Features:
        """The pairs of both, ``self``'s first (inner positions when both have them)."""
        pos, neg = torch.cat([self.pos, other.pos]), torch.cat([self.neg, other.neg])
        if self.pos_inner is None or other.pos_inner is None:
            return Features(pos, neg)
        n = len(self.pos)
        return Features(pos, neg, self.pos_inner.join(other.pos_inner, n),
                        self.neg_inner.join(other.neg_inner, n))

    def last_token(self) -> Features:
        """The last-token activations alone."""
        return Features(self.pos, self.neg)

    def at_layers(self, idx: Sequence[int]) -> Features:
        """The same texts at the layers of positions ``idx`` (``self`` when that is every layer)."""
        idx = list(idx)
        if idx == list(range(self.pos.shape[1])):
            return self

        def sub(p: PositionFeatures | None) -> PositionFeatures | None:
            return None if p is None else PositionFeatures(p.hidden[:, idx], p.pair, p.last)

        return Features(self.pos[:, idx], self.neg[:, idx], sub(self.pos_inner), sub(self.neg_inner))

    def flat(self, positions: str = "last") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All (example, layer) samples: hidden ``[2nL, d]``, layer positions, labels; with
        ``positions="inner"`` every row of ``pos_inner`` and ``neg_inner`` instead of the last
        tokens (``[(P+ + P-) L, d]``)."""
        if positions == "inner":
            if self.pos_inner is None or self.neg_inner is None:
                raise SVFArgumentError("the features hold no inner positions: extract them with "
                                       "pair_features and TrainConfig(positions='inner'), or train "
                                       "at each text's last token: TrainConfig(positions='last')")
            hp, hn = self.pos_inner.hidden, self.neg_inner.hidden
            L, d = hp.shape[1:]
            h = torch.cat([hp.reshape(-1, d), hn.reshape(-1, d)])
            layer_pos = torch.arange(L).repeat(len(hp) + len(hn))
            y = torch.cat([torch.ones(len(hp) * L), torch.zeros(len(hn) * L)])
            return h, layer_pos, y
        n, L, d = self.pos.shape
        h = torch.cat([self.pos.reshape(-1, d), self.neg.reshape(-1, d)])
        layer_pos = torch.arange(L).repeat(n).repeat(2)
        y = torch.cat([torch.ones(n * L), torch.zeros(n * L)])
        return h, layer_pos, y


@dataclass
class TrainReport:
    """What training measured; ``per_layer`` holds held-out accuracies per training layer:
    ``scorer_acc`` and ``linear_acc`` at each text's last token, ``scorer_acc_inner`` and
    ``linear_acc_inner`` at the positions inside the texts (last token excluded; None when no
    text has any). ``training``: where the scorer trained (``positions``, ``inner_skip``,
    ``max_positions``)."""

    per_layer: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    training: dict = field(default_factory=dict)

    @property
    def undertrained_layers(self) -> list[int]:
        """Layers whose held-out scorer accuracy at the last token is under
        :data:`MIN_HELDOUT_ACCURACY`, or more than :data:`LINEAR_MARGIN` under the linear (CAA)
        baseline at every kind of position the scorer trained on: the last token, and with
        ``positions="inner"`` also the positions inside the texts (a scorer that trades a little
        last-token accuracy for the positions it steers at is not undertrained)."""
        inner = self.training.get("positions") == "inner"

        def behind(row: dict, suffix: str) -> bool:
            scorer, linear = row.get("scorer_acc" + suffix), row.get("linear_acc" + suffix)
            return scorer is not None and linear is not None and scorer < linear - LINEAR_MARGIN

        return [r["layer"] for r in self.per_layer
                if r["scorer_acc"] < MIN_HELDOUT_ACCURACY
                or (behind(r, "") and (not inner or r.get("scorer_acc_inner") is None
                                       or behind(r, "_inner")))]

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
            where = (" at the last token and inside the texts"
                     if self.training.get("positions") == "inner" else "")
            parts.append(f"held-out accuracy {shown} at layers {bad} (under "
                         f"{MIN_HELDOUT_ACCURACY} or {LINEAR_MARGIN} under the linear baseline{where})")
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
        """The split sizes, held-out accuracy per layer (scorer vs linear baseline, at the last
        token and inside the texts), and the undertrained warning when there is one."""
        sizes = (f"pairs: {self.n_train} train, {self.n_val} validation (early stopping; CAA uses "
                 f"train + validation), {self.n_test} test (held out)")
        lines = [sizes]
        if self.training.get("positions") == "inner":
            lines.append(f"scorer trained at inner positions: from token {self.training['inner_skip']} "
                         f"to the last, at most {self.training['max_positions']} per text")
        inner = any("scorer_acc_inner" in r for r in self.per_layer)
        head = f"{'layer':>5}  {'scorer':>7}  {'linear(CAA)':>11}"
        lines.append(head + (f"  {'scorer(inner)':>13}  {'linear(inner)':>13}" if inner else ""))

        def acc(value: float | None, width: int) -> str:
            return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"

        for r in self.per_layer:
            row = f"{r['layer']:>5}  {r['scorer_acc']:>7.3f}  {r['linear_acc']:>11.3f}"
            if inner:
                row += f"  {acc(r.get('scorer_acc_inner'), 13)}  {acc(r.get('linear_acc_inner'), 13)}"
            lines.append(row)
        lines.append(self.warning or f"held-out accuracy >= {MIN_HELDOUT_ACCURACY} and within "
                     f"{LINEAR_MARGIN} of the linear baseline at every training layer")
        return "\n".join(lines)


def linear_baseline(train: Features, test: Features) -> list[tuple[float, torch.Tensor]]:
    """Per layer: the CAA direction (mean difference over ``train``) and the held-out accuracy on
    ``test`` of thresholding ``h · direction`` (threshold fit on ``train``)."""
    out = []
    for layer in range(train.pos.shape[1]):
        direction, thr = _linear_fit(train, layer)
        p_te = torch.cat([test.pos[:, layer], test.neg[:, layer]]) @ direction
        y_te = torch.cat([torch.ones(len(test.pos)), torch.zeros(len(test.neg))])
        out.append((float(((p_te > thr).float() == y_te).float().mean()), direction))
    return out


def _linear_fit(train: Features, layer: int) -> tuple[torch.Tensor, float]:
    """The CAA direction at layer position ``layer`` of ``train``'s last tokens and the threshold
    on ``h · direction`` that separates them best."""
    direction = train.pos[:, layer].mean(0) - train.neg[:, layer].mean(0)
    p_tr = torch.cat([train.pos[:, layer], train.neg[:, layer]]) @ direction
    y_tr = torch.cat([torch.ones(len(train.pos)), torch.zeros(len(train.neg))])
    return direction, _best_threshold(p_tr, y_tr)


def linear_inner_accuracy(train: Features, test: Features) -> list[float | None]:
    """Per layer: :func:`linear_baseline`'s classifier (direction and threshold fit on ``train``'s
    last tokens, as the CAA vector is) at ``test``'s inner positions (:func:`inner_accuracy`)."""
    fits = [_linear_fit(train, j) for j in range(train.pos.shape[1])]
    return inner_accuracy(test, lambda h, j: h @ fits[j][0] > fits[j][1])


def inner_accuracy(feats: Features, positive: Callable[[torch.Tensor, int], torch.Tensor]) -> list[float | None]:
    """Per layer position ``j``: the accuracy of ``positive(hidden [P, d], j) -> [P] bool`` at the
    positions inside the texts of ``feats`` (each text's last token excluded); each text weighs
    the same, whatever its number of positions. None where no text has such a position (all are
    too short) or ``feats`` has no inner positions."""
    sides = [(feats.pos_inner, True), (feats.neg_inner, False)]
    if any(side is None for side, _ in sides):
        return [None] * feats.pos.shape[1]
    out = []
    for j in range(feats.pos.shape[1]):
        total, texts = 0.0, 0
        for side, label in sides:
            keep = ~side.last
            if not bool(keep.any()):
                continue
            correct = (positive(side.hidden[keep, j], j) == label).float()
            pair = side.pair[keep]
            sums = torch.zeros(int(pair.max()) + 1).index_add_(0, pair, correct)
            counts = torch.bincount(pair, minlength=len(sums))
            has = counts > 0
            total += float((sums[has] / counts[has]).sum())
            texts += int(has.sum())
        out.append(total / texts if texts else None)
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
    The samples are ``config.positions``' (:meth:`Features.flat`), for the PCA initialisation,
    the training and the validation loss that stops it early alike.
    ``progress``: an epoch bar on stderr (None: only on a terminal, :func:`svf.progress.progress_bar`)."""
    torch.manual_seed(config.seed)
    d = train.pos.shape[-1]
    scorer = ConceptScorer(ScorerConfig(d, tuple(train_layers), config.r, config.de, config.m))
    h, pos, y = train.flat(config.positions)
    scorer.init_projection_pca(h)
    hv, posv, yv = val.flat(config.positions)
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


def scorer_inner_accuracy(scorer: ConceptScorer, feats: Features) -> list[float | None]:
    """Held-out accuracy per training layer at the positions inside the texts
    (:func:`inner_accuracy`; score > 0 means positive)."""
    layers = scorer.config.train_layers
    with torch.no_grad():
        return inner_accuracy(feats, lambda h, j: scorer.score_layer(h, layers[j]) > 0)


@dataclass
class PairFeatures:
    """Activations of the train/val/test splits of a set of pairs at ``layers`` (extract once,
    train several fields on any subset of the layers). ``positions`` and ``inner_skip``: the
    :class:`TrainConfig` values they were extracted for (with ``"last"`` only the test split
    has inner positions, for the report)."""

    layers: tuple[int, ...]
    train: Features
    val: Features
    test: Features
    positions: str = "last"
    inner_skip: int = 3

    def select(self, layers: Sequence[int]) -> tuple[Features, Features, Features]:
        missing = sorted(set(layers) - set(self.layers))
        if missing:
            raise SVFArgumentError(f"features lack layers {missing} (have {list(self.layers)})")
        idx = [self.layers.index(i) for i in layers]
        return tuple(f.at_layers(idx) for f in (self.train, self.val, self.test))


def _check_config(config: object) -> TrainConfig:
    """``config`` is None (the defaults) or a valid :class:`TrainConfig` (checked again: it may
    have been edited after construction)."""
    if config is None:
        return TrainConfig()
    if not isinstance(config, TrainConfig):
        raise SVFArgumentError(f"config must be a TrainConfig or None, got {type(config).__name__}")
    config.validate()
    return config


def _check_features(features: object, model: nn.Module, config: TrainConfig | None = None) -> None:
    """``features`` came from :func:`pair_features` on a model of this hidden size (and, given
    ``config``, with its ``positions`` and ``inner_skip``)."""
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
        for side in (part.pos_inner, part.neg_inner):
            if side is not None and (not isinstance(side, PositionFeatures) or side.hidden.dim() != 3
                                     or side.hidden.shape[1:] != part.pos.shape[1:]
                                     or not len(side.hidden) == len(side.pair) == len(side.last)):
                raise SVFArgumentError(f"features.{name} inner positions must be PositionFeatures with "
                                       f"hidden [P, {part.pos.shape[1]}, {d}] and P pair and last entries")
    if config is None:
        return
    if config.positions == "inner" and (features.positions != "inner" or any(
            f.pos_inner is None or f.neg_inner is None for f in (features.train, features.val))):
        raise SVFArgumentError("features were extracted for TrainConfig.positions='last' (no inner "
                               "positions to train on) but config.positions is 'inner': extract "
                               "them with pair_features and this config")
    if features.inner_skip != config.inner_skip:
        raise SVFArgumentError(f"features were extracted with TrainConfig.inner_skip="
                               f"{features.inner_skip} but config.inner_skip is {config.inner_skip}: "
                               "extract them with pair_features and this config")


def pair_features(model: nn.Module, tokenizer, pairs: Sequence, layers: Sequence[int],
                  config: TrainConfig | None = None, *, batch_size: int = 16,
                  progress: bool | None = None) -> PairFeatures:
    """Split ``pairs`` by ``config.fractions`` (see :class:`TrainConfig`) and extract each
    split's last-token activations, and inner-position ones (``config.inner_skip``, at most
    :data:`MAX_INNER_POSITIONS` per text) for the test split (the report's inner accuracies)
    and, with ``config.positions="inner"``, for every split. Where both are extracted they come
    from one forward pass, the last tokens being each text's last inner row (the same values
    as :func:`svf.activations.last_token_activations`). ``progress``: bars on stderr (None:
    only on a terminal)."""
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
        if config.positions == "last" and name != "test":
            acts = last_token_activations(model, tokenizer, texts, layers, batch_size=batch_size,
                                          desc=f"activations ({name})", progress=progress)
            return Features(acts[: len(part)], acts[len(part) :])
        at = position_activations(model, tokenizer, texts, layers, skip=config.inner_skip,
                                  max_positions=MAX_INNER_POSITIONS, batch_size=batch_size,
                                  desc=f"activations ({name})", progress=progress)
        n, last = len(part), at.is_last()
        last_rows = at.hidden[last]
        assert len(last_rows) == 2 * n, "every pair text has a token"
        side = at.text < n

        def inner(keep: torch.Tensor, first: int) -> PositionFeatures:
            return PositionFeatures(at.hidden[keep], at.text[keep] - first, last[keep])

        return Features(last_rows[:n], last_rows[n:], inner(side, 0), inner(~side, n))

    return PairFeatures(tuple(layers), feats(tr, "train"), feats(va, "val"), feats(te, "test"),
                        positions=config.positions, inner_skip=config.inner_skip)


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

    ``config.positions`` sets the scorer's samples (training and the validation loss that stops
    it early). The CAA vector, the mean and robust norms and the covariances always use the last
    tokens, so the CAA method and the strength units do not depend on it and stay comparable
    between fields trained either way. The report gives held-out accuracy at the last token and
    at inner positions in either mode, and ``report.training`` (also in the field's metrics)
    records the mode.
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
        _check_features(features, model, config)
    if features is None:
        features = pair_features(model, tokenizer, pairs, train_layers, config, batch_size=batch_size,
                                 progress=progress)
    f_tr, f_va, f_te = features.select(train_layers)
    tr, va, te = f_tr.pos, f_va.pos, f_te.pos  # sizes for the report
    scorer, history, best_epoch = train_scorer(f_tr, f_va, train_layers, config, progress)
    # CAA has nothing to stop early: every pair outside the test split, at the last token
    fit = f_tr.last_token().join(f_va.last_token())
    linear = linear_baseline(fit, f_te)
    accs = scorer_accuracy(scorer, f_te)
    accs_inner, linear_inner = scorer_inner_accuracy(scorer, f_te), linear_inner_accuracy(fit, f_te)
    report = TrainReport(
        per_layer=[
            {"layer": layer, "scorer_acc": a, "linear_acc": lin[0], "scorer_acc_inner": a_in,
             "linear_acc_inner": lin_in}
            for layer, a, lin, a_in, lin_in in zip(train_layers, accs, linear, accs_inner, linear_inner)
        ],
        history=history, best_epoch=best_epoch, n_train=len(tr), n_val=len(va), n_test=len(te),
        training={"positions": config.positions, "inner_skip": config.inner_skip,
                  "max_positions": MAX_INNER_POSITIONS},
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
    if config.fisher_samples:
        from .fisher import add_natural_direction

        add_natural_direction(field_, model, tokenizer, samples=config.fisher_samples,
                              seed=config.seed, batch_size=batch_size, progress=progress)
    return field_, report


def projected_covariances(scorer: ConceptScorer, feats: Features) -> torch.Tensor:
    """Per training layer, the within-class covariance ``[r, r]`` of ``u = R @ hn`` over
    ``feats`` (the preconditioner of the ``preconditioned`` direction): ``[L, r, r]``."""
    with torch.no_grad():
        R, eps = scorer.R.detach().float(), scorer.config.eps
        return torch.stack([within_class_covariance(rms_normalize(feats.pos[:, j].float(), eps) @ R.T,
                                                    rms_normalize(feats.neg[:, j].float(), eps) @ R.T)
                            for j in range(feats.pos.shape[1])])
