"""Argparse option types of the ``svf`` command line: each refuses a bad value with a reason
(``argparse.ArgumentTypeError``), so ``svf`` exits with status 2 before loading anything."""

from __future__ import annotations

import argparse
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path

#: Largest layer index the command line accepts (no model has more layers; a typo such as
#: ``0-100000000`` must not build a list of a hundred million ints).
MAX_LAYER = 9999
#: Seeds are handed to ``torch.manual_seed``, which takes these.
SEED_RANGE = (-(2**63), 2**64 - 1)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def int_at_least(minimum: int | Callable[[], int], why: str = "") -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (or >= ``minimum()``, computed when used)."""

    def parse(text: str) -> int:
        value = _int(text)
        low = minimum() if callable(minimum) else minimum
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}{why}, got {value}")
        return value

    parse.__name__ = f"int>={minimum if not callable(minimum) else '?'}"
    return parse


positive_int = int_at_least(1)


def fisher_samples(text: str) -> int:
    """An argparse type for ``--fisher-samples``: 0 (no natural direction) or at least 2 (one
    sample to estimate the Fisher information from and one to choose its damping on)."""
    value = _int(text)
    if value != 0 and value < 2:
        raise argparse.ArgumentTypeError(f"must be 0 (none) or an integer >= 2, got {value}")
    return value


def seed_int(text: str) -> int:
    """An argparse type: an integer that ``torch.manual_seed`` takes."""
    value = _int(text)
    lo, hi = SEED_RANGE
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"must be an integer in [-2**63, 2**64 - 1], got {value}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a finite real number (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def non_empty_text(text: str) -> str:
    """An argparse type: a non-empty string without NUL bytes."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if "\0" in text:
        raise argparse.ArgumentTypeError("must not contain NUL bytes")
    return text


def parse_layers(text: str) -> list[int]:
    """``"10-13"`` -> [10, 11, 12, 13]; ``"3,5,7"`` -> [3, 5, 7]; mixed forms allowed.

    Indices are 0-based and at most :data:`MAX_LAYER`; a range ``lo-hi`` needs ``lo <= hi``.
    Whether they exist in the model is checked once the model is loaded.
    """
    hint = "use e.g. 10-19 or 3,5,7 (0-based layer indices)"
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("-") or "--" in part:
            raise argparse.ArgumentTypeError(f"bad layer list {text!r}: layer indices cannot be negative; {hint}")
        bounds = part.split("-")
        try:
            if len(bounds) > 2:
                raise ValueError
            values = [int(b) for b in bounds]
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad layer list {text!r}: {part!r} is not a layer or a "
                                             f"range lo-hi; {hint}") from None
        if any(v < 0 for v in values):  # int() accepts a sign: " -3" etc.
            raise argparse.ArgumentTypeError(f"bad layer list {text!r}: layer indices cannot be negative; {hint}")
        if max(values) > MAX_LAYER:
            raise argparse.ArgumentTypeError(f"bad layer list {text!r}: layer {max(values)} is over "
                                             f"{MAX_LAYER}; {hint}")
        if len(values) == 2:
            lo, hi = values
            if lo > hi:
                raise argparse.ArgumentTypeError(f"bad layer list {text!r}: range {part!r} is reversed "
                                                 f"(write {hi}-{lo})")
            out.extend(range(lo, hi + 1))
        else:
            out.append(values[0])
    if not out:
        raise argparse.ArgumentTypeError(f"empty layer list {text!r}: {hint}")
    return out


def concept_name(text: str) -> str:
    """A concept ``svf train`` ships data for: one of :data:`svf.concepts.CONCEPTS` or
    ``mwe:<known behaviour>`` (an argparse type; ``svf train`` applies it without ``--data``)."""
    from ..concepts import CONCEPTS

    if text in CONCEPTS:
        return text
    if text.startswith("mwe:"):
        from ..data import available_behaviors

        known = available_behaviors()
        if text[4:] in known:
            return text
        if not known:
            raise argparse.ArgumentTypeError(f"unknown concept {text!r}: no MWE behaviours found in svf/datasets/mwe")
        raise argparse.ArgumentTypeError(f"unknown MWE behaviour {text[4:]!r}: known are {', '.join(known)}")
    raise argparse.ArgumentTypeError(f"unknown concept {text!r}: use one of {', '.join(CONCEPTS)}, "
                                     "'mwe:<behaviour>', or --data FILE for your own pairs")


def pairs_file(text: str) -> str:
    """An argparse type for ``svf train --data``: an existing file (its lines are checked when
    it is read, before the model loads)."""
    non_empty_text(text)
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file {text!r}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return text


def eval_concept(text: str) -> str:
    """An argparse type for ``svf eval --concepts``: one of :data:`svf.concepts.CONCEPTS`."""
    from ..concepts import CONCEPTS

    if text not in CONCEPTS:
        raise argparse.ArgumentTypeError(f"unknown concept {text!r}: known are {', '.join(CONCEPTS)}")
    return text


def eval_stage(text: str) -> str:
    """An argparse type for ``svf eval --stages``: the name of one of :data:`svf.eval.stages.STAGES`."""
    from ..eval.stages import STAGE_NAMES

    if text not in STAGE_NAMES:
        raise argparse.ArgumentTypeError(f"unknown stage {text!r}: known are {', '.join(STAGE_NAMES)}")
    return text


def fluency_method(text: str) -> str:
    """An argparse type for ``svf eval --fluency-methods``: one of
    :data:`svf.eval.evaluate_fluency.FLUENCY_METHODS`."""
    from ..eval.evaluate_fluency import FLUENCY_METHODS

    if text not in FLUENCY_METHODS:
        raise argparse.ArgumentTypeError(f"unknown equal-fluency method {text!r}: known are "
                                         f"{', '.join(FLUENCY_METHODS)}")
    return text


def prepared_model(text: str) -> str:
    """An argparse type for ``svf prepare --model``: a model name of :data:`svf.models.MODELS`
    or an alias, returned as its registry name."""
    from svf_kernels import SVFArgumentError

    from ..models import model_name

    try:
        return model_name(text)
    except SVFArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def gguf_file(text: str) -> str:
    """An argparse type for ``svf prepare --gguf``: an existing file that starts with the GGUF
    magic bytes (:func:`svf.models.check_gguf_file`)."""
    from svf_kernels import SVFArgumentError

    from ..models import check_gguf_file

    non_empty_text(text)
    try:
        check_gguf_file(text, "PATH")
    except SVFArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def own_model_name(text: str) -> str:
    """An argparse type for ``svf prepare --name``: a name for a GGUF of your own
    (:func:`svf.models.check_model_name`)."""
    from svf_kernels import SVFArgumentError

    from ..models import check_model_name

    try:
        return check_model_name(text)
    except SVFArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: ``--layers`` of ``svf eval``, ``svf demo`` and ``svf train``: the training window.
LAYERS_HELP = ("training window: the decoder layers (0-based) whose last-token activations train "
               "the scorer, e.g. 12-21 or 12,14,16 (default: derived from the model's depth L: "
               "round(L/3) layers from layer round(2L/5); 12-21 of the default model's 30 layers, "
               "7-12 of an 18-layer model)")
#: ``--steer-layers`` of ``svf eval`` and ``svf demo``.
STEER_LAYERS_HELP = ("steering layers, a subset of the training window (default: the layers 2/5, "
                     "3/5 and 4/5 of the way into it; 16,18,20 of 12-21)")


def check_layer_options(args: argparse.Namespace) -> str | None:
    """``--layers`` strictly increasing, ``--steer-layers`` without repeats and among ``--layers``
    when both are given: the problem as argparse words it, or None. Whether the layers exist is
    checked once the model is loaded."""
    layers, steer = args.layers, args.steer_layers
    if layers is not None and layers != sorted(set(layers)):
        return f"argument --layers: layers must be strictly increasing, got {layers}"
    if steer is not None:
        if len(set(steer)) != len(steer):
            return f"argument --steer-layers: layers must not repeat, got {steer}"
        extra = sorted(set(steer) - set(layers)) if layers is not None else []
        if extra:
            return f"argument --steer-layers: layers {extra} are not among --layers {layers}"
    return None


PAIRS_WHY = " (the train/val/test split needs at least 2 pairs in each part)"


@functools.cache
def min_train_pairs() -> int:
    """Fewest pairs ``svf train`` can train on (the adaptive split of ``TrainConfig()``)."""
    from ..data import min_split_size
    from ..training import TrainConfig

    return min_split_size(TrainConfig().fractions)


@functools.cache
def min_demo_pairs() -> int:
    """Fewest pairs ``svf demo`` can train on (its own split fractions)."""
    from ..data import min_split_size
    from .demo import DEMO_FRACTIONS

    return min_split_size(DEMO_FRACTIONS)


def _check_writable_below(target: Path) -> None:
    """The nearest existing ancestor of ``target`` is a directory we can write to."""
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"cannot write {str(target)!r}: {str(parent)!r} is a file, "
                                                 "not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise argparse.ArgumentTypeError(f"cannot write {str(target)!r}: directory {str(parent)!r} "
                                                 "is not writable")
            return


def field_out_path(text: str) -> str:
    """An argparse type for ``svf train --out``: a ``.safetensors`` file, or else a directory to hold
    ``field.safetensors`` (as ``svf.artifacts`` reads paths), that can be written."""
    from ..artifacts import FIELD_FILENAME

    non_empty_text(text)
    path = Path(text)
    file = path if path.name.endswith(".safetensors") else path / FIELD_FILENAME
    if file is not path and path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory (a path not ending in "
                                         ".safetensors names a directory to hold field.safetensors)")
    if file.is_dir():
        raise argparse.ArgumentTypeError(f"{str(file)!r} is a directory, not a field file")
    _check_writable_below(file)
    return text


def gguf_out_path(text: str) -> str:
    """An argparse type for ``svf export --gguf``: a file ending in ``.gguf`` (not a directory)
    that can be written."""
    non_empty_text(text)
    path = Path(text)
    if not path.name.lower().endswith(".gguf") or path.name.lower() == ".gguf":
        raise argparse.ArgumentTypeError(f"{text!r} must be a file name ending in .gguf")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    _check_writable_below(path)
    return text


def report_dir(text: str) -> str:
    """An argparse type for ``svf eval --out``: a directory (existing or not) that can be written."""
    non_empty_text(text)
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    _check_writable_below(path / "README.md")
    return text
