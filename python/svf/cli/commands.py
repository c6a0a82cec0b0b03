"""The ``svf`` command line: ``svf train``, ``svf generate``, ``svf demo``, ``svf eval``.

Every option is checked by argparse before anything is loaded (a bad value exits with
status 2 and argparse's ``argument --x: ...`` message); errors found later by the library
(a layer out of range for the model, a corrupt field file, a model that cannot be loaded)
print ``svf <command>: error: <message>`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from svf_kernels import SVFArgumentError

from ..artifacts import ArtifactError
from .options import (  # noqa: F401 - MAX_LAYER, SEED_RANGE: part of the command line's contract
    MAX_LAYER,
    PAIRS_WHY,
    SEED_RANGE,
    concept_name,
    eval_concept,
    field_out_path,
    finite_float,
    int_at_least,
    min_demo_pairs,
    min_train_pairs,
    non_empty_text,
    parse_layers,
    positive_int,
    report_dir,
    seed_int,
)


def _load_model(name: str | None):
    from ..models import load_model

    return load_model(name)


def _concept_pairs(concept: str, n: int | None, seed: int, tokenizer):
    from .. import data

    if concept == "sentiment":
        return data.sentiment_pairs(n, seed=seed)
    if concept.startswith("mwe:"):
        return data.mwe_pairs(concept[4:], tokenizer=tokenizer, n=n, seed=seed)
    raise SVFArgumentError(f"unknown concept {concept!r}: use 'sentiment' or 'mwe:<behaviour>'")


def _check_model_layers(model, layers: Sequence[int] | None, option: str) -> None:
    """Layer indices given on the command line exist in the loaded model."""
    if layers is not None:
        from ..hf import check_layers

        check_layers(model, list(layers), f"argument {option}: layers")


def cmd_train(args: argparse.Namespace) -> int:
    from ..training import TrainConfig, train_field

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

    from ..artifacts import load_field
    from ..generation import format_prompts
    from ..steering import steer
    from ..steering_field import SteeringField

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

    from ..eval.evaluation import EvalConfig, quick_config, run_eval

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
    from ..models import prepare_default_model

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
    t.add_argument("--pairs", type=int_at_least(min_train_pairs, PAIRS_WHY), default=None,
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
    d.add_argument("--pairs", type=int_at_least(min_demo_pairs, PAIRS_WHY), default=300)
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
