"""The ``svf`` command line: ``svf train``, ``svf generate``, ``svf demo``, ``svf eval``.

Every option is checked by argparse before anything is loaded (a bad value exits with
status 2 and argparse's ``argument --x: ...`` message); errors found later by the library
(a layer out of range for the model, a corrupt field file, a model that cannot be loaded)
print ``svf <command>: error: <message>`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from svf_kernels import SVFArgumentError

from .artifacts import ArtifactError

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
    """An argparse type for ``svf train --concept``: ``sentiment`` or ``mwe:<known behaviour>``."""
    if text == "sentiment":
        return text
    if text.startswith("mwe:"):
        from .data import available_behaviors

        known = available_behaviors()
        if text[4:] in known:
            return text
        if not known:
            raise argparse.ArgumentTypeError(f"unknown concept {text!r}: no MWE behaviours found in data/mwe")
        raise argparse.ArgumentTypeError(f"unknown MWE behaviour {text[4:]!r}: known are {', '.join(known)}")
    raise argparse.ArgumentTypeError(f"unknown concept {text!r}: use 'sentiment' or 'mwe:<behaviour>'")


def eval_concept(text: str) -> str:
    """An argparse type for ``svf eval --concepts``: one of :data:`svf.concepts.CONCEPTS`."""
    from .concepts import CONCEPTS

    if text not in CONCEPTS:
        raise argparse.ArgumentTypeError(f"unknown concept {text!r}: known are {', '.join(CONCEPTS)}")
    return text


def _min_pairs(fractions: Sequence[float]) -> int:
    """Fewest pairs whose train/val/test split (``svf.data.split``) has >= 2 pairs in each part,
    as ``svf.training.pair_features`` needs."""
    from .data import split

    for n in range(2, 100_000):
        if min(map(len, split(range(n), tuple(fractions)))) >= 2:
            return n
    raise AssertionError(f"no pair count splits well by {fractions}")  # pragma: no cover


_PAIRS_WHY = " (the train/val/test split needs at least 2 pairs in each part)"


@functools.cache
def min_train_pairs() -> int:
    """Fewest pairs ``svf train`` can train on (default ``TrainConfig.fractions``)."""
    from .training import TrainConfig

    return _min_pairs(TrainConfig().fractions)


@functools.cache
def min_demo_pairs() -> int:
    """Fewest pairs ``svf demo`` can train on (its own split fractions)."""
    from .demo import DEMO_FRACTIONS

    return _min_pairs(DEMO_FRACTIONS)


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
    from .artifacts import FIELD_FILENAME

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


def report_dir(text: str) -> str:
    """An argparse type for ``svf eval --out``: a directory (existing or not) that can be written."""
    non_empty_text(text)
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    _check_writable_below(path / "README.md")
    return text


def _load_model(name: str | None):
    from .models import load_model

    return load_model(name)


def _concept_pairs(concept: str, n: int | None, seed: int, tokenizer):
    from . import data

    if concept == "sentiment":
        return data.sentiment_pairs(n, seed=seed)
    if concept.startswith("mwe:"):
        return data.mwe_pairs(concept[4:], tokenizer=tokenizer, n=n, seed=seed)
    raise SVFArgumentError(f"unknown concept {concept!r}: use 'sentiment' or 'mwe:<behaviour>'")


def _check_model_layers(model, layers: Sequence[int] | None, option: str) -> None:
    """Layer indices given on the command line exist in the loaded model."""
    if layers is not None:
        from .hf import check_layers

        check_layers(model, list(layers), f"argument {option}: layers")


def cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train_field

    config = TrainConfig(seed=args.seed, max_epochs=args.max_epochs)
    model, tok = _load_model(args.model)
    _check_model_layers(model, args.layers, "--layers")
    _check_model_layers(model, args.steer_layers, "--steer-layers")
    pairs = _concept_pairs(args.concept, args.pairs, args.seed, tok)
    field, report = train_field(
        model, tok, pairs, concept=args.concept, train_layers=args.layers,
        steer_layers=args.steer_layers, config=config, model_name=args.model or "SmolLM2-135M-Instruct",
    )
    path = field.save(args.out)
    print(report.table())
    print(f"saved {path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from .artifacts import load_field
    from .field import SteeringField
    from .generation import format_prompts
    from .steering import steer

    load_field(args.field)  # a missing or corrupt field fails before the model is loaded
    model, tok = _load_model(args.model)
    _check_model_layers(model, args.layers, "--layers")
    field = SteeringField.load(args.field, model)
    text = format_prompts(tok, [args.prompt], chat=not args.no_chat)[0]
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    runs = {}
    for name, kwargs in (("unsteered", {"alpha": 0.0}), ("steered", {"strength": args.strength})):
        steering = steer(model, field, method=args.method, record_scores=True, layers=args.layers, **kwargs)
        with steering as s, torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad)
        new = out[0, enc["input_ids"].shape[1] :]
        scores = [float(sc[0]) for _, _, sc in s.scores_by_position()]
        # score at step k is that of the position holding token k-1 (step 0: prompt end)
        runs[name] = [(tok.decode([int(t)]), scores[k] if k < len(scores) else float("nan")) for k, t in enumerate(new)]
    print(f"prompt: {args.prompt!r}   field: {field.concept}   method: {args.method}   strength: {args.strength}")
    print(f"{'#':>3}  {'unsteered':<18} {'score':>7}   {'steered':<18} {'score':>7}")
    for k in range(max(len(runs["unsteered"]), len(runs["steered"]))):
        u = runs["unsteered"][k] if k < len(runs["unsteered"]) else ("", float("nan"))
        v = runs["steered"][k] if k < len(runs["steered"]) else ("", float("nan"))
        print(f"{k:>3}  {u[0]!r:<18} {u[1]:>7.2f}   {v[0]!r:<18} {v[1]:>7.2f}")
    for name, toks in runs.items():
        print(f"\n[{name}] {''.join(t for t, _ in toks)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(pairs=args.pairs, prompts=args.prompts, max_new_tokens=args.max_new_tokens, seed=args.seed)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluation import EvalConfig, quick_config, run_eval

    model, tok = _load_model(args.model)
    overrides = {"concepts": tuple(args.concepts)} if args.concepts else {}
    if args.no_mwe:
        overrides["mwe_behaviors"] = ()
    cfg = quick_config(**overrides) if args.quick else EvalConfig(**overrides)
    out = Path(args.out)
    command = "svf " + " ".join(args.argv) if getattr(args, "argv", None) else ""
    run_eval(model, tok, cfg, out, model_name=args.model or "SmolLM2-135M-Instruct", command=command)
    for table in ("likelihood", "open_ended"):
        if (out / f"{table}.md").is_file():
            print((out / f"{table}.md").read_text())
    print(f"wrote {out}/README.md")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .models import prepare_default_model

    print(prepare_default_model(force=args.force))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="svf", description="Steering Vector Fields for Hugging Face models")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a concept field from contrastive data")
    t.add_argument("--concept", type=concept_name, default="sentiment", help="'sentiment' or 'mwe:<behaviour>'")
    t.add_argument("--model", type=non_empty_text, default=None,
                   help="local path or hub id (default: SmolLM2-135M-Instruct)")
    t.add_argument("--layers", type=parse_layers, default=parse_layers("8-17"), help="training window, e.g. 8-17")
    t.add_argument("--steer-layers", type=parse_layers, default=None, help="default: first 4 training layers")
    t.add_argument("--pairs", type=int_at_least(min_train_pairs, _PAIRS_WHY), default=None,
                   help="number of contrastive pairs (default: all)")
    t.add_argument("--max-epochs", type=positive_int, default=40)
    t.add_argument("--seed", type=seed_int, default=0)
    t.add_argument("--out", type=field_out_path, required=True, help="output directory or .safetensors file")
    t.set_defaults(func=cmd_train, check=_check_train_args, parser=t)

    g = sub.add_parser("generate", help="unsteered vs steered continuation, with concept scores per token")
    g.add_argument("--field", type=non_empty_text, required=True)
    g.add_argument("--prompt", type=non_empty_text, required=True)
    g.add_argument("--strength", type=finite_float, default=0.5)
    g.add_argument("--method", choices=("svf", "caa"), default="svf")
    g.add_argument("--layers", type=parse_layers, default=None)
    g.add_argument("--model", type=non_empty_text, default=None)
    g.add_argument("--max-new-tokens", type=positive_int, default=40)
    g.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the chat template")
    g.set_defaults(func=cmd_generate, parser=g)

    d = sub.add_parser("demo", help="train a sentiment field on the default model and compare methods")
    d.add_argument("--pairs", type=int_at_least(min_demo_pairs, _PAIRS_WHY), default=300)
    d.add_argument("--prompts", type=positive_int, default=6)
    d.add_argument("--max-new-tokens", type=positive_int, default=40)
    d.add_argument("--seed", type=seed_int, default=0)
    d.set_defaults(func=cmd_demo, parser=d)

    e = sub.add_parser("eval", help="how strongly and reliably each method steers (report directory)")
    e.add_argument("--quick", action="store_true", help="small data and sweeps: a few minutes")
    e.add_argument("--concepts", type=eval_concept, nargs="+", default=None,
                   help="default: every concept in data/concepts")
    e.add_argument("--model", type=non_empty_text, default=None)
    e.add_argument("--out", type=report_dir, default="runs/eval", help="report directory (default: runs/eval)")
    e.add_argument("--no-mwe", action="store_true", help="skip the MWE A/B questions")
    e.set_defaults(func=cmd_eval, parser=e)

    m = sub.add_parser("prepare", help="convert the default model once into the cache")
    m.add_argument("--force", action="store_true", help="convert again even when cached")
    m.set_defaults(func=cmd_prepare, parser=m)
    return p


def _check_train_args(args: argparse.Namespace) -> str | None:
    """Checks across ``svf train``'s options; the problem as argparse words it, or None."""
    if args.layers != sorted(set(args.layers)):
        return f"argument --layers: layers must be strictly increasing, got {args.layers}"
    if args.steer_layers is not None:
        extra = sorted(set(args.steer_layers) - set(args.layers))
        if extra:
            return f"argument --steer-layers: layers {extra} are not among --layers {args.layers}"
    return None


def parse_args(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse and check ``argv`` with ``parser`` (default: a new :func:`build_parser`); exits with
    status 2 and argparse's message when it is bad."""
    args = (parser or build_parser()).parse_args(list(argv))
    check = getattr(args, "check", None)
    problem = check(args) if check is not None else None
    if problem:
        args.parser.error(problem)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``svf`` command; returns the exit status (2: bad arguments or input, 130: interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (SVFArgumentError, ArtifactError, ValueError, OSError) as e:
        print(f"svf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"svf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
