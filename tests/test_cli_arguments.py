"""Property tests of the ``svf`` command line's argument checks.

Random valid command lines must parse (``svf.cli.parse_args``: ``build_parser().parse_args`` plus
the checks across options) and give the values asked for. The same command lines with one
option broken must make ``main`` exit with status 2 and argparse's ``argument --x: ...`` message
naming that option, before any model is loaded, and write nothing. Errors found once the model
is loaded (layers out of range, a corrupt field file, a model directory without config.json) are
a few end-to-end cases on a tiny local model: status 2, a one-line message, nothing written.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from unittest import mock

import pytest
from helpers import random_field, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svf import models
from svf.artifacts import ArtifactError
from svf.cli import commands as cli
from svf.concepts import CONCEPTS
from svf.data import available_behaviors
from svf_kernels import SVFArgumentError

EXAMPLES = int(os.environ.get("SVF_PROPERTY_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COMMANDS = ("train", "generate", "demo", "eval")
SEED_LO, SEED_HI = -(2**63), 2**64 - 1
TRAIN_MIN_PAIRS = 6  # the adaptive split (svf.data.split_sizes): 2 each in train, val, test
DEMO_MIN_PAIRS = 12  # DEMO_FRACTIONS (0.5, 0.17, 0.33): val = floor(0.17 n) >= 2
BEHAVIORS = available_behaviors()
PARSER = cli.build_parser()  # parsing does not change it; building one takes milliseconds


# ------------------------------------------------------------------------------ file system


@pytest.fixture(scope="module")
def fs(tmp_path_factory) -> Path:
    """A directory with the obstacles a bad ``--out`` runs into."""
    base = tmp_path_factory.mktemp("cli-fs")
    (base / "afile").write_text("not a directory\n")
    (base / "adir.safetensors").mkdir()
    (base / "holder" / "field.safetensors").mkdir(parents=True)
    (base / "existing").mkdir()
    return base


def _tree(base: Path) -> list[tuple[str, int]]:
    """Every path below ``base`` with its size (a file written or changed shows up)."""
    return sorted((str(p.relative_to(base)), p.stat().st_size if p.is_file() else -1) for p in base.rglob("*"))


# ------------------------------------------------------------------------------ valid values

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=20)
NON_BLANK = TEXT.filter(lambda t: t.strip())


@st.composite
def layer_lists(draw, *, increasing: bool) -> list[int]:
    """Layer indices (strictly increasing when ``increasing``, else any order with repeats)."""
    if increasing:
        return sorted(draw(st.sets(st.integers(0, 40), min_size=1, max_size=12)))
    return draw(st.lists(st.integers(0, cli.MAX_LAYER), min_size=1, max_size=8))


@st.composite
def layer_text(draw, layers: list[int]) -> str:
    """``layers`` written as parse_layers reads them: runs as ``lo-hi`` or one by one, spaces."""
    parts, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        if j > i and draw(st.booleans()):
            k = draw(st.integers(i + 1, j))  # a run lo-hi, maybe only part of it
            parts.append(f"{layers[i]}-{layers[k]}")
            i = k + 1
        else:
            parts.append(str(layers[i]))
            i += 1
    sep = draw(st.sampled_from([",", ", ", " ,"]))
    return sep.join(parts)


def _valid(data, command: str, fs: Path) -> tuple[dict[str, str | list[str] | None], dict]:
    """(options -> value text, expected Namespace values) for a random valid command line."""
    opts: dict[str, str | list[str] | None] = {}
    want: dict = {}

    def maybe(option: str, strategy, text=str, attr: str | None = None):
        if data.draw(st.booleans(), label=f"give {option}"):
            value = data.draw(strategy, label=option)
            opts[option] = text(value)
            want[attr or option[2:].replace("-", "_")] = value

    if command == "train":
        concepts = [*CONCEPTS, *(f"mwe:{b}" for b in BEHAVIORS)]
        maybe("--concept", st.sampled_from(concepts))
        maybe("--model", NON_BLANK)
        _window(data, opts, want)
        maybe("--pairs", st.integers(TRAIN_MIN_PAIRS, 10**6))
        maybe("--max-epochs", st.integers(1, 10**4))
        maybe("--seed", st.integers(SEED_LO, SEED_HI))
        name = data.draw(st.from_regex(r"new_[a-z0-9_]{0,8}(\.safetensors)?", fullmatch=True), label="out name")
        where = data.draw(st.sampled_from([fs / "fresh", fs / "existing", fs, fs / "fresh" / "a" / "b"]),
                          label="out dir")
        out = data.draw(st.sampled_from([where / name, fs / "existing", fs / "holder" / "new.safetensors"]),
                        label="out")
        opts["--out"] = str(out)
        want["out"] = str(out)
    elif command == "generate":
        opts["--field"] = want["field"] = data.draw(NON_BLANK, label="--field")
        opts["--prompt"] = want["prompt"] = data.draw(NON_BLANK, label="--prompt")
        maybe("--strength", st.floats(allow_nan=False, allow_infinity=False), repr)
        maybe("--method", st.sampled_from(["svf", "caa"]))
        if data.draw(st.booleans(), label="give --layers"):
            layers = data.draw(layer_lists(increasing=False), label="layers")
            opts["--layers"] = ",".join(map(str, layers))
            want["layers"] = layers
        maybe("--model", NON_BLANK)
        maybe("--max-new-tokens", st.integers(1, 10**6))
        if data.draw(st.booleans(), label="--no-chat"):
            opts["--no-chat"] = None
            want["no_chat"] = True
    elif command == "demo":
        maybe("--pairs", st.integers(DEMO_MIN_PAIRS, 10**6))
        maybe("--prompts", st.integers(1, 10**3))
        maybe("--max-new-tokens", st.integers(1, 10**6))
        maybe("--seed", st.integers(SEED_LO, SEED_HI))
        _window(data, opts, want)
    else:  # eval
        for flag in ("--quick", "--no-mwe"):
            if data.draw(st.booleans(), label=flag):
                opts[flag] = None
                want[flag[2:].replace("-", "_")] = True
        if data.draw(st.booleans(), label="give --concepts"):
            concepts = data.draw(st.lists(st.sampled_from(CONCEPTS), min_size=1, max_size=4), label="concepts")
            opts["--concepts"] = list(concepts)
            want["concepts"] = list(concepts)
        maybe("--model", NON_BLANK)
        if data.draw(st.booleans(), label="give --out"):
            out = fs / data.draw(st.sampled_from(["existing", "fresh", "fresh/deeper"]), label="eval out")
            opts["--out"] = want["out"] = str(out)
        _window(data, opts, want)
    return opts, want


def _window(data, opts: dict, want: dict) -> None:
    """Maybe ``--layers`` (strictly increasing) and maybe ``--steer-layers`` (without repeats; a
    subset of ``--layers`` when that is given, else checked against the model's derived window
    once it is loaded); neither given: ``None``, derived from the model's depth."""
    want["layers"] = want["steer_layers"] = None
    layers = data.draw(layer_lists(increasing=True), label="layers")
    if data.draw(st.booleans(), label="give --layers"):
        opts["--layers"] = data.draw(layer_text(layers), label="--layers text")
        want["layers"] = layers
    if data.draw(st.booleans(), label="give --steer-layers"):
        steer = sorted(data.draw(st.sets(st.sampled_from(layers), min_size=1), label="steer"))
        opts["--steer-layers"] = data.draw(layer_text(steer), label="--steer-layers text")
        want["steer_layers"] = steer


def _argv(command: str, opts: dict[str, str | list[str] | None]) -> list[str]:
    """The command line; ``--x=value`` so that values starting with '-' stay values."""
    argv = [command]
    for option, value in opts.items():
        if value is None:
            argv.append(option)
        elif isinstance(value, list):
            argv += [option, *value]
        else:
            argv.append(f"{option}={value}")
    return argv


# ------------------------------------------------------------------------------ bad values

BAD_INT = st.sampled_from(["", "x", "1.5", "1e3", "0x10", "one", " "])


def _below(minimum: int):
    return st.one_of(st.integers(-(10**30), minimum - 1).map(str), BAD_INT)


BAD_LAYERS = st.one_of(
    st.integers(1, 40).map(lambda i: f"-{i}"),  # negative
    st.tuples(st.sampled_from(["", "0,", "1-2,"]), st.integers(0, 40), st.integers(1, 10))  # reversed
    .map(lambda t: f"{t[0]}{t[1] + t[2]}-{t[1]}"),
    st.integers(cli.MAX_LAYER + 1, 10**30).map(str),  # over the cap (and 0-huge would not fit in memory)
    st.integers(cli.MAX_LAYER + 1, 10**12).map(lambda i: f"0-{i}"),
    st.sampled_from(["", ",", " , ", "x", "1-2-3", "1.5", "3-", "-", "a-b", "2,,x", "1--3"]),
)


def _break(data, command: str, opts: dict, fs: Path) -> tuple[str, str | list[str]]:
    """(option, bad value) for one option of this command."""
    choices: dict[str, st.SearchStrategy] = {}
    layers = cli.parse_layers(opts["--layers"]) if "--layers" in opts else None
    windows = {
        "--layers": st.one_of(BAD_LAYERS,
                              st.lists(st.integers(0, 40), min_size=2, max_size=6)  # not increasing
                              .filter(lambda v: v != sorted(set(v))).map(lambda v: ",".join(map(str, v)))),
        "--steer-layers": st.one_of(BAD_LAYERS,
                                    st.integers(0, 40).map(lambda i: f"{i},{i}"),  # a repeat
                                    *([] if layers is None else [  # outside --layers
                                        st.integers(0, cli.MAX_LAYER).filter(lambda i: i not in layers)
                                        .map(lambda i: ",".join(map(str, sorted({*layers[:2], i}))))])),
    }
    if command == "train":
        choices = {
            "--concept": st.one_of(TEXT.filter(lambda t: t not in CONCEPTS
                                               and not t.startswith("mwe:")),
                                   TEXT.map(lambda t: f"mwe:{t}").filter(lambda t: t[4:] not in BEHAVIORS),
                                   st.sampled_from(["mwe:", "Sentiment", "sentiment ", "mwe"])),
            "--model": st.sampled_from(["", "   ", "a\0b"]),
            **windows,
            "--pairs": _below(TRAIN_MIN_PAIRS),
            "--max-epochs": _below(1),
            "--seed": st.one_of(st.integers(SEED_HI + 1, 10**30).map(str), st.integers(-(10**30), SEED_LO - 1).map(str),
                                BAD_INT),
            "--out": st.sampled_from(["", "afile", "afile/sub", "afile/x.safetensors", "adir.safetensors",
                                      "holder", "afile/deeper/x.safetensors"]).map(lambda p: str(fs / p) if p else p),
        }
    elif command == "generate":
        choices = {
            "--field": st.sampled_from(["", "  "]),
            "--prompt": st.text(" \t\n", max_size=3),
            "--strength": st.one_of(st.sampled_from(["nan", "inf", "-inf", "NaN", "1e999", "-1e400", "x", ""]),
                                    TEXT.filter(lambda t: not _is_float(t))),
            "--method": TEXT.filter(lambda t: t not in ("svf", "caa")),
            "--layers": BAD_LAYERS,
            "--model": st.sampled_from(["", " "]),
            "--max-new-tokens": _below(1),
        }
    elif command == "demo":
        choices = {
            "--pairs": _below(DEMO_MIN_PAIRS),
            "--prompts": _below(1),
            "--max-new-tokens": _below(1),
            "--seed": st.integers(SEED_HI + 1, 10**40).map(str) | BAD_INT,
            **windows,
        }
    else:
        choices = {
            "--concepts": st.one_of(st.just([]), st.lists(TEXT.filter(lambda t: t not in CONCEPTS
                                                                       and not t.startswith("-")),
                                                          min_size=1, max_size=2)
                                    .map(lambda bad: [*opts.get("--concepts", []), *bad])),
            "--model": st.sampled_from(["", "\t"]),
            "--out": st.sampled_from(["", "afile", "afile/sub", "existing/../afile"]).map(
                lambda p: str(fs / p) if p else p),
            **windows,
        }
    option = data.draw(st.sampled_from(sorted(choices)), label="broken option")
    return option, data.draw(choices[option], label=f"bad {option}")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded for a command line with a bad option")


@contextlib.contextmanager
def _nothing_loaded():
    with mock.patch.object(cli, "_load_model", _no_model), mock.patch.object(models, "load_model", _no_model), \
            mock.patch.object(models, "prepare_model", _no_model):
        yield


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit status, stdout, stderr); SystemExit gives its code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------ properties


@pytest.mark.parametrize("command", COMMANDS)
@SETTINGS
@given(data=st.data())
def test_valid_command_lines_parse_to_their_values(fs, command, data):
    opts, want = _valid(data, command, fs)
    before = _tree(fs)
    args = cli.parse_args(_argv(command, opts), PARSER)
    assert args.command == command
    for name, value in want.items():
        assert getattr(args, name) == value, name
    assert _tree(fs) == before


@pytest.mark.parametrize("command", COMMANDS)
@SETTINGS
@given(data=st.data())
def test_one_bad_option_exits_2_naming_it_and_writes_nothing(fs, command, data):
    opts, _ = _valid(data, command, fs)
    option, bad = _break(data, command, opts, fs)
    opts = {**opts, option: bad}
    before = _tree(fs)
    with _nothing_loaded(), mock.patch.object(cli, "build_parser", lambda: PARSER):
        code, out, err = _run(_argv(command, opts))
    assert code == 2, (option, bad, err)
    assert f"svf {command}: error: argument {option}" in err, (option, bad, err)
    assert "Traceback" not in err and out == ""
    assert _tree(fs) == before


def test_pair_minimums_are_what_training_needs():
    from svf.cli.demo import DEMO_FRACTIONS
    from svf.data import split_sizes
    from svf.training import TrainConfig

    for fractions, low in ((TrainConfig().fractions, TRAIN_MIN_PAIRS), (DEMO_FRACTIONS, DEMO_MIN_PAIRS)):
        assert min(split_sizes(low, fractions)) >= 2
        assert min(split_sizes(low - 1, fractions)) < 2
    assert cli.min_train_pairs() == TRAIN_MIN_PAIRS and cli.min_demo_pairs() == DEMO_MIN_PAIRS


@pytest.mark.parametrize(("text", "layers"), [("2-4,7", [2, 3, 4, 7]), (" 0 - 2 ", [0, 1, 2]), ("3,3", [3, 3]),
                                              ("5,1", [5, 1]), ("4-4", [4]), ("1,,2,", [1, 2])])
def test_parse_layers_valid(text, layers):
    assert cli.parse_layers(text) == layers


@pytest.mark.parametrize(("text", "words"), [("5-3", "reversed"), ("0,5-3", "reversed"), ("-1", "negative"), ("2,-4", "negative"),
                                             ("1--3", "negative"), ("", "empty"), ("x", "'x'"),
                                             ("0-99999999999", "over")])
def test_parse_layers_refuses_with_a_reason(text, words):
    with pytest.raises(cli.argparse.ArgumentTypeError, match=words):
        cli.parse_layers(text)


@pytest.mark.parametrize(("command", "out", "words"), [
    ("train", "afile", "exists and is not a directory (a path not ending in .safetensors"),
    ("train", "afile/x.safetensors", "is a file, not a directory"),
    ("train", "afile/a/b", "is a file, not a directory"),
    ("train", "adir.safetensors", "is a directory, not a field file"),
    ("train", "holder", "holder/field.safetensors' is a directory"),
    ("eval", "afile", "exists and is not a directory"),
    ("eval", "afile/r", "is a file, not a directory"),
])
def test_bad_out_paths_say_why(fs, command, out, words):
    argv = [command, "--out", str(fs / out)]
    with _nothing_loaded():
        code, _, err = _run(argv)
    assert code == 2 and "argument --out: " in err and words in err, err


def test_out_in_a_read_only_directory(tmp_path, monkeypatch):
    """The writability check itself (root writes anywhere, so ``os.access`` is made to say no)."""
    from svf.cli import options as cli_options

    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(cli_options.os, "access", lambda p, mode: False if os.fspath(p) == str(ro)
                        else real_access(p, mode))
    code, _, err = _run(["train", "--out", str(ro / "sub" / "f.safetensors")])
    assert code == 2 and "argument --out: " in err and "is not writable" in err, err
    assert list(ro.iterdir()) == []


# ------------------------------------------------------------------------------ library errors


@pytest.mark.parametrize(("exc", "code", "words"), [
    (SVFArgumentError("layers [9] out of range"), 2, "svf train: error: layers [9] out of range"),
    (ArtifactError("f.safetensors: truncated"), 2, "svf train: error: f.safetensors: truncated"),
    (ValueError("bad value"), 2, "svf train: error: bad value"),
    (FileNotFoundError(2, "No such file or directory", "m.gguf"), 2, "svf train: error: [Errno 2]"),
    (PermissionError(13, "Permission denied", "/x"), 2, "svf train: error: [Errno 13] Permission denied"),
    (KeyboardInterrupt(), 130, "svf train: interrupted"),
])
def test_library_errors_are_one_line_and_status_2(fs, exc, code, words):
    def fail(*args, **kwargs):
        raise exc

    before = _tree(fs)
    with mock.patch.object(cli, "_load_model", fail):
        got, out, err = _run(["train", "--out", str(fs / "fresh" / "f"), "--pairs", "40"])
    assert got == code
    assert err.startswith(words) and err.count("\n") == 1 and out == ""
    assert _tree(fs) == before


@pytest.mark.parametrize(("exc", "code"), [(FileNotFoundError("no GGUF file"), 2), (OSError("disk full"), 2),
                                           (KeyboardInterrupt(), 130)])
def test_prepare_errors(monkeypatch, capsys, exc, code):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(models, "prepare_model", fail)
    assert cli.main(["prepare"]) == code
    err = capsys.readouterr().err
    assert err.startswith("svf prepare: ") and err.count("\n") == 1


# ------------------------------------------------------------------------------ tiny model, end to end


@pytest.fixture(scope="module")
def tiny_field(tiny_dir, char_tok, tmp_path_factory) -> Path:
    """A (random) field for the tiny model, steering layers 1 and 2."""
    model = tiny_model("llama", vocab_size=len(char_tok))
    return random_field(model, steer_layers=(1, 2)).save(tmp_path_factory.mktemp("field") / "f.safetensors")


@pytest.mark.parametrize(("layers", "steer", "named"), [
    ("0-9", None, "--layers: layers [4, 5, 6, 7, 8, 9] out of range"),
    ("2,4", "2", "--layers: layers [4] out of range"),
    ("7", None, "--layers: layers [7] out of range"),
])
def test_train_layers_out_of_range_for_the_model(tiny_dir, tmp_path, layers, steer, named):
    out = tmp_path / "out"
    argv = ["train", "--model", str(tiny_dir), "--layers", layers, "--pairs", "40", "--out", str(out)]
    code, stdout, err = _run(argv + (["--steer-layers", steer] if steer else []))
    assert code == 2 and f"svf train: error: argument {named}" in err, err
    assert "the model has 4 decoder layers" in err and "Traceback" not in err and stdout == ""
    assert not out.exists()


def test_generate_layers_out_of_range_for_the_model(tiny_dir, tiny_field):
    code, out, err = _run(["generate", "--model", str(tiny_dir), "--field", str(tiny_field), "--prompt", "hi",
                           "--layers", "2-5", "--max-new-tokens", "2"])
    assert code == 2 and "svf generate: error: argument --layers: layers [4, 5] out of range" in err, err
    assert out == ""


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "directory", "missing"])
def test_generate_with_a_bad_field_names_it_before_loading_the_model(tiny_field, tmp_path, damage):
    good = tiny_field.read_bytes()
    field = tmp_path / "bad.safetensors"
    if damage == "garbage":
        field.write_bytes(b"\x07not a safetensors file at all" * 3)
    elif damage == "empty":
        field.write_bytes(b"")
    elif damage == "truncated":
        field.write_bytes(good[: len(good) // 2])
    elif damage == "directory":  # a directory argument names <dir>/field.safetensors
        (tmp_path / "fielddir").mkdir()
        (tmp_path / "fielddir" / "field.safetensors").write_bytes(good[:100])
        field = tmp_path / "fielddir"
    with _nothing_loaded():
        code, out, err = _run(["generate", "--field", str(field), "--prompt", "hi"])
    shown = field / "field.safetensors" if damage == "directory" else field
    assert code == 2 and err.startswith(f"svf generate: error: {shown}:"), err
    assert err.count("\n") == 1 and out == ""


def test_train_with_a_model_directory_without_config(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    out = tmp_path / "out.safetensors"
    code, stdout, err = _run(["train", "--model", str(tmp_path / "not-a-model"), "--pairs", "40", "--out", str(out)])
    assert code == 2 and "svf train: error:" in err and "not-a-model" in err and "config.json" in err, err
    assert not out.exists() and stdout == ""


@pytest.mark.parametrize(("argv", "named", "loaded"), [
    (["--layers", "2-5"], "argument --layers: layers [4, 5] out of range: the model has 4 decoder layers", True),
    (["--steer-layers", "0"], ("argument --steer-layers: layers [0] are not among the training layers [2] "
                               "derived from the model's 4 decoder layers"), True),
    (["--steer-layers", "9"], "argument --steer-layers: layers [9] out of range", True),
    (["--layers", "1-3", "--steer-layers", "3,7"], "argument --steer-layers: layers [7] are not among --layers",
     False),
    (["--layers", "3,1"], "argument --layers: layers must be strictly increasing", False),
    (["--layers", "1-3", "--steer-layers", "2,2"], "argument --steer-layers: layers must not repeat", False),
    (["--layers", "x"], "argument --layers: bad layer list 'x'", False),
])
@pytest.mark.parametrize("command", ["eval", "demo"])
def test_eval_and_demo_layers_are_checked(tiny_dir, tmp_path, monkeypatch, command, argv, named, loaded):
    """``svf eval --quick`` and ``svf demo`` with bad ``--layers`` / ``--steer-layers``: status 2 and
    a message naming the option, nothing written; argparse refuses what it can see without the
    model (usage and message), the rest is one line once the model is loaded (the demo's model
    is the tiny one here)."""
    from svf.cli import demo

    monkeypatch.setattr(demo, "load_model", lambda: models.load_model(tiny_dir))
    out = tmp_path / "report"
    extra = ["--quick", "--model", str(tiny_dir), "--out", str(out)] if command == "eval" else []
    if loaded:
        code, _, err = _run([command, *extra, *argv])
        assert err.count("\n") == 1
    else:
        with _nothing_loaded():
            code, _, err = _run([command, *extra, *argv])
    assert code == 2 and f"svf {command}: error: {named}" in err, err
    assert "Traceback" not in err and not out.exists()


def test_eval_layer_options_parse():
    args = cli.parse_args(["eval", "--quick", "--layers", "7-12", "--steer-layers", "9,11,12"], PARSER)
    assert (args.layers, args.steer_layers, args.quick) == ([7, 8, 9, 10, 11, 12], [9, 11, 12], True)
    args = cli.parse_args(["eval", "--quick"], PARSER)
    assert args.layers is None and args.steer_layers is None  # derived from the model once loaded
    args = cli.parse_args(["demo", "--steer-layers", "16,18"], PARSER)
    assert args.layers is None and args.steer_layers == [16, 18]
    args = cli.parse_args(["train", "--out", "x.safetensors"], PARSER)
    assert args.layers is None and args.steer_layers is None


@pytest.mark.parametrize("command", ["train", "eval", "demo"])
def test_layer_help_says_the_default_is_derived(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "derived from the model's depth" in text and "12-21 of the default model's 30 layers" in text
    assert "--steer-layers" in text
