"""The ``svf`` command line on a tiny local model (no download)."""

import pytest

from svf.cli.commands import main, parse_layers


def test_parse_layers():
    assert parse_layers("2-4,7") == [2, 3, 4, 7]


def test_train_then_generate(tiny_dir, tmp_path, capsys):
    out = tmp_path / "field"
    code = main(["train", "--model", str(tiny_dir), "--layers", "0-3", "--steer-layers", "1,2",
                 "--pairs", "40", "--max-epochs", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "linear(CAA)" in printed and (out / "field.safetensors").exists()
    code = main(["generate", "--model", str(tiny_dir), "--field", str(out), "--prompt", "hello",
                 "--strength", "2", "--max-new-tokens", "5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "unsteered" in printed and "steered" in printed
    rows = [line for line in printed.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 5  # one row per generated token, each with two scores


def test_generate_with_a_missing_field_fails_cleanly(tiny_dir, tmp_path, capsys):
    code = main(["generate", "--model", str(tiny_dir), "--field", str(tmp_path / "nope"), "--prompt", "x"])
    assert code == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "train", "steer"), [
    ([], [2], [2]),  # derived from the model's 4 layers (svf.layer_windows.default_layers)
    (["--steer-layers", "2"], [2], [2]),
    (["--layers", "0-3"], [0, 1, 2, 3], [0, 1, 2, 3]),  # --layers alone: its first 4 layers steer
    (["--layers", "1-3", "--steer-layers", "3"], [1, 2, 3], [3]),
])
def test_train_layer_defaults(tiny_dir, tmp_path, capsys, argv, train, steer):
    from svf.artifacts import load_field

    out = tmp_path / "f.safetensors"
    assert main(["train", "--model", str(tiny_dir), "--pairs", "40", "--max-epochs", "1", "--out", str(out),
                 *argv]) == 0
    _, meta = load_field(out)
    assert (list(meta["train_layers"]), list(meta["steer_layers"])) == (train, steer)


def test_train_on_300_pairs_holds_out_a_fifth_not_half(tiny_dir, tmp_path, capsys):
    """`svf train --pairs 300`: 10 % validation and 20 % test (each at most 100 pairs), every
    other pair trains the scorer."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(f'{{"positive": "good {i}", "negative": "bad {i}"}}\n' for i in range(400)))
    out = tmp_path / "f.safetensors"
    assert main(["train", "--model", str(tiny_dir), "--data", str(data), "--pairs", "300",
                 "--layers", "1-2", "--max-epochs", "1", "--no-progress", "--out", str(out)]) == 0
    assert "pairs: 210 train, 30 validation (early stopping; CAA uses train + validation), 60 test" in (
        capsys.readouterr().out)
