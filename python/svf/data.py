"""Datasets the project ships, turned into contrastive pairs.

Everything here reads the datasets shipped inside the package, ``svf/datasets/`` (see
``datasets/README.md``); nothing is downloaded.  Two families:

* sentiment: the rt-polarity sentence set (Pang & Lee 2005), positive vs negative
  snippets, plus :data:`NEUTRAL_PROMPTS` (written for this project) as open-ended prompts;
* MWE behaviours: multiple-choice questions from Anthropic's model-written evaluations
  and the CAA splits, normalised by :func:`load_mwe` to one format.

The direction of an MWE concept always comes from ``answer_matching_behavior``, never
from the folder name: in several files the "matching" answer is the opposite of what
the name says (see ``datasets/mwe/MANIFEST.tsv``, column ``label_polarity``).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from svf_kernels import SVFArgumentError

from .arguments import check_int, check_optional_int, check_text, show
from .tokenization import resolve_chat

__all__ = [
    "NEUTRAL_PROMPTS",
    "ContrastivePair",
    "available_behaviors",
    "data_dir",
    "load_mwe",
    "load_rt_polarity",
    "mwe_pairs",
    "render_mwe",
    "sentiment_pairs",
    "split",
    "split_sizes",
    "training_split",
]

T = TypeVar("T")


@dataclass(frozen=True)
class ContrastivePair:
    """One training example: a text that shows the concept and one that does not."""

    positive: str
    negative: str


# --------------------------------------------------------------------------- location


def data_dir() -> Path:
    """The shipped datasets: ``svf/datasets/``, package data of the installed ``svf``.

    ``$SVF_DATA_DIR`` points the loaders at another folder with the same layout.  The
    folder lives inside the package so that a wheel installed anywhere carries it.
    """
    env = os.environ.get("SVF_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().with_name("datasets")


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found. The data ships inside the svf package (svf/datasets/); "
            "set SVF_DATA_DIR to point elsewhere."
        )
    return path


# --------------------------------------------------------------------------- sentiment


def load_rt_polarity() -> tuple[list[str], list[str]]:
    """Return ``(positive, negative)`` rt-polarity snippets (stripped, non-empty, file order)."""
    root = data_dir() / "rt-polarity"

    def read(name: str) -> list[str]:
        text = _require(root / name).read_text(encoding="utf-8")
        return [line.strip() for line in text.splitlines() if line.strip()]

    return read("rt-polarity.pos"), read("rt-polarity.neg")


def sentiment_pairs(n: int | None = None, seed: int = 0) -> list[ContrastivePair]:
    """Positive vs negative rt-polarity sentences, each side shuffled with ``seed``.

    Returns ``min(#pos, #neg)`` pairs, or the first ``n`` of them.
    """
    check_optional_int(n, "n", minimum=0)
    check_int(seed, "seed")
    pos, neg = load_rt_polarity()
    rng = random.Random(seed)
    rng.shuffle(pos)
    rng.shuffle(neg)
    pairs = [ContrastivePair(p, q) for p, q in zip(pos, neg)]
    if n is not None:
        pairs = pairs[:n]
    return pairs


# --------------------------------------------------------------------------- MWE

# Which files make up a behaviour, in order of preference.  A CAA folder is the CAA
# generate split followed by its A/B test split; the Anthropic-only folders have one file.
_CAA_FILES = {"generate": "generate_dataset.json", "test": "test_dataset_ab.json"}
_ANTHROPIC_FILES = ("anthropic_human_generated_evals.jsonl", "anthropic_persona.jsonl")
_SOURCES = ("all", "generate", "test")

_ANSWER_RE = re.compile(r"^\(([A-Z])\)$")
_WRAPPED_RE = re.compile(r"^Question:\s*(.*?)\s*\n\s*\nAnswer:\s*$", re.DOTALL)
_BARE_CHOICE_RE = re.compile(r"(?m)^\((?=[A-Z]\))")


def _mwe_root() -> Path:
    return data_dir() / "mwe"


def available_behaviors() -> list[str]:
    """Names of the MWE behaviours present in ``datasets/mwe``, sorted."""
    root = _mwe_root()
    if not root.is_dir():
        return []
    names = []
    for sub in root.iterdir():
        if not sub.is_dir():
            continue
        files = [*_CAA_FILES.values(), *_ANTHROPIC_FILES]
        if any((sub / f).is_file() for f in files):
            names.append(sub.name)
    return sorted(names)


def _read_records(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise TypeError(f"{path}: expected a JSON array of items")
    return data


def _normalise_answer(value: Any, path: Path) -> str:
    if isinstance(value, list):  # some Anthropic files allow several labels
        if len(value) != 1:
            raise ValueError(f"{path}: answer lists with {len(value)} entries are not supported")
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}: bad answer label {value!r}")
    return value.strip()


def _normalise_question(q: str) -> str:
    q = q.strip()
    m = _WRAPPED_RE.match(q)  # Anthropic human-generated "Question: ...\n\nAnswer:" wrapper
    if m:
        q = m.group(1)
    # refusal writes "\n(A) ..." where every other file writes "\n (A) ..."
    q = _BARE_CHOICE_RE.sub(" (", q)
    return q.strip()


def _normalise_item(raw: dict[str, Any], path: Path) -> dict[str, str]:
    try:
        q, m, o = (
            raw["question"],
            raw["answer_matching_behavior"],
            raw["answer_not_matching_behavior"],
        )
    except KeyError as exc:
        raise ValueError(f"{path}: item without {exc.args[0]!r}") from None
    item = {
        "question": _normalise_question(q),
        "answer_matching_behavior": _normalise_answer(m, path),
        "answer_not_matching_behavior": _normalise_answer(o, path),
    }
    if item["answer_matching_behavior"] == item["answer_not_matching_behavior"]:
        raise ValueError(f"{path}: matching and non-matching answers are equal: {item}")
    return item


def load_mwe(behavior: str, source: str = "all") -> list[dict[str, str]]:
    """Load one MWE behaviour as a list of items, file order, exact duplicates removed.

    Each item is ``{"question", "answer_matching_behavior", "answer_not_matching_behavior"}``
    with the formats normalised: labels stripped to ``"(A)"``/``"(B)"``/... (or
    ``"Yes"``/``"No"`` for persona statements), the human-generated
    ``"Question: ...\\n\\nAnswer:"`` wrapper removed, choices written ``"\\n (A) ..."``.

    ``source`` matters only for folders in the CAA format: ``"all"`` (generate split then
    A/B test split), ``"generate"`` or ``"test"``.  Folders holding one Anthropic file
    accept only ``"all"``.

    The concept direction is ``answer_matching_behavior`` as the file gives it; for some
    behaviours that is the opposite of the folder name (see ``datasets/mwe/MANIFEST.tsv``).
    """
    _check_behavior(behavior, source)
    folder = _mwe_root() / behavior
    caa = [folder / f for f in _CAA_FILES.values() if (folder / f).is_file()]
    if caa:
        keys = list(_CAA_FILES) if source == "all" else [source]
        paths = [_require(folder / _CAA_FILES[k]) for k in keys]
    else:
        paths = [next(folder / f for f in _ANTHROPIC_FILES if (folder / f).is_file())]

    items: list[dict[str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    for path in paths:
        for raw in _read_records(path):
            item = _normalise_item(raw, path)
            key = (
                item["question"],
                item["answer_matching_behavior"],
                item["answer_not_matching_behavior"],
            )
            if key in seen:
                continue
            seen.add(key)
            items.append(item)
    return items


def _check_behavior(behavior: object, source: object) -> None:
    """``behavior`` names a folder of ``datasets/mwe`` and ``source`` is a split it has."""
    check_text(behavior, "behavior")
    if not isinstance(source, str) or source not in _SOURCES:
        raise SVFArgumentError(f"unknown source {show(source)}: source must be one of {', '.join(_SOURCES)}")
    names = available_behaviors()
    if behavior not in names:
        raise SVFArgumentError(
            f"unknown MWE behaviour {behavior!r} (behavior must be one of: {', '.join(names) or '(none)'};"
            f" looked in {_mwe_root()})"
        )
    folder = _mwe_root() / behavior
    if source != "all" and not any((folder / f).is_file() for f in _CAA_FILES.values()):
        raise SVFArgumentError(f"behavior {behavior!r} has no CAA generate/test split: use source='all', "
                               f"got source={source!r}")


def _check_chat_tokenizer(tokenizer: object) -> None:
    """``None`` or a Hugging Face tokenizer (something with ``apply_chat_template``)."""
    if tokenizer is not None and not callable(getattr(tokenizer, "apply_chat_template", None)):
        raise SVFArgumentError(f"tokenizer must be None or a Hugging Face tokenizer, got {type(tokenizer).__name__}")


def _check_items(items: object) -> list:
    """MWE items: dicts with string ``question`` and answer labels (as :func:`load_mwe` gives)."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise SVFArgumentError(f"items must be a sequence of MWE items (dicts), got {show(items)}")
    for i, it in enumerate(items):
        if not isinstance(it, Mapping) or not all(
                isinstance(it.get(k), str) for k in ("question", "answer_matching_behavior",
                                                      "answer_not_matching_behavior")):
            raise SVFArgumentError(f"items[{i}] must be a dict with string 'question', 'answer_matching_behavior' "
                                   f"and 'answer_not_matching_behavior', got {show(it)}")
    return list(items)


def _answer_stub(label: str) -> str:
    """``"(A)"`` -> ``"(A"``: the answer up to and including the letter (CAA's convention)."""
    m = _ANSWER_RE.match(label)
    return f"({m.group(1)}" if m else label


def render_mwe(question: str, answer: str, tokenizer: Any = None) -> str:
    """Render a question followed by the start of an answer (``"(A"``, ``"Yes"``, ...).

    Without a tokenizer (or one without a chat template: logged once per tokenizer, see
    :func:`svf.tokenization.resolve_chat`) the text is ``f"{question}\\nAnswer: {answer}"``.
    With a chat template the question is the user turn and the answer the start of the
    assistant turn, rendered with ``continue_final_message=True`` so the text ends right after
    the answer (no end-of-turn token).  For a fixed question two answers then give texts that
    share everything up to the answer, so the last token (the letter) is the one that differs.
    The text holds the special tokens the template writes; the tokenizer's own leading ones
    are added once when it is encoded (:func:`svf.tokenization.encode_texts`).
    """
    check_text(question, "question", allow_empty=True)
    check_text(answer, "answer")
    _check_chat_tokenizer(tokenizer)
    if tokenizer is None or not resolve_chat(tokenizer, None):
        return f"{question}\nAnswer: {answer}"
    messages = [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    if not isinstance(text, str) or not text.endswith(answer):
        raise ValueError(f"chat template did not end the text with the answer {answer!r}")
    return text


def mwe_pairs(
    behavior: str,
    tokenizer: Any = None,
    n: int | None = None,
    seed: int = 0,
    *,
    source: str = "all",
) -> list[ContrastivePair]:
    """Contrastive pairs for an MWE behaviour: question + matching answer vs + the other one.

    The text ends with the answer letter without its closing parenthesis (``"... (A"``),
    or with ``"Yes"``/``"No"`` for persona statements; see :func:`render_mwe` for the
    rendering with and without a chat template.  Both texts of a pair are identical up
    to that final answer.  ``n=None`` keeps every item in file order; otherwise ``n``
    items are sampled with ``random.Random(seed)``.
    """
    _check_behavior(behavior, source)
    _check_chat_tokenizer(tokenizer)
    check_optional_int(n, "n", minimum=0)
    check_int(seed, "seed")
    items = load_mwe(behavior, source=source)
    if n is not None:
        items = random.Random(seed).sample(items, min(n, len(items)))
    return mwe_item_pairs(items, tokenizer)


def mwe_item_pairs(items: Sequence[dict[str, str]], tokenizer: Any = None) -> list[ContrastivePair]:
    """Question + matching answer vs + the other answer, for MWE items (see :func:`mwe_pairs`)."""
    items = _check_items(items)
    _check_chat_tokenizer(tokenizer)
    return [
        ContrastivePair(
            render_mwe(it["question"], _answer_stub(it["answer_matching_behavior"]), tokenizer),
            render_mwe(it["question"], _answer_stub(it["answer_not_matching_behavior"]), tokenizer),
        )
        for it in items
    ]


# --------------------------------------------------------------------------- splits

#: The paper's 40/10/50 train/val/test split (DESIGN.md §2): :func:`split`'s default. Training
#: splits pairs by the adaptive rule of :func:`split_sizes` instead.
DEFAULT_FRACTIONS = (0.4, 0.1, 0.5)
#: Training pairs the scorer needs before its held-out accuracy levels off. Measured on the
#: default model (layers 12-21, mean over layers, 200 held-out sentiment pairs): 0.62, 0.69,
#: 0.73, 0.75, 0.76 at 20, 40, 80, 150, 300 training pairs; formality 0.93, 0.96, 0.98 at 20,
#: 40, 80 (docs/EVALUATION.md).
TRAIN_PAIRS_NEEDED = 80
#: Shares of the adaptive split held out: validation (early stopping) and test (the report's
#: held-out accuracy); training takes the rest.
VAL_SHARE = 0.1
TEST_SHARE = 0.2
#: Most pairs the adaptive split holds out for validation and for test, each: 100 test pairs
#: measure an accuracy to about 0.035 (one standard error), 100 validation pairs give a stable
#: early-stopping loss; every pair beyond trains the scorer, whose held-out accuracy still
#: rises from 80 to 300 training pairs.
MAX_HELDOUT_PAIRS = 100


def _check_fractions(fractions: object) -> tuple[float, float, float]:
    """Three finite non-negative numbers summing to 1."""
    if (isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence) or len(fractions) != 3
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f < 0
                   for f in fractions)):
        raise SVFArgumentError(f"fractions must be three finite non-negative numbers (train, val, test), "
                               f"got {show(fractions)}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise SVFArgumentError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fractions)})")
    return tuple(fractions)


def _heldout(n: int, share: float) -> int:
    """``share`` of ``n`` items, at least 2 and at most :data:`MAX_HELDOUT_PAIRS`."""
    return min(MAX_HELDOUT_PAIRS, max(2, int(share * n + 1e-9)))


def split_sizes(n: int, fractions: Sequence[float] | None = None) -> tuple[int, int, int]:
    """``(train, val, test)`` sizes of ``n`` items.

    With ``fractions``, train and val are ``floor(fraction * n)`` and test takes the rest. With
    ``None`` (the adaptive rule, what training uses by default): val is 10 % and test 20 % of
    ``n``, each at least 2 and at most :data:`MAX_HELDOUT_PAIRS`, and train takes the rest, so
    every pair beyond the held-out ones trains the scorer: 30 items give 21/3/6, 113 give 80/11/22
    (the first to reach :data:`TRAIN_PAIRS_NEEDED`), 300 give 210/30/60, 1000 give 800/100/100.
    Under 6 items a part gets fewer than 2 (train first, then test).
    """
    check_int(n, "n", minimum=0)
    if fractions is not None:
        fractions = _check_fractions(fractions)
        n_train = int(fractions[0] * n + 1e-9)
        n_val = min(int(fractions[1] * n + 1e-9), n - n_train)
        return n_train, n_val, n - n_train - n_val
    n_val = min(n, _heldout(n, VAL_SHARE))
    n_test = min(n - n_val, _heldout(n, TEST_SHARE))
    return n - n_val - n_test, n_val, n_test


def _cut(items: Sequence[T], sizes: tuple[int, int, int],
         seed: int) -> tuple[list[T], list[T], list[T]]:
    """Shuffle ``items`` with ``seed`` and cut them into parts of ``sizes``."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    pick = [items[i] for i in order]
    n_train, n_val, _ = sizes
    return pick[:n_train], pick[n_train : n_train + n_val], pick[n_train + n_val :]


def _check_split_items(items: object) -> None:
    """``items`` is a sequence to split (a lone string is refused)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise SVFArgumentError(f"items must be a sequence (a list, a tuple), got {show(items)}")


def split(
    items: Sequence[T],
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> tuple[list[T], list[T], list[T]]:
    """Deterministic shuffled train/val/test split by ``fractions`` (default the paper's
    40/10/50; training uses :func:`training_split`).

    The train and val sizes are ``floor(fraction * len(items))``; test takes the rest.
    """
    _check_split_items(items)
    fractions = _check_fractions(fractions)
    check_int(seed, "seed")
    return _cut(items, split_sizes(len(items), fractions), seed)


def training_split(
    items: Sequence[T],
    fractions: tuple[float, float, float] | None = None,
    seed: int = 0,
) -> tuple[list[T], list[T], list[T]]:
    """The split training uses: :func:`split` by ``fractions``, or with ``None`` the adaptive
    rule of :func:`split_sizes` (10 % validation and 20 % test, each at most
    :data:`MAX_HELDOUT_PAIRS`; the rest trains). The shuffle is :func:`split`'s, so both agree
    wherever their sizes do."""
    _check_split_items(items)
    check_int(seed, "seed")
    return _cut(items, split_sizes(len(items), fractions), seed)


def pairs_needed(fractions: Sequence[float] | None = None) -> int:
    """Fewest items whose split by ``fractions`` (``None``: the adaptive rule) leaves
    :data:`TRAIN_PAIRS_NEEDED` to train on (113 with the adaptive rule, 200 with 40/10/50)."""
    for n in range(TRAIN_PAIRS_NEEDED, 100_000):
        if split_sizes(n, fractions)[0] >= TRAIN_PAIRS_NEEDED:
            return n
    raise SVFArgumentError(f"fractions {show(fractions)} never give {TRAIN_PAIRS_NEEDED} items to "
                           "train on")


def min_split_size(fractions: Sequence[float] | None, per_part: int = 2) -> int:
    """Fewest items whose split by ``fractions`` (``None``: the adaptive rule) has at least
    ``per_part`` in each part (training needs 2 pairs in each of train, val and test)."""
    for n in range(per_part, 100_000):
        if min(split_sizes(n, fractions)) >= per_part:
            return n
    raise SVFArgumentError(f"fractions {show(fractions)} never give {per_part} items to every part")


# --------------------------------------------------------------------------- prompts

#: Open-ended prompts written for this project (not taken from any dataset): each can be
#: continued either positively or negatively, for sentiment steering and its evaluation.
NEUTRAL_PROMPTS: list[str] = [
    "Tell me about the weekend you spent at the lake.",
    "Describe the new restaurant on Main Street.",
    "Write a short review of the movie you watched last night.",
    "How was your first day at the new job?",
    "Tell me about your neighbour's dog.",
    "Describe the hotel where you stayed on your last trip.",
    "What do you think of the city's new bus schedule?",
    "Write a few sentences about the book you just finished.",
    "Tell me about the concert you went to on Friday.",
    "Describe your experience at the dentist this morning.",
    "How did the family dinner go yesterday?",
    "Write a short note about the weather this week.",
    "Tell me about the used car you bought last month.",
    "Describe the flight you took to visit your cousin.",
    "What was the school play like?",
    "Write a review of the coffee shop near the station.",
    "Tell me about the hike you went on last Sunday.",
    "Describe the apartment you looked at today.",
    "How was the wedding you attended in June?",
    "Write a few lines about your morning commute.",
    "Tell me about the new phone you have been using.",
    "Describe the museum exhibition that opened downtown.",
    "What was the cooking class like?",
    "Write a short review of the video game that came out last week.",
    "Tell me about the team meeting this afternoon.",
    "Describe the beach town where you spent the summer.",
    "How did the football match go on Saturday?",
    "Write a few sentences about the local farmers market.",
    "Tell me about your landlord.",
    "Describe the birthday party you threw for your sister.",
    "What do you think about the changes to the park?",
    "Write a short review of the television series everyone is talking about.",
    "Tell me about the camping trip with your friends.",
    "Describe the customer service you got when you called the bank.",
    "How was the train ride through the mountains?",
    "Write a few lines about the yoga class at the gym.",
    "Tell me about the garden you planted this spring.",
    "Describe the neighbourhood you just moved to.",
    "The movie I saw yesterday was",
    "My trip to the city last weekend was",
]

#: The first 12 prompts are for choosing layers and strengths (validation); the other 28
#: are held out for reports and tests, never used to tune anything.
VALIDATION_PROMPTS: list[str] = NEUTRAL_PROMPTS[:12]
TEST_PROMPTS: list[str] = NEUTRAL_PROMPTS[12:]
