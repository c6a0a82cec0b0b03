"""``svf export --gguf OUT.gguf FIELD``: a trained field as a GGUF control vector, on a tiny local
model (no download). Each written file is checked with the ``gguf`` package's reader and read
back by ``svf.load_control_vector``; bad command lines exit with status 2 and write nothing."""

from __future__ import annotations

import contextlib
import io

import gguf
import numpy as np
import pytest
from helpers import random_field

from svf.cli import commands as cli
from svf.control_vectors import control_vector_from_field, load_control_vector
from svf.models import load_model


@pytest.fixture(scope="module")
def field_dir(tmp_path_factory, tiny_dir):
    model, _ = load_model(tiny_dir)
    field = random_field(model, layers=range(4), steer_layers=[1, 2])
    field.model_name = str(tiny_dir)  # as svf train --model stores it
    path = tmp_path_factory.mktemp("field") / "field"
    field.save(path)
    return path


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _fields(path):
    reader = gguf.GGUFReader(path)
    keys = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    types = {k: f.types[0] for k, f in reader.fields.items()}
    tensors = {t.name: (t.tensor_type.name, [int(n) for n in t.shape], np.array(t.data))
               for t in reader.tensors}
    return keys, types, tensors


def test_export_writes_the_format_and_reads_back_as_the_field_in_memory(tmp_path, tiny_dir, field_dir):
    from svf.steering_field import SteeringField

    out = tmp_path / "sub" / "cv.gguf"
    code, printed, err = _run(["export", "--gguf", str(out), str(field_dir), "--no-progress"])
    assert code == 0, err
    keys, types, tensors = _fields(out)
    field = SteeringField.load(field_dir)
    assert keys == {
        "general.architecture": "controlvector", "controlvector.model_hint": "llama",
        "controlvector.layer_count": 2, "controlvector.svf.concept": "test",
        "controlvector.svf.method": "caa", "controlvector.svf.strength": field.default_strength,
        "controlvector.svf.unit": "mean_norm", "controlvector.svf.field_model": str(tiny_dir)}
    assert types["controlvector.layer_count"] == gguf.GGUFValueType.INT32
    assert {n: (t, s) for n, (t, s, _) in tensors.items()} == {
        "direction.1": ("F32", [64]), "direction.2": ("F32", [64])}
    model, _ = load_model(tiny_dir)
    expected = control_vector_from_field(field, model=model)
    back = load_control_vector(out)
    assert back == expected
    for layer in (1, 2):
        assert np.array_equal(tensors[f"direction.{layer}"][2], expected.vectors[layer].numpy())
    assert f"strength {field.default_strength:g} of the field (mean_norm unit)" in printed
    assert f"--control-vector {out}" in printed and "direction.N = layer N" in printed


def test_mean_direction_layers_and_strength(tmp_path, tiny_dir, field_dir, char_tok):
    from svf.steering_field import SteeringField

    out = tmp_path / "mean.gguf"
    code, printed, err = _run(["export", "--gguf", str(out), str(field_dir), "--method",
                               "mean-direction", "--layers", "1,3", "--strength", "-2",
                               "--model", str(tiny_dir), "--no-progress"])
    assert code == 0, err
    model, tok = load_model(tiny_dir)
    field = SteeringField.load(field_dir)
    expected = control_vector_from_field(field, method="mean-direction", layers=[1, 3],
                                         strength=-2.0, model=model, tokenizer=tok, progress=False)
    back = load_control_vector(out)
    assert back == expected and back.layers == (1, 3) and back.info["method"] == "mean-direction"
    assert "strength -2 of the field" in printed


def test_caa_with_a_model_hint_loads_no_model(tmp_path, field_dir, monkeypatch):
    def no_model(name):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli, "_load_model", no_model)
    out = tmp_path / "cv.gguf"
    code, _, err = _run(["export", "--gguf", str(out), str(field_dir), "--model-hint", "qwen2"])
    assert code == 0, err
    assert load_control_vector(out).model_hint == "qwen2"


@pytest.mark.parametrize(("argv", "words"), [
    (["--layers", "0,1"], "argument --layers: layer 0 cannot be written"),
    (["--layers", "1,1"], "argument --layers: layers must not repeat"),
    (["--method", "pca"], "argument --method: invalid choice"),
    (["--strength", "nan"], "argument --strength: must be a finite number"),
])
def test_bad_options_exit_2_before_loading_and_write_nothing(tmp_path, field_dir, monkeypatch,
                                                             argv, words):
    monkeypatch.setattr(cli, "_load_model", lambda name: pytest.fail("a model was loaded"))
    code, out, err = _run(["export", "--gguf", str(tmp_path / "cv.gguf"), str(field_dir), *argv])
    assert code == 2 and words in err and out == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("gguf_path", "words"), [
    ("cv.bin", "must be a file name ending in .gguf"),
    (".gguf", "must be a file name ending in .gguf"),
    ("adir.gguf", "is a directory"),
    ("afile/cv.gguf", "is a file, not a directory"),
])
def test_bad_out_paths_say_why(tmp_path, field_dir, gguf_path, words):
    (tmp_path / "adir.gguf").mkdir()
    (tmp_path / "afile").write_text("x")
    code, _, err = _run(["export", "--gguf", str(tmp_path / gguf_path), str(field_dir)])
    assert code == 2 and "argument --gguf" in err and words in err


def test_errors_found_later_are_one_line_status_2_and_leave_the_old_file(tmp_path, tiny_dir,
                                                                         field_dir, monkeypatch):
    out = tmp_path / "cv.gguf"
    out.write_bytes(b"the old file")
    cases = [
        (["--layers", "5"], "outside the training layers"),
        (["--model", str(tmp_path / "nowhere")], "could not be loaded"),
    ]
    for argv, words in cases:
        code, _, err = _run(["export", "--gguf", str(out), str(field_dir), *argv])
        assert code == 2 and words in err and err.startswith("svf export: error: "), err
        assert err.count("\n") == 1
    code, _, err = _run(["export", "--gguf", str(out), str(tmp_path / "no-field")])
    assert code == 2 and "field artifact not found" in err
    assert out.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv.gguf"]


def test_a_field_that_steers_layer_0_needs_layers(tmp_path, tiny_dir):
    model, _ = load_model(tiny_dir)
    field = random_field(model, layers=range(4), steer_layers=[0, 1])
    field.save(tmp_path / "field")
    code, _, err = _run(["export", "--gguf", str(tmp_path / "cv.gguf"), str(tmp_path / "field"),
                         "--model", str(tiny_dir)])
    assert code == 2 and "layer 0" in err and "--layers" in err
    assert not (tmp_path / "cv.gguf").exists()
    code, _, err = _run(["export", "--gguf", str(tmp_path / "cv.gguf"), str(tmp_path / "field"),
                         "--model", str(tiny_dir), "--layers", "1"])
    assert code == 0, err and load_control_vector(tmp_path / "cv.gguf").layers == (1,)


def test_help_says_what_the_file_holds(capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "direction.N" in text and "model.layers[N]" in text and "--control-vector" in text
