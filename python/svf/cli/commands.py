"""The ``svf`` command line: ``svf train``, ``svf generate``, ``svf demo``, ``svf eval``,
``svf prepare``, ``svf export``.

Every option is checked by argparse before anything is loaded (a bad value exits with
status 2 and argparse's ``argument --x: ...`` message); errors found later by the library
(a layer out of range for the model, a corrupt field file, a model that cannot be loaded)
print ``svf <command>: error: <message>`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from svf_kernels import SVFArgumentError

from ..artifacts import ArtifactError
from ..concepts import CONCEPTS
from ..control_vectors import EXPORT_METHODS
from ..data import MAX_HELDOUT_PAIRS, TRAIN_PAIRS_NEEDED, pairs_needed
from ..models import DEFAULT_MODEL, MODELS
from ..optional import MissingExtraError
from ..steering_field import DEFAULT_STRENGTH
from ..training import MAX_INNER_POSITIONS, TRAIN_POSITIONS, TrainConfig
from .options import (  # noqa: F401 - MAX_LAYER, SEED_RANGE: part of the command line's contract
    LAYERS_HELP,
    MAX_LAYER,
    PAIRS_WHY,
    SEED_RANGE,
    STEER_LAYERS_HELP,
    check_layer_options,
    concept_name,
    eval_concept,
    eval_stage,
    field_out_path,
    finite_float,
    fisher_samples,
    fluency_method,
    gguf_file,
    gguf_out_path,
    int_at_least,
    min_demo_pairs,
    min_train_pairs,
    non_empty_text,
    own_model_name,
    pairs_file,
    parse_layers,
    positive_int,
    prepared_model,
    report_dir,
    seed_int,
)


def _load_model(name: str | None):
    from ..models import load_model

    return load_model(name)


def _concept_pairs(concept: str, n: int | None, seed: int, tokenizer):
    """The pairs of a concept the project ships (``--concept`` without ``--data``)."""
    from .. import data
    from ..concepts import load_concept

    if concept == "sentiment":
        return data.sentiment_pairs(n, seed=seed)
    if concept in CONCEPTS:
        return list(load_concept(concept, n_pairs=n).pairs)
    if concept.startswith("mwe:"):
        return data.mwe_pairs(concept[4:], tokenizer=tokenizer, n=n, seed=seed)
    raise SVFArgumentError(f"unknown concept {concept!r}: use one of {', '.join(CONCEPTS)} or "
                           "'mwe:<behaviour>'")


def _file_pairs(path: str, n: int | None):
    """The first ``n`` (default: all) pairs of a ``--data`` file, enough of them to train on."""
    from ..pair_data import load_pairs

    pairs = load_pairs(path)[:n]
    low = min_train_pairs()
    if len(pairs) < low:
        raise SVFArgumentError(f"{path}: {len(pairs)} pairs; training needs at least {low} (2 each "
                               "for the train, validation and test splits), and about "
                               f"{pairs_needed()} for a field that is not undertrained")
    return pairs


def _check_model_layers(model, layers: Sequence[int] | None, option: str) -> None:
    """Layer indices given on the command line exist in the loaded model."""
    if layers is not None:
        from ..hf import check_layers

        check_layers(model, list(layers), f"argument {option}: layers")


def _model_layers(model, args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``--layers`` and ``--steer-layers`` checked against the loaded model, each derived from its
    depth when not given (:func:`svf.layer_windows.resolve_layers`)."""
    from ..hf import num_layers
    from ..layer_windows import resolve_layers

    return resolve_layers(num_layers(model), args.layers, args.steer_layers,
                          train_name="argument --layers: layers", steer_name="argument --steer-layers: layers")


def cmd_train(args: argparse.Namespace) -> int:
    """Train a field on ``--data`` or a shipped concept; print the report (with its undertrained
    warning, if any) and save the field. A bad data file fails before the model loads."""
    from ..training import TrainConfig, train_field

    config = TrainConfig(seed=args.seed, max_epochs=args.max_epochs, positions=args.positions,
                         fisher_samples=args.fisher_samples)
    pairs = _file_pairs(args.data, args.pairs) if args.data is not None else None
    concept = args.concept or (Path(args.data).stem if args.data is not None else "sentiment")
    model, tok = _load_model(args.model)
    train_layers, steer_layers = _model_layers(model, args)
    if args.layers is not None and args.steer_layers is None:
        steer_layers = None  # train_field's rule for a given window: its first 4 layers
    if pairs is None:
        pairs = _concept_pairs(concept, args.pairs, args.seed, tok)
    field, report = train_field(
        model, tok, pairs, concept=concept, train_layers=train_layers,
        steer_layers=steer_layers, config=config, model_name=args.model or "SmolLM2-135M-Instruct",
        progress=False if args.no_progress else None,
    )
    print(report.table())
    path = field.save(args.out)
    print(f"saved {path}")
    return 0


#: ``svf train --help``: where the pairs come from, how they are split, how many the scorer needs.
TRAIN_DESCRIPTION = (
    "Train a concept field from contrastive pairs: your own (--data) or a concept the project "
    "ships (--concept). The pairs are split train/validation/test: 10 % validation and 20 % test, "
    f"each at least 2 and at most {MAX_HELDOUT_PAIRS} pairs, and every other pair trains the scorer. "
    f"The scorer needs about {TRAIN_PAIRS_NEEDED} training pairs, about {pairs_needed()} pairs in "
    "all, before "
    "its held-out accuracy levels off (measured on the default model, docs/EVALUATION.md); with "
    "fewer, or when held-out accuracy stays low, the report ends with a 'warning: undertrained' "
    "line."
)


#: What ``svf generate``'s score column holds (its header and ``--help``).
SCORE_MEANING = ("score: the field's concept-scorer logit for the text up to and including the "
                 "token beside it (the token's own position), read at the first steering layer "
                 "({layer}) before steering moves it; + = more {concept} (like the positive side "
                 "of the pairs it was trained on), - = less. It depends on the tokens alone, so "
                 "the two columns differ where the continuations do.")


def _chat_mode(args: argparse.Namespace) -> bool | None:
    """``--chat``: True, ``--no-chat``: False, neither: None (the template when there is one)."""
    if args.chat:
        return True
    return False if args.no_chat else None


def cmd_generate(args: argparse.Namespace) -> int:
    """Greedy unsteered and steered continuations side by side, each token with its score
    (:data:`SCORE_MEANING`)."""
    from ..artifacts import load_field
    from ..generation import generate_ids, position_scores
    from ..steering import steer
    from ..steering_field import SteeringField
    from ..tokenization import encode_prompts, pad_id

    load_field(args.field)  # a missing or corrupt field fails before the model is loaded
    model, tok = _load_model(args.model)
    _check_model_layers(model, args.layers, "--layers")
    field = SteeringField.load(args.field, model)
    layers = list(args.layers) if args.layers is not None else list(field.steer_layers)
    prompt, _ = encode_prompts(tok, [args.prompt], _chat_mode(args))
    start = prompt.shape[1]
    pad = pad_id(tok)
    progress = False if args.no_progress else None
    steering = steer(model, field, method=args.method, strength=args.strength, layers=layers)
    runs: dict[str, list[tuple[str, float]]] = {}
    for name, context in (("unsteered", contextlib.nullcontext()), ("steered", steering)):
        with context:
            ids = generate_ids(model, prompt, max_new_tokens=args.max_new_tokens, pad_token_id=pad,
                               progress=progress, desc=name)
        scores = position_scores(model, field, ids, min(layers))
        runs[name] = [(tok.decode([int(t)]), float(scores[start + k]))
                      for k, t in enumerate(ids[0, start:])]
    print(f"prompt: {args.prompt!r}   field: {field.concept}   method: {args.method}   "
          f"strength: {args.strength}   layers: {layers}")
    meaning = SCORE_MEANING.format(concept=field.concept, layer=min(layers))
    print(textwrap.fill(meaning, width=100))
    print(f"\n{'#':>3}  {'unsteered':<18} {'score':>7}   {'steered':<18} {'score':>7}")
    blank = ("", float("nan"))
    for k in range(max(len(toks) for toks in runs.values())):
        u, v = (toks[k] if k < len(toks) else blank for toks in runs.values())
        print(f"{k:>3}  {u[0]!r:<18} {u[1]:>+7.2f}   {v[0]!r:<18} {v[1]:>+7.2f}")
    for name, toks in runs.items():
        print(f"\n[{name}] {''.join(t for t, _ in toks)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(pairs=args.pairs, prompts=args.prompts, max_new_tokens=args.max_new_tokens, seed=args.seed,
             train_layers=args.layers, steer_layers=args.steer_layers,
             layer_names=("argument --layers: layers", "argument --steer-layers: layers"))
    return 0


def _fluency_defaults() -> tuple[str, ...]:
    from ..eval.evaluate_fluency import FluencySettings

    return FluencySettings.methods


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from ..eval.config import EvalConfig, quick_config
    from ..eval.evaluation import run_eval

    if args.merge:
        from ..eval.merge import merge_reports

        merge_reports(args.merge, Path(args.out))
        print(f"wrote {args.out}/README.md")
        return 0
    model, tok = _load_model(args.model)
    _model_layers(model, args)  # run_eval derives the same layers; here a bad one names its option
    overrides = {"concepts": tuple(args.concepts)} if args.concepts else {}
    if args.no_mwe:
        overrides["mwe_behaviors"] = ()
    if args.stages:
        overrides["stages"] = tuple(dict.fromkeys(args.stages))
    for key, layers in (("train_layers", args.layers), ("steer_layers", args.steer_layers)):
        if layers is not None:
            overrides[key] = tuple(layers)
    cfg = quick_config(**overrides) if args.quick else EvalConfig(**overrides)
    train = {"seed": args.train_seed, "fisher_samples": args.fisher_samples}
    cfg.train = dataclasses.replace(cfg.train, **{k: v for k, v in train.items() if v is not None})
    if args.fluency_methods:
        cfg.fluency_methods = tuple(dict.fromkeys(args.fluency_methods))
    cfg.validate()
    out = Path(args.out)
    command = "svf " + " ".join(args.argv) if getattr(args, "argv", None) else ""
    run_eval(model, tok, cfg, out, model_name=args.model or "SmolLM2-135M-Instruct", command=command,
             progress=False if args.no_progress else None, field_cache=args.field_cache)
    for table in ("likelihood", "open_ended"):
        if (out / f"{table}.md").is_file():
            print((out / f"{table}.md").read_text())
    print(f"wrote {out}/README.md")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Convert a named model, or with ``--gguf`` a GGUF file of your own, once into the cache;
    print the directory."""
    from ..models import prepare_gguf, prepare_model

    if args.gguf is not None:
        print(prepare_gguf(args.gguf, args.name, force=args.force))
    else:
        print(prepare_model(args.model, force=args.force))
    return 0


#: ``svf export --help``: what the file holds and which strength its magnitudes are.
EXPORT_DESCRIPTION = (
    "Write a trained field as a GGUF control vector: tensors direction.N (F32, the hidden size), "
    "which llama.cpp (--control-vector FILE) adds with a plain + at every position to the output "
    "of decoder layer N (0-based, Hugging Face's model.layers[N]; N >= 1, so layer 0 cannot be "
    "written), and svf.load_control_vector or repeng's ControlVector.import_gguf read. Each "
    "vector's length is what the field's strength (--strength, default: its default strength) "
    "gives at that layer, in the field's strength unit: llama.cpp at scale 1.0 applies that "
    "strength, at scale S strength S times it; the file records the strength, since llama.cpp "
    "has no strength unit. --method caa: the field's CAA direction at each layer (at scale 1.0 "
    "llama.cpp adds what svf.steer(model, field, method='caa', strength=...) adds at a steered "
    "position); --method mean-direction: the field's own unit direction averaged over the "
    "last-token activations of the shipped neutral prompts (svf.NEUTRAL_PROMPTS) at each layer, "
    "which loads the model."
)


def cmd_export(args: argparse.Namespace) -> int:
    """Write ``FIELD`` as a GGUF control vector (:data:`EXPORT_DESCRIPTION`); a bad field, layer
    0 or a layer outside the field's training window fails before the model loads."""
    from ..artifacts import load_field
    from ..control_vectors import control_vector_from_field, write_control_vector
    from ..steering_field import SteeringField, check_train_layers

    load_field(args.field)  # a missing or corrupt field fails before the model is loaded
    field = SteeringField.load(args.field)
    layers = list(args.layers) if args.layers is not None else list(field.steer_layers)
    if 0 in layers:
        raise SVFArgumentError(f"the field steers layers {layers}, among them layer 0, which a GGUF "
                               "control vector cannot hold (direction.N, N >= 1): give --layers "
                               "without 0")
    check_train_layers([field], layers)
    model = tok = None
    if args.method == "mean-direction" or args.model_hint is None:
        name = args.model or field.model_name or None
        try:
            model, tok = _load_model(name)
        except SVFArgumentError as exc:
            if args.model is not None:
                raise
            raise SVFArgumentError(f"the field's model {name!r} could not be loaded ({exc}); give "
                                   "--model (or, with --method caa, --model-hint)") from exc
        _check_model_layers(model, args.layers, "--layers")
        field = SteeringField.load(args.field, model)  # the field fits the model
    entry = control_vector_from_field(field, method=args.method, layers=layers,
                                      strength=args.strength, model=model, tokenizer=tok,
                                      model_hint=args.model_hint,
                                      progress=False if args.no_progress else None)
    path = write_control_vector(entry, args.gguf)
    strength, unit = entry.info["strength"], entry.info["unit"]
    print(f"wrote {path}: field {field.concept!r}, method {args.method}, layers "
          f"{', '.join(map(str, entry.layers))} (direction.N = layer N), hidden size "
          f"{entry.hidden_size}, model_hint {entry.model_hint!r}")
    lengths = ", ".join(f"{i}: {entry.norm(i):.4g}" for i in entry.layers)
    print(f"vector lengths ({lengths}) are strength {strength:g} of the field ({unit} unit).")
    same = (f"what svf.steer(model, field, method='caa', strength={strength:g}) adds"
            if args.method == "caa" else "the field's mean direction at that length")
    print(f"llama.cpp: --control-vector {path} (scale 1.0) adds {same}, at every position "
          "(svf: positions='all');")
    print(f"  --control-vector-scaled {path}:S gives strength {strength:g} x S.")
    print(f"Python: svf.steer(model, svf.load_control_vector({str(path)!r}), strength=S)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="svf", description="Steering Vector Fields for Hugging Face models")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a concept field from contrastive pairs",
                       description=TRAIN_DESCRIPTION)
    t.add_argument("--data", type=pairs_file, default=None, metavar="FILE",
                   help='a JSONL file of your own pairs: one {"positive": "...", "negative": '
                   '"..."} object a line (other keys are ignored, blank lines skipped)')
    t.add_argument("--concept", type=non_empty_text, default=None, metavar="NAME",
                   help="with --data: the field's name (default: the file's name without its "
                   "extension); without --data: the shipped pairs to train on, one of "
                   f"{', '.join(CONCEPTS)} or mwe:<behaviour> (default: sentiment)")
    t.add_argument("--model", type=non_empty_text, default=None,
                   help=f"a model name ({', '.join(MODELS)}, or one given to svf prepare --gguf), a "
                   "local directory or .gguf file, or a hub id (default: SmolLM2-135M-Instruct)")
    t.add_argument("--layers", type=parse_layers, default=None, help=LAYERS_HELP)
    t.add_argument("--steer-layers", type=parse_layers, default=None,
                   help="layers the field steers by default, a subset of the training window "
                        "(default: with --layers, its first 4 layers; without, the layers 2/5, "
                        "3/5 and 4/5 of the way into the derived window: 16,18,20 of 12-21)")
    t.add_argument("--pairs", type=int_at_least(min_train_pairs, PAIRS_WHY), default=None,
                   help=f"number of contrastive pairs to use, at least {min_train_pairs()} (with "
                   "--data: the file's first ones; default: all)")
    t.add_argument("--max-epochs", type=positive_int, default=40,
                   help="upper bound on training epochs; early stopping on the validation "
                        "split usually ends sooner (default: %(default)s)")
    t.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the train/validation/test split and of the scorer's "
                        "initialisation (default: %(default)s)")
    t.add_argument("--positions", choices=TRAIN_POSITIONS, default=TrainConfig().positions,
                   help="where in each pair text the scorer trains: 'last', its last token; "
                        f"'inner', also up to {MAX_INNER_POSITIONS} positions inside it (its "
                        f"first {TrainConfig().inner_skip} tokens skipped, the last included), "
                        "as a field scores every generated token, inside unfinished text. The "
                        "CAA vector and the strength units use the last token either way; the "
                        "report gives held-out accuracy at both (default: %(default)s)")
    t.add_argument("--fisher-samples", type=fisher_samples, default=0,
                   help="also store the natural direction (steer with direction='natural'): the "
                   "scorer's gradient divided by the Fisher information of the next-token "
                   "distribution, estimated from this many samples of the model's own "
                   "continuations of neutral prompts (0: none; default: %(default)s)")
    t.add_argument("--out", type=field_out_path, required=True,
                   help="where to write the field: a directory (holding field.safetensors) "
                        "or a .safetensors file")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bars on stderr (shown only when stderr is a terminal)")
    t.set_defaults(func=cmd_train, check=_check_train_args, parser=t)

    g = sub.add_parser("generate",
                       help="unsteered vs steered continuation, with concept scores per token",
                       description="Greedy unsteered and steered continuations of one prompt, side "
                       "by side, one row per generated token. "
                       + SCORE_MEANING.format(concept="<the field's concept>",
                                              layer="the lowest of --layers"))
    g.add_argument("--field", type=non_empty_text, required=True,
                   help="the field to steer with: a .safetensors file or a directory holding "
                   "field.safetensors (written by svf train)")
    g.add_argument("--prompt", type=non_empty_text, required=True,
                   help="the text to continue: a user turn of the model's chat template when it "
                   "has one (a notice says when it has none), else plain text; see --chat and "
                   "--no-chat")
    g.add_argument("--strength", type=finite_float, default=DEFAULT_STRENGTH,
                   help="steering strength per steered layer, in units of that layer's training "
                   "norm without outlier dimensions (the field's strength unit, docs/STEERING.md); "
                   "negative steers away from the concept (default: %(default)s)")
    g.add_argument("--method", choices=("svf", "caa"), default="svf",
                   help="svf: along the field's concept-scorer gradient at each position; caa: "
                   "along the field's constant CAA vector, on the same layers "
                   "(default: %(default)s)")
    g.add_argument("--layers", type=parse_layers, default=None,
                   help="decoder layers to steer, 0-based, e.g. 16,18,20 or 16-20; each must be "
                   "one of the field's training layers (default: the field's steering layers)")
    g.add_argument("--model", type=non_empty_text, default=None,
                   help="the model the field was trained on: a model name (one of "
                   f"{', '.join(MODELS)}, or one given to svf prepare --gguf), a local path or a hub "
                   "id (default: SmolLM2-135M-Instruct from the cache)")
    g.add_argument("--max-new-tokens", type=positive_int, default=40,
                   help="tokens to generate in each continuation (default: %(default)s)")
    chat = g.add_mutually_exclusive_group()
    chat.add_argument("--chat", action="store_true",
                      help="wrap the prompt in the chat template; an error if the model has none "
                      "(default: the template when the model has one, else plain text)")
    chat.add_argument("--no-chat", action="store_true",
                      help="give the prompt as plain text, without the chat template")
    g.add_argument("--no-progress", action="store_true",
                   help="no per-token progress bar on stderr (shown only when stderr is a terminal "
                   "and a continuation takes over half a second)")
    g.set_defaults(func=cmd_generate, parser=g)

    d = sub.add_parser("demo", help="train a sentiment field on the default model and compare methods")
    d.add_argument("--pairs", type=int_at_least(min_demo_pairs, PAIRS_WHY), default=300,
                   help="rt-polarity sentiment pairs to train on, split train/val/test "
                   "(default: %(default)s)")
    d.add_argument("--prompts", type=positive_int, default=6,
                   help="held-out test prompts to continue and judge (default: %(default)s)")
    d.add_argument("--max-new-tokens", type=positive_int, default=40,
                   help="tokens to generate per continuation (default: %(default)s)")
    d.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the pair sampling, the split and the training "
                   "(default: %(default)s)")
    d.add_argument("--layers", type=parse_layers, default=None, help=LAYERS_HELP)
    d.add_argument("--steer-layers", type=parse_layers, default=None, help=STEER_LAYERS_HELP)
    d.set_defaults(func=cmd_demo, check=check_layer_options, parser=d)

    e = sub.add_parser("eval", help="how strongly and reliably each method steers (report directory)")
    e.add_argument("--quick", action="store_true",
                   help="two concepts, small data and sweeps: a few minutes "
                   "(default: the full run)")
    e.add_argument("--concepts", type=eval_concept, nargs="+", default=None,
                   help="concepts to evaluate (default: every concept in svf/datasets/concepts)")
    e.add_argument("--model", type=non_empty_text, default=None,
                   help="local path or hub id of the model to steer "
                   "(default: SmolLM2-135M-Instruct from the cache)")
    e.add_argument("--out", type=report_dir, default="runs/eval",
                   help="report directory: tables, plots and README.md (default: %(default)s)")
    e.add_argument("--no-mwe", action="store_true", help="skip the MWE A/B questions")
    e.add_argument("--stages", type=eval_stage, nargs="+", default=None,
                   help="run only these stages (default: all of them); each concept's fields are "
                   "trained whenever one of its stages runs")
    e.add_argument("--layers", type=parse_layers, default=None, help=LAYERS_HELP)
    e.add_argument("--steer-layers", type=parse_layers, default=None, help=STEER_LAYERS_HELP)
    e.add_argument("--fluency-methods", type=fluency_method, nargs="+", default=None,
                   help=f"the equal-fluency stage's methods (default: {' '.join(_fluency_defaults())})")
    e.add_argument("--train-seed", type=seed_int, default=None,
                   help="seed of the fields' training (default: 0); the sampling seed stays 0")
    e.add_argument("--fisher-samples", type=fisher_samples, default=None,
                   help="train each field's natural direction from this many Fisher samples "
                   "(needed by the svf-natural methods; default: none)")
    e.add_argument("--merge", nargs="+", default=None, metavar="PART",
                   help="merge these report directories (parts of one run on different concepts) "
                   "into --out and recompute the equal-fluency verdicts; runs no model")
    e.add_argument("--field-cache", type=Path, default=None, metavar="DIR",
                   help="keep the trained fields in DIR and load them from there when a run of "
                   "the same model, concept, layers and training settings needs them again (the "
                   "parts of a split run then train once)")
    e.add_argument("--no-progress", action="store_true",
                   help="no progress bars on stderr (shown only when stderr is a terminal)")
    e.set_defaults(func=cmd_eval, check=check_layer_options, parser=e)

    m = sub.add_parser("prepare", help="convert a named model, or a GGUF file of your own, once "
                       "into the cache",
                       description="Convert a named model's GGUF (from its pip packages), or with "
                       "--gguf a GGUF file of your own, once into a float32 safetensors directory in "
                       "the cache ($SVF_CACHE_DIR or ~/.cache/svf-kernels) and print the directory; "
                       "later loads take seconds instead of de-quantising the GGUF again. A GGUF of "
                       "your own then loads by its name (svf train --model NAME) or by its path (the "
                       "converted copy is found by the file's content).")
    source = m.add_mutually_exclusive_group()
    source.add_argument("--model", type=prepared_model, default=DEFAULT_MODEL,
                        help=f"the model: one of {', '.join(MODELS)} (default: %(default)s)")
    source.add_argument("--gguf", type=gguf_file, default=None, metavar="PATH",
                        help="a GGUF file of your own (an architecture transformers loads from GGUF)")
    m.add_argument("--name", type=own_model_name, default=None,
                   help="with --gguf: the name to load it by (letters, digits, '.', '_', '-'; not a "
                   "named model's; default: the file name without .gguf)")
    m.add_argument("--force", action="store_true",
                   help="convert again even when cached (with --gguf: also replace another file's "
                   "conversion of the same name)")
    m.set_defaults(func=cmd_prepare, check=_check_prepare_args, parser=m)

    x = sub.add_parser("export", help="write a field as a GGUF control vector (llama.cpp, repeng)",
                       description=EXPORT_DESCRIPTION)
    x.add_argument("field", type=non_empty_text, metavar="FIELD",
                   help="the field: a .safetensors file or a directory holding field.safetensors "
                   "(written by svf train)")
    x.add_argument("--gguf", type=gguf_out_path, required=True, metavar="OUT.gguf",
                   help="the control vector file to write (replaced if it exists; nothing is "
                   "written when the export fails)")
    x.add_argument("--method", choices=EXPORT_METHODS, default="caa",
                   help="caa: the field's CAA direction; mean-direction: the field's direction "
                   "averaged over neutral prompts, which loads the model (default: %(default)s)")
    x.add_argument("--layers", type=parse_layers, default=None,
                   help="decoder layers to write, 0-based, each >= 1 and one of the field's "
                   "training layers (default: the field's steering layers)")
    x.add_argument("--strength", type=finite_float, default=None,
                   help="the field strength the vectors' lengths encode, per layer, in the field's "
                   "strength unit (default: the field's default strength)")
    x.add_argument("--model", type=non_empty_text, default=None,
                   help="the model the field was trained on, loaded for its model_type (the file's "
                   "model_hint) and, with --method mean-direction, its activations: a model name "
                   f"({', '.join(MODELS)}, or one given to svf prepare --gguf), a local path or a "
                   "hub id (default: the model name stored in the field)")
    x.add_argument("--model-hint", type=non_empty_text, default=None, metavar="HINT",
                   help="the file's controlvector.model_hint (default: the model's Hugging Face "
                   "model_type, e.g. llama); with --method caa, giving it loads no model")
    x.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr (shown only when stderr is a terminal)")
    x.set_defaults(func=cmd_export, check=_check_export_args, parser=x)
    return p


def _check_export_args(args: argparse.Namespace) -> str | None:
    """``svf export --layers``: no repeats and no layer 0 (the format starts at block 1)."""
    layers = args.layers
    if layers is not None:
        if len(set(layers)) != len(layers):
            return f"argument --layers: layers must not repeat, got {layers}"
        if 0 in layers:
            return ("argument --layers: layer 0 cannot be written: a GGUF control vector starts at "
                    "block 1 (direction.N, N >= 1)")
    return None


def _check_prepare_args(args: argparse.Namespace) -> str | None:
    """``--name`` only with ``--gguf``; without ``--name``, a name derived from the file name."""
    if args.gguf is None:
        return "argument --name: only with --gguf" if args.name is not None else None
    if args.name is None:
        from ..models import gguf_model_name

        try:
            gguf_model_name(args.gguf)
        except SVFArgumentError as exc:
            return f"argument --gguf: {exc}"
    return None


def _check_train_args(args: argparse.Namespace) -> str | None:
    """Checks across ``svf train``'s options; the problem as argparse words it, or None."""
    if args.data is None and args.concept is not None:
        try:
            concept_name(args.concept)
        except argparse.ArgumentTypeError as exc:
            return f"argument --concept: {exc}"
    return check_layer_options(args)


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
    """Run one ``svf`` command; returns the exit status (1: an optional package is missing,
    2: bad arguments or input, 130: interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except MissingExtraError as e:  # the message names the extra to install
        print(f"svf {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (SVFArgumentError, ArtifactError, ValueError, OSError) as e:
        print(f"svf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"svf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
