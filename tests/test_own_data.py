"""A user trains a field on their own pairs: the JSONL loader and its errors, the pair forms
``train_field`` accepts, the small-data split, the undertrained warning, and ``svf train``
with ``--data`` and with every shipped ``--concept`` (tiny models, no download)."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import tiny_model

import svf
from svf.cli import commands as cli
from svf.data import TRAIN_PAIRS_NEEDED, min_split_size, pairs_needed
from svf.pair_data import as_pairs, load_pairs
from svf.training import TrainConfig, TrainReport, pair_features, train_field

WORDS = [
    "sun",
    "rain",
    "cake",
    "road",
    "song",
    "tree",
    "game",
    "lamp",
    "boat",
    "milk",
    "door",
    "bird",
]
SMALL = TrainConfig(r=8, de=3, m=12, max_epochs=3, patience=2)


def _pairs(n: int) -> list[svf.ContrastivePair]:
    return [
        svf.ContrastivePair(f"a lovely {WORDS[i % 12]} {i}", f"an awful {WORDS[i % 12]} {i}")
        for i in range(n)
    ]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model(char_tok):
    return tiny_model("llama", vocab_size=len(char_tok), layers=4)


# ------------------------------------------------------------------------------ the loader


def test_load_pairs_reads_objects_skips_blank_lines_and_ignores_other_keys(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '\ufeff{"positive": "good day", "negative": "bad day", "id": 7}\n\n   \n'
        '{"negative": "cold tea", "positive": "warm tea", "source": "me"}\n',
        encoding="utf-8",
    )
    assert load_pairs(path) == [
        svf.ContrastivePair("good day", "bad day"),
        svf.ContrastivePair("warm tea", "cold tea"),
    ]
    assert svf.load_pairs(str(path)) == load_pairs(path)


GOOD = '{"positive": "a", "negative": "b"}'
BAD_LINES = [
    ("not json", "not JSON"),
    ('{"positive": "a", "negative": "b"', "not JSON"),
    ('["a", "b"]', "expected a JSON object .* got an array"),
    ('"a pair"', "expected a JSON object .* got a string"),
    ("null", "expected a JSON object .* got null"),
    ('{"positive": "a"}', "missing key 'negative'"),
    (
        '{"Positive": "a", "Negative": "b"}',
        "missing key 'positive' .*keys found: 'Positive', 'Negative'",
    ),
    ('{"positive": 3, "negative": "b"}', "'positive' must be a string, got int 3"),
    ('{"positive": "a", "negative": null}', "'negative' must be a string, got NoneType"),
    ('{"positive": "", "negative": "b"}', "'positive' is empty"),
    ('{"positive": "a", "negative": " \\t "}', "'negative' is only whitespace"),
    ('{"positive": "same", "negative": "same"}', "'positive' and 'negative' are the same text"),
]


@pytest.mark.parametrize(("line", "words"), BAD_LINES)
def test_a_bad_line_is_one_error_naming_the_file_and_the_line(tmp_path, line, words):
    path = tmp_path / "pairs.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(svf.SVFArgumentError, match=rf"^{re.escape(str(path))}:3: {words}"):
        load_pairs(path)


def test_bad_files_name_the_file(tmp_path):
    raw = tmp_path / "latin1.jsonl"
    raw.write_bytes(GOOD.encode() + b'\n{"positive": "caf\xe9", "negative": "b"}\n')
    with pytest.raises(svf.SVFArgumentError, match=rf"^{re.escape(str(raw))}:2: not UTF-8"):
        load_pairs(raw)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    with pytest.raises(svf.SVFArgumentError, match=rf"^{re.escape(str(blank))}: no pairs"):
        load_pairs(blank)
    with pytest.raises(svf.SVFArgumentError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(svf.SVFArgumentError, match="is a directory"):
        load_pairs(tmp_path)
    with pytest.raises(svf.SVFArgumentError, match="path must be a path"):
        load_pairs(3)


# ------------------------------------------------------------------------------ pair forms


def test_as_pairs_accepts_every_form_and_names_a_bad_one():
    want = [svf.ContrastivePair("a", "b")] * 3
    assert (
        as_pairs(
            [svf.ContrastivePair("a", "b"), ("a", "b"), {"positive": "a", "negative": "b", "x": 1}]
        )
        == want
    )
    assert as_pairs((["a", "b"],)) == want[:1]
    for bad, words in [
        ([("a", "b", "c")], r"pairs\[0\]: a pair as a tuple"),
        ([("a", "b"), {"positive": "a"}], r"pairs\[1\]: missing key 'negative'"),
        (["a lovely day"], r"pairs\[0\] must be a svf.ContrastivePair"),
        ([("a", 2)], r"pairs\[0\]: 'negative' must be a string"),
        ([svf.ContrastivePair("a", "")], r"pairs\[0\]: 'negative' is empty"),
        ({"positive": "a", "negative": "b"}, "pairs must be a sequence"),
    ]:
        with pytest.raises(svf.SVFArgumentError, match=words):
            as_pairs(bad)


def test_train_field_takes_tuples_and_dicts_like_contrastive_pairs(model, char_tok):
    pairs = _pairs(24)
    kwargs = {"concept": "c", "train_layers": [1, 2], "config": SMALL, "progress": False}
    ref, _ = train_field(model, char_tok, pairs, **kwargs)
    for form in (
        [(p.positive, p.negative) for p in pairs],
        [{"positive": p.positive, "negative": p.negative} for p in pairs],
    ):
        field, _ = train_field(model, char_tok, form, **kwargs)
        assert all(
            torch.equal(a, b)
            for a, b in zip(field.scorer.state_dict().values(), ref.scorer.state_dict().values())
        )
        assert torch.equal(field.caa, ref.caa)


# ------------------------------------------------------------------------------ small data


def test_thirty_pairs_train_on_more_than_twelve(model, char_tok):
    _, report = train_field(
        model, char_tok, _pairs(30), concept="c", train_layers=[1, 2], config=SMALL, progress=False
    )
    assert (report.n_train, report.n_val, report.n_test) == (21, 3, 6)
    explicit = TrainConfig(r=8, de=3, m=12, max_epochs=1, fractions=(0.4, 0.1, 0.5))
    _, report = train_field(
        model, char_tok, _pairs(30), concept="c", train_layers=[1], config=explicit, progress=False
    )
    assert (report.n_train, report.n_val, report.n_test) == (
        12,
        3,
        15,
    )  # explicit fractions honoured


def test_too_few_pairs_say_how_many_and_why(model, char_tok):
    low = min_split_size(None)
    assert low == cli.min_train_pairs() == 6
    with pytest.raises(
        svf.SVFArgumentError,
        match=rf"pairs has {low - 1} pairs; training needs at least "
        rf"{low}: 2 each for the train, validation and test",
    ):
        pair_features(model, char_tok, _pairs(low - 1), [1], SMALL, progress=False)
    pair_features(model, char_tok, _pairs(low), [1], SMALL, progress=False)


# ------------------------------------------------------------------------------ undertrained


def _report(acc: float, linear: float, n_train: int) -> TrainReport:
    rows = [
        {"layer": 3, "scorer_acc": 0.9, "linear_acc": 0.9},
        {"layer": 4, "scorer_acc": acc, "linear_acc": linear},
    ]
    return TrainReport(per_layer=rows, n_train=n_train, n_val=10, n_test=50)


def test_undertrained_rules():
    enough = TRAIN_PAIRS_NEEDED
    assert _report(0.95, 0.97, enough).warning is None  # within test noise of the linear baseline
    assert "at every training layer" in _report(0.95, 0.97, enough).table()
    for acc, linear in ((0.58, 0.5), (0.8, 0.9)):
        report = _report(acc, linear, enough)
        assert report.undertrained_layers == [4]
        assert report.warning.startswith(
            f"warning: undertrained: held-out accuracy {acc:.2f} at layers [4]"
        )
        assert report.warning in report.table() and report.as_dict()["warning"] == report.warning
    # a scorer trained at inner positions too: behind the baseline at the last token only is
    # a trade, behind it at both kinds of position is undertrained; under 0.6 always is
    inner = {"positions": "inner", "inner_skip": 3, "max_positions": 16}
    for inner_acc, linear_inner, want in ((0.62, 0.51, []), (0.50, 0.60, [4]), (None, None, [4])):
        report = _report(0.8, 0.9, enough)
        report.training = inner
        report.per_layer[1].update(scorer_acc_inner=inner_acc, linear_acc_inner=linear_inner)
        assert report.undertrained_layers == want, (inner_acc, linear_inner)
        assert (report.warning is None) == (want == [])
    report = _report(0.58, 0.5, enough)
    report.training = inner
    report.per_layer[1].update(scorer_acc_inner=0.9, linear_acc_inner=0.5)
    assert report.undertrained_layers == [4] and "inside the texts" in report.warning
    few = _report(0.9, 0.9, 21)
    assert few.undertrained_layers == []
    assert few.warning == (
        f"warning: undertrained: trained on 21 pairs, the scorer needs about {enough} "
        f"(about {pairs_needed()} pairs in all with the default split)"
    )


def test_random_labels_give_the_undertrained_warning(model, char_tok):
    rng = random.Random(0)
    pairs = [
        (p.positive, p.negative) if rng.random() < 0.5 else (p.negative, p.positive)
        for p in _pairs(150)
    ]
    _, report = train_field(
        model,
        char_tok,
        pairs,
        concept="noise",
        train_layers=[0, 1, 2, 3],
        config=TrainConfig(r=8, de=3, m=12, max_epochs=5),
        progress=False,
    )
    assert report.n_train >= TRAIN_PAIRS_NEEDED  # enough pairs: the accuracy alone must warn
    assert report.warning is not None and report.warning.startswith(
        "warning: undertrained: held-out accuracy"
    )
    assert report.undertrained_layers and report.warning in report.table()


# ------------------------------------------------------------------------------ svf train


def _run(argv: list[str], loaded: tuple | None) -> tuple[int, str, str]:
    """``svf.cli.main(argv)`` with ``_load_model`` giving ``loaded`` (None: loading fails)."""

    def load(name):
        assert loaded is not None, "the model was loaded"
        return loaded

    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.object(cli, "_load_model", load),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


TINY_ARGS = ["--layers", "0-3", "--steer-layers", "1,2", "--max-epochs", "2"]


def test_svf_train_on_a_jsonl_file(model, char_tok, tmp_path):
    data = _write_jsonl(
        tmp_path / "kindness.jsonl",
        [
            {"positive": p.positive, "negative": p.negative, "id": i}
            for i, p in enumerate(_pairs(30))
        ],
    )
    code, out, err = _run(
        ["train", "--data", str(data), *TINY_ARGS, "--out", str(tmp_path / "f")], (model, char_tok)
    )
    assert code == 0, err
    assert "pairs: 21 train, 3 validation" in out
    warning = next(line for line in out.splitlines() if line.startswith("warning: undertrained: "))
    assert f"trained on 21 pairs, the scorer needs about {TRAIN_PAIRS_NEEDED}" in warning
    field = svf.SteeringField.load(tmp_path / "f", model)
    assert field.concept == "kindness"  # the file's stem
    code, out, err = _run(
        [
            "train",
            "--data",
            str(data),
            "--concept",
            "kind",
            "--pairs",
            "20",
            *TINY_ARGS,
            "--out",
            str(tmp_path / "g.safetensors"),
        ],
        (model, char_tok),
    )
    assert code == 0, err
    assert (
        "pairs: 14 train" in out
        and svf.SteeringField.load(tmp_path / "g.safetensors", model).concept == "kind"
    )


@pytest.mark.parametrize("concept", ["formality", "topic-ocean", "sentiment"])
def test_svf_train_every_shipped_concept(model, char_tok, tmp_path, concept):
    code, out, err = _run(
        ["train", "--concept", concept, "--pairs", "24", *TINY_ARGS, "--out", str(tmp_path / "f")],
        (model, char_tok),
    )
    assert code == 0, err
    assert "linear(CAA)" in out and svf.SteeringField.load(tmp_path / "f", model).concept == concept


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        (
            [GOOD] * 10 + ['{"positive": "a", "negative": 1}'],
            r"bad.jsonl:11: 'negative' must be a string",
        ),
        ([GOOD, "{oops"], r"bad.jsonl:2: not JSON"),
        (
            [GOOD] * 5,
            r"bad.jsonl: 5 pairs; training needs at least 6 \(2 each for the train, validation",
        ),
    ],
)
def test_svf_train_refuses_a_bad_file_before_loading_the_model(tmp_path, lines, words):
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out_dir = tmp_path / "out"
    code, out, err = _run(["train", "--data", str(data), *TINY_ARGS, "--out", str(out_dir)], None)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("svf train: error: ")
    assert re.search(words, err), err
    assert not out_dir.exists()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--concept", "kindness"], "argument --concept: unknown concept 'kindness'"),
        (["--data", "no-such.jsonl"], "argument --data: no such file"),
    ],
)
def test_svf_train_bad_options(tmp_path, argv, words):
    code, _, err = _run(["train", *argv, "--out", str(tmp_path / "f")], None)
    assert code == 2 and f"svf train: error: {words}" in err
