"""Evaluation concepts: training pairs, neutral prompts and the likelihood measure's completions.

Each concept lives in ``datasets/concepts/<name>/`` (``pairs.jsonl``, ``prompts.jsonl``,
``completions.jsonl``, ``instructions.json`` for the prompting baseline, README with how it was
made). Sentiment takes its training pairs from
rt-polarity and, as completions, rt-polarity sentences held out from those pairs.
Prompts split once: the first 30% are validation (every choice of layer or strength is made
there), the rest test (read once, for the report).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from svf_kernels import SVFArgumentError

from .arguments import check_int, check_optional_int, check_text
from .data import ContrastivePair, _require, data_dir, sentiment_pairs
from .pair_data import load_pairs

CONCEPTS = ("sentiment", "formality", "topic-ocean")
#: The prompting baseline's intensities, mildest first (``instructions.json`` has one per side).
INTENSITIES = ("slightly", "plain", "very")
VALIDATION_FRACTION = 0.3
SENTIMENT_PAIRS = 400  # default training pairs drawn from rt-polarity (of 5,331)


@dataclass(frozen=True)
class Concept:
    """One concept's data; ``positive`` completions are the direction steering asks for."""

    name: str
    pairs: tuple[ContrastivePair, ...]
    prompts: tuple[str, ...]
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    #: sign (+1 toward the positive side, -1 away) -> intensity -> the instruction to write so
    instructions: dict[int, dict[str, str]] = field(default_factory=dict)

    def instruction(self, sign: int, intensity: str) -> str:
        """The instruction that asks for the ``sign`` side at ``intensity`` (:data:`INTENSITIES`)."""
        try:
            return self.instructions[sign][intensity]
        except KeyError:
            raise SVFArgumentError(f"concept {self.name!r} has no instruction for sign {sign!r} at "
                                   f"intensity {intensity!r} (intensities: {list(INTENSITIES)})") from None

    @property
    def validation_prompts(self) -> list[str]:
        return list(self.prompts[: self._n_val])

    @property
    def test_prompts(self) -> list[str]:
        return list(self.prompts[self._n_val :])

    @property
    def _n_val(self) -> int:
        return int(VALIDATION_FRACTION * len(self.prompts))


def _jsonl(path: Path, keys: tuple[str, ...]) -> list[dict[str, str]]:
    rows = []
    for i, line in enumerate(_require(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or set(row) != set(keys) or not all(
            isinstance(row[k], str) and row[k].strip() for k in keys
        ):
            raise ValueError(f"{path}:{i}: expected non-empty string fields {list(keys)}, got {line[:80]!r}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} is empty")
    return rows


def _instructions(path: Path) -> dict[int, dict[str, str]]:
    """``instructions.json``: ``{"toward": {intensity: text}, "away": {...}}`` with every intensity."""
    try:
        raw = json.loads(_require(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg})") from None
    out = {}
    for sign, side in ((1, "toward"), (-1, "away")):
        texts = raw.get(side) if isinstance(raw, dict) else None
        if (not isinstance(texts, dict) or set(texts) != set(INTENSITIES)
                or not all(isinstance(v, str) and v.strip() for v in texts.values())):
            raise ValueError(f"{path}: {side!r} must map each of {list(INTENSITIES)} to a non-empty string")
        out[sign] = dict(texts)
    return out


def load_concept(name: str, n_pairs: int | None = None, n_completions: int = 8) -> Concept:
    """Load ``name`` (one of :data:`CONCEPTS`), with at most ``n_pairs`` training pairs and
    ``n_completions`` completions per side."""
    check_text(name, "name")
    if name not in CONCEPTS:
        raise SVFArgumentError(f"unknown concept {name!r} (name must be one of {list(CONCEPTS)})")
    check_optional_int(n_pairs, "n_pairs", minimum=1)
    check_int(n_completions, "n_completions", minimum=1)
    root = data_dir() / "concepts" / name
    prompts = tuple(r["prompt"] for r in _jsonl(root / "prompts.jsonl", ("prompt",)))
    instructions = _instructions(root / "instructions.json")
    if name == "sentiment":
        every = sentiment_pairs()
        n_train = SENTIMENT_PAIRS if n_pairs is None else n_pairs
        if not 0 < n_train <= len(every) - n_completions:
            raise SVFArgumentError(f"n_pairs must be in [1, {len(every) - n_completions}] (sentiment keeps "
                                   f"n_completions={n_completions} sentences held out), got {n_pairs}")
        # completions: short held-out sentences (never among the training pairs)
        held = [p for p in every[n_train:] if len(p.positive.split()) <= 12 and len(p.negative.split()) <= 12]
        pos = tuple(p.positive for p in held[:n_completions])
        neg = tuple(p.negative for p in held[:n_completions])
        return Concept(name, tuple(every[:n_train]), prompts, pos, neg, instructions)
    pairs = load_pairs(_require(root / "pairs.jsonl"))  # the format svf train --data reads
    comp = _jsonl(root / "completions.jsonl", ("positive", "negative"))[:n_completions]
    return Concept(name, tuple(pairs[:n_pairs] if n_pairs is not None else pairs), prompts,
                   tuple(r["positive"] for r in comp), tuple(r["negative"] for r in comp), instructions)
