"""Contrastive pairs given by the user: the accepted forms, checked and turned into
:class:`svf.ContrastivePair`, and a JSONL file of them.

A pair is a ``ContrastivePair`` (or any object with string ``.positive`` / ``.negative``), a
``(positive, negative)`` tuple or list, or a mapping with the keys ``"positive"`` and
``"negative"`` (other keys are ignored, so a file may carry ids or sources). Both texts must
hold more than whitespace and differ: a pair's contrast is what the scorer learns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from svf_kernels import SVFArgumentError

from .arguments import check_path, show
from .data import ContrastivePair

__all__ = ["PAIR_KEYS", "as_pairs", "load_pairs", "to_pair"]

#: The two texts of a pair, in order: the one that shows the concept, then the one that does not.
PAIR_KEYS = ("positive", "negative")

_FORMS = (
    "a svf.ContrastivePair, a (positive, negative) tuple or a dict with string 'positive' "
    "and 'negative'"
)


def _texts(positive: object, negative: object, where: str) -> ContrastivePair:
    """Both texts are strings with more than whitespace, and they differ."""
    for key, text in zip(PAIR_KEYS, (positive, negative)):
        if not isinstance(text, str):
            raise SVFArgumentError(
                f"{where}: {key!r} must be a string, got {type(text).__name__} {show(text, 40)}"
            )
        if not text.strip():
            raise SVFArgumentError(
                f"{where}: {key!r} is {'empty' if not text else 'only whitespace'}; "
                "both texts of a pair need content"
            )
    if positive == negative:
        raise SVFArgumentError(
            f"{where}: 'positive' and 'negative' are the same text; a pair needs two "
            "different texts"
        )
    return ContrastivePair(positive, negative)


def to_pair(item: object, where: str = "pair") -> ContrastivePair:
    """One pair in any accepted form as a ``ContrastivePair``; ``where`` starts the error message
    (``"pairs[3]"``, ``"data.jsonl:4"``)."""
    if isinstance(item, ContrastivePair):
        _texts(item.positive, item.negative, where)
        return item
    if isinstance(item, Mapping):
        missing = [k for k in PAIR_KEYS if k not in item]
        if missing:
            found = ", ".join(repr(k) for k in item) or "none"
            raise SVFArgumentError(
                f"{where}: missing key {missing[0]!r} (a pair needs 'positive' and "
                f"'negative'; keys found: {found})"
            )
        return _texts(item["positive"], item["negative"], where)
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise SVFArgumentError(
                f"{where}: a pair as a tuple must be (positive, negative), got "
                f"{len(item)} items {show(item, 60)}"
            )
        return _texts(item[0], item[1], where)
    if isinstance(item, (str, bytes)) or not all(hasattr(item, k) for k in PAIR_KEYS):
        raise SVFArgumentError(f"{where} must be {_FORMS}, got {show(item, 60)}")
    return _texts(item.positive, item.negative, where)


def as_pairs(value: object, name: str = "pairs") -> list[ContrastivePair]:
    """A sequence of pairs in any accepted form as a list of ``ContrastivePair``."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise SVFArgumentError(
            f"{name} must be a sequence of contrastive pairs ({_FORMS}), got {show(value)}"
        )
    return [to_pair(p, f"{name}[{i}]") for i, p in enumerate(value)]


def load_pairs(path: str | os.PathLike) -> list[ContrastivePair]:
    """Read a JSONL file of pairs: one ``{"positive": str, "negative": str}`` object a line,
    blank lines skipped, other keys ignored.

    A bad file raises :class:`SVFArgumentError` naming the file and the line.
    """
    path = check_path(path, "path")
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise SVFArgumentError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SVFArgumentError(f"{path}: is a directory, not a JSONL file of pairs") from None
    except OSError as exc:
        raise SVFArgumentError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    pairs = []
    with fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise SVFArgumentError(f"{where}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SVFArgumentError(
                    f"{where}: not JSON ({exc.msg} at column {exc.colno}); each line "
                    'must be one object {"positive": ..., "negative": ...}'
                ) from None
            if not isinstance(item, dict):
                raise SVFArgumentError(
                    f'{where}: expected a JSON object {{"positive": ..., "negative": ...}}, '
                    f"got {_json_kind(item)}"
                )
            pairs.append(to_pair(item, where))
    if not pairs:
        raise SVFArgumentError(f"{path}: no pairs (the file is empty or blank)")
    return pairs


def _json_kind(value: object) -> str:
    """How JSON calls the type of a decoded value (for messages)."""
    kinds = {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
