"""Training the scorer at positions inside the pair texts (``TrainConfig.positions="inner"``):
the extractor, the last-token mode left as it was, training, the report, the field artifact and
the command line."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model

import svf
from svf.activations import (
    inner_columns,
    inner_positions,
    last_token_activations,
    position_activations,
)
from svf.data import ContrastivePair, training_split
from svf.steering_field import SteeringField
from svf.tokenization import encode_texts, pad_left
from svf.training import (
    Features,
    PositionFeatures,
    TrainConfig,
    inner_accuracy,
    pair_features,
    scorer_inner_accuracy,
    train_field,
    train_scorer,
)
from svf_kernels import SVFArgumentError

SMALL = {"r": 8, "de": 3, "m": 12, "max_epochs": 2, "seed": 4}
WORDS = ["sun", "rain", "cake", "road", "song", "tree", "game", "lamp", "boat", "milk"]


def _pairs(n=50):
    return [ContrastivePair(f"a lovely {w} {i}, I say", f"an awful {w} {i}, they say")
            for i, w in enumerate((WORDS * (n // len(WORDS) + 1))[:n])]


@pytest.fixture(scope="module")
def model(char_tok):
    return tiny_model("llama", vocab_size=len(char_tok))


# ----------------------------------------------------------------------------- extraction


def test_inner_position_rule():
    assert inner_positions(0, 3, 16) == []
    assert inner_positions(2, 3, 16) == [1]  # not past the skip: the last token only
    assert inner_positions(4, 3, 16) == [3]
    assert inner_positions(10, 3, 16) == [3, 4, 5, 6, 7, 8, 9]
    assert inner_positions(10, 0, 16) == list(range(10))
    assert inner_positions(30, 3, 1) == [29]
    capped = inner_positions(40, 3, 16)
    assert len(capped) == 16 and capped[0] == 3 and capped[-1] == 39
    gaps = [b - a for a, b in itertools.pairwise(capped)]
    assert min(gaps) >= 2 and max(gaps) - min(gaps) <= 1  # evenly spaced, no repeats


TEXTS = ["ab", "tiny", "a short text", "a much longer text than the others, read at sixteen places"]
LAYERS = [0, 2]  # not the last layer: hidden_states[-1] is after the final norm


def _plain(model, tok, text):
    """Layer outputs ``[T, len(LAYERS), d]`` of one unpadded text."""
    enc = torch.tensor([encode_texts(tok, [text])[0]])
    with torch.no_grad():
        hs = model(input_ids=enc, output_hidden_states=True).hidden_states
    return torch.stack([hs[i + 1][0] for i in LAYERS], 1)


def test_inner_positions_are_a_plain_forward_pass_at_those_tokens(model, char_tok):
    at = position_activations(model, char_tok, TEXTS, LAYERS, skip=3, max_positions=16, batch_size=4,
                              progress=False)
    assert at.text.tolist() == sorted(at.text.tolist())
    lengths = [len(t) for t in TEXTS]  # one token per character
    assert [at.position[at.text == i].tolist() for i in range(len(TEXTS))][:3] == [
        [1], [3], list(range(3, lengths[2]))]
    for i, text in enumerate(TEXTS):
        rows = at.text == i
        got = at.position[rows].tolist()
        assert got == inner_positions(lengths[i], 3, 16) and got[-1] == lengths[i] - 1
        assert torch.allclose(at.hidden[rows], _plain(model, char_tok, text)[got], atol=1e-5)
    assert at.is_last().sum() == len(TEXTS) and at.is_last()[-1]
    # each text's last row is last_token_activations' row, to the bit
    last = last_token_activations(model, char_tok, TEXTS, LAYERS, batch_size=4, progress=False)
    assert torch.equal(at.hidden[at.is_last()], last)


@pytest.mark.parametrize("side", ["left", "right"])
def test_inner_columns_follow_the_padding(model, char_tok, side):
    """The batch's columns come from its attention mask: left and right padding alike."""
    rows = encode_texts(char_tok, TEXTS)
    ids, mask = pad_left(rows, 0)
    if side == "right":
        T = ids.shape[1]
        ids = torch.stack([torch.cat([torch.tensor(r), torch.zeros(T - len(r), dtype=torch.long)]) for r in rows])
        mask = torch.stack([torch.arange(T) < len(r) for r in rows]).long()
    r, c = inner_columns(mask, 3, 16)
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    got = torch.stack([hs[i + 1][r, c] for i in LAYERS], 1)
    want = torch.cat([_plain(model, char_tok, t)[inner_positions(len(t), 3, 16)] for t in TEXTS])
    assert torch.allclose(got, want, atol=1e-5)


# ------------------------------------------------------------------------- pair features


def test_last_mode_features_are_last_token_activations(model, char_tok):
    pairs = _pairs()
    last = pair_features(model, char_tok, pairs, [1, 2], TrainConfig(positions="last"), progress=False)
    inner = pair_features(model, char_tok, pairs, [1, 2], TrainConfig(positions="inner"), progress=False)
    parts = training_split(pairs, None, 0)
    for name, part in zip(("train", "val", "test"), parts):
        n = len(part)
        want = last_token_activations(model, char_tok, [p.positive for p in part] + [p.negative for p in part],
                                      [1, 2], progress=False)
        for feats in (last, inner):
            f = getattr(feats, name)
            assert torch.equal(f.pos, want[:n]) and torch.equal(f.neg, want[n:]), name
    # "last": train and validation hold the last tokens only, the test split also inner ones
    assert last.train.pos_inner is None and last.val.neg_inner is None and last.test.pos_inner is not None
    assert (last.positions, inner.positions) == ("last", "inner")


def test_inner_rows_stay_with_their_pair(model, char_tok):
    pairs = _pairs()
    feats = pair_features(model, char_tok, pairs, [1, 2], TrainConfig(positions="inner"), progress=False)
    for f, part in zip((feats.train, feats.val, feats.test), training_split(pairs, None, 0)):
        for side, texts in ((f.pos_inner, [p.positive for p in part]), (f.neg_inner, [p.negative for p in part])):
            assert side.pair.tolist() == sorted(side.pair.tolist()) and int(side.pair.max()) == len(part) - 1
            for k in (0, len(part) - 1):
                rows = side.pair == k
                assert int(rows.sum()) == len(inner_positions(len(texts[k]), 3, 16))
                alone = position_activations(model, char_tok, [texts[k]], [1, 2], progress=False)
                assert torch.allclose(side.hidden[rows], alone.hidden, atol=1e-5)
                assert side.last[rows].tolist() == alone.is_last().tolist()


# ------------------------------------------------------------------- training and report


def _two_signals(n, per_text=5, L=2, d=16, seed=0):
    """Last tokens separated along e0, positions inside the texts along e1 only."""
    g = torch.Generator().manual_seed(seed)

    def side(sign):
        last = torch.randn(n, L, d, generator=g) + 3 * sign * torch.eye(d)[0]
        inner = torch.randn(n, per_text - 1, L, d, generator=g) + 3 * sign * torch.eye(d)[1]
        hidden = torch.cat([inner, last[:, None]], 1).reshape(-1, L, d)
        pair = torch.arange(n).repeat_interleave(per_text)
        is_last = (torch.arange(per_text) == per_text - 1).repeat(n)
        return last, PositionFeatures(hidden, pair, is_last)

    (pos, pos_in), (neg, neg_in) = side(1.0), side(-1.0)
    return Features(pos, neg, pos_in, neg_in)


def _part(f, lo, hi):
    def sub(p):
        keep = (p.pair >= lo) & (p.pair < hi)
        return PositionFeatures(p.hidden[keep], p.pair[keep] - lo, p.last[keep])

    return Features(f.pos[lo:hi], f.neg[lo:hi], sub(f.pos_inner), sub(f.neg_inner))


def test_inner_training_learns_the_inner_positions_and_stops_on_them():
    data = _two_signals(160)
    tr, va, te = _part(data, 0, 100), _part(data, 100, 130), _part(data, 130, 160)
    cfg = {"r": 8, "m": 16, "seed": 0, "max_epochs": 15}
    last, _, _ = train_scorer(tr, va, [3, 4], TrainConfig(**cfg, positions="last"), progress=False)
    inner, history, best = train_scorer(tr, va, [3, 4], TrainConfig(**cfg, positions="inner"), progress=False)
    assert max(scorer_inner_accuracy(last, te)) < 0.75  # e1 is noise to a last-token scorer
    assert min(scorer_inner_accuracy(inner, te)) > 0.95
    # early stopping watched the validation loss at the same (inner) positions
    h, pos, y = va.flat("inner")
    assert len(y) == 2 * 30 * 5 * 2
    with torch.no_grad():
        loss = float(F.binary_cross_entropy_with_logits(inner(h, pos), y))
    assert history[best]["val_loss"] == pytest.approx(loss, rel=1e-5)
    with torch.no_grad():
        assert float(F.binary_cross_entropy_with_logits(inner(*va.flat()[:2]), va.flat()[2])) != pytest.approx(loss)


def test_inner_accuracy_excludes_last_tokens_and_weighs_texts_equally():
    def side(values, pairs, last):
        hidden = torch.tensor(values, dtype=torch.float)[:, None, None].expand(-1, 1, 2).contiguous()
        return PositionFeatures(hidden, torch.tensor(pairs), torch.tensor(last))

    # positives: text 0 right at 9 inner positions, text 1 wrong at its 1; every last token wrong
    pos = side([1.0] * 9 + [-1.0, -1.0, -1.0], [0] * 10 + [1, 1], [False] * 9 + [True, False, True])
    neg = side([-1.0, 1.0, -1.0, 1.0], [0, 0, 1, 1], [False, True, False, True])
    feats = Features(torch.zeros(2, 1, 2), torch.zeros(2, 1, 2), pos, neg)
    assert inner_accuracy(feats, lambda h, j: h[:, 0] > 0) == [0.75]  # (1 + 0 + 1 + 1) / 4 texts
    assert inner_accuracy(Features(feats.pos, feats.neg), lambda h, j: h[:, 0] > 0) == [None]


def test_a_field_trained_at_inner_positions_steers_and_round_trips(model, char_tok, tmp_path):
    pairs = _pairs()
    config = TrainConfig(**SMALL, positions="inner")
    field, report = train_field(model, char_tok, pairs, concept="c", train_layers=[1, 2], steer_layers=[1, 2],
                                config=config, progress=False)
    assert report.training == field.metrics["training"] == {"positions": "inner", "inner_skip": 3,
                                                            "max_positions": 16}
    for row in report.per_layer:
        assert {"scorer_acc", "linear_acc", "scorer_acc_inner", "linear_acc_inner"} <= set(row)
        assert 0.0 <= row["scorer_acc_inner"] <= 1.0 and 0.0 <= row["linear_acc_inner"] <= 1.0
    assert "scorer(inner)" in report.table() and "trained at inner positions" in report.table()
    # the CAA vector and the norms are the last-token ones, the same as a "last" field's
    plain, plain_report = train_field(model, char_tok, pairs, concept="c", train_layers=[1, 2], steer_layers=[1, 2],
                                      config=TrainConfig(**SMALL, positions="last"), progress=False)
    for name in ("caa", "mean_norms", "robust_norms"):
        assert torch.equal(getattr(field, name), getattr(plain, name)), name
    assert not torch.equal(field.scorer.W1, plain.scorer.W1)
    assert [r["linear_acc_inner"] for r in report.per_layer] == [
        r["linear_acc_inner"] for r in plain_report.per_layer]
    assert plain.metrics["training"]["positions"] == "last"

    path = field.save(tmp_path / "inner")
    loaded = SteeringField.load(path, model)
    want, got = field.tensors(), loaded.tensors()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert loaded.metrics["training"]["positions"] == "inner"
    assert loaded.metrics["per_layer"] == report.as_dict()["per_layer"]

    prompts = ["hello there", "the road"]
    base = svf.generate(model, char_tok, prompts, max_new_tokens=8)
    with svf.steer(model, loaded, strength=2.0):
        steered = svf.generate(model, char_tok, prompts, max_new_tokens=8)
    assert steered != base
    assert svf.generate(model, char_tok, prompts, max_new_tokens=8) == base  # undone on exit


def test_last_mode_ignores_inner_rows(model, char_tok):
    """A "last" field is the same from features with or without inner positions."""
    pairs = _pairs()
    with_inner = pair_features(model, char_tok, pairs, [1, 2], TrainConfig(**SMALL, positions="inner"),
                               progress=False)
    last = TrainConfig(**SMALL, positions="last")
    a, ra = train_field(model, char_tok, pairs, concept="c", train_layers=[1, 2], config=last,
                        features=with_inner, progress=False)
    b, rb = train_field(model, char_tok, pairs, concept="c", train_layers=[1, 2], config=last,
                        progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.tensors().values(), b.tensors().values()))
    assert ra.per_layer == rb.per_layer and ra.history == rb.history


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"positions": "all"}, "TrainConfig.positions"),
    ({"positions": "last:4"}, "TrainConfig.positions"),
    ({"positions": None}, "TrainConfig.positions"),
    ({"positions": ["inner"]}, "TrainConfig.positions"),
    ({"inner_skip": -1}, "TrainConfig.inner_skip"),
    ({"inner_skip": 1.5}, "TrainConfig.inner_skip"),
    ({"inner_skip": True}, "TrainConfig.inner_skip"),
])
def test_bad_values_name_the_field(kwargs, name):
    with pytest.raises(SVFArgumentError, match=name):
        TrainConfig(**kwargs)
    config = TrainConfig()
    for key, value in kwargs.items():
        setattr(config, key, value)  # edited after construction: validate() catches it too
    with pytest.raises(SVFArgumentError, match=name):
        config.validate()


def test_features_must_match_the_config(model, char_tok):
    pairs = _pairs()
    last = pair_features(model, char_tok, pairs, [1], TrainConfig(**SMALL, positions="last"), progress=False)
    with pytest.raises(SVFArgumentError, match="TrainConfig.positions"):
        train_field(model, char_tok, pairs, concept="c", train_layers=[1], features=last,
                    config=TrainConfig(**SMALL, positions="inner"), progress=False)
    with pytest.raises(SVFArgumentError, match="inner_skip"):
        train_field(model, char_tok, pairs, concept="c", train_layers=[1], features=last,
                    config=TrainConfig(**SMALL, positions="last", inner_skip=5), progress=False)
    with pytest.raises(SVFArgumentError, match="inner positions"):
        train_scorer(last.train, last.val, [1], TrainConfig(**SMALL, positions="inner"), progress=False)
    with pytest.raises(SVFArgumentError, match="max_positions"):
        position_activations(model, char_tok, ["some text"], [1], max_positions=0)


# ---------------------------------------------------------------------------- command line


def test_svf_train_positions_flag(tiny_dir, tmp_path, capsys):
    """The last token by default (the library's default), inner positions with ``--positions inner``."""
    from svf.artifacts import load_field
    from svf.cli.commands import main

    assert TrainConfig().positions == "last"
    args = ["train", "--model", str(tiny_dir), "--layers", "1-2", "--pairs", "40", "--max-epochs", "1", "--no-progress"]
    out = tmp_path / "f.safetensors"
    assert main([*args, "--positions", "inner", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained at inner positions" in printed and "scorer(inner)" in printed
    assert load_field(out)[1]["metrics"]["training"]["positions"] == "inner"
    assert main([*args, "--out", str(tmp_path / "last.safetensors")]) == 0
    assert "trained at inner positions" not in capsys.readouterr().out
    assert load_field(tmp_path / "last.safetensors")[1]["metrics"]["training"]["positions"] == "last"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--positions", "everywhere", "--out", str(tmp_path / "g")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--positions" in err and "'last'" in err and "'inner'" in err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--positions {last,inner}" in capsys.readouterr().out
