"""``svf prepare --gguf``: a GGUF file of your own converted once into the cache, then loaded by
its name or its path without de-quantising again; the bad inputs it refuses. The GGUF files are
tiny Llama models written here with the ``gguf`` package (no download)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from svf import models
from svf.cli import main
from svf_kernels import SVFArgumentError

#: byte-level BPE pieces of the tiny tokenizer: 'Ġ' is GPT-2's byte for a space
_TOKENS = ["<s>", "</s>", *"abcdefghijklmnopqrstuvwxyz", "Ġ", ".", ",", "ab"]


def write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A 2-layer Llama (d = 16) with a byte-level BPE tokenizer of lowercase letters, as a GGUF
    file (float32 tensors, about 25 kB); ``arch`` names its architecture in the metadata."""
    import gguf

    rng = np.random.default_rng(seed)
    d, ff, layers = 16, 32, 2
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_block_count(layers)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(_TOKENS)
    w.add_token_types([3, 3] + [1] * (len(_TOKENS) - 2))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)

    def weight(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    weight("token_embd.weight", len(_TOKENS), d)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        for part in ("q", "k", "v", "output"):
            weight(f"blk.{i}.attn_{part}.weight", d, d)
        weight(f"blk.{i}.ffn_gate.weight", ff, d)
        weight(f"blk.{i}.ffn_up.weight", ff, d)
        weight(f"blk.{i}.ffn_down.weight", d, ff)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "my-tiny.gguf")


@pytest.fixture
def conversions(tmp_path, monkeypatch) -> list[Path]:
    """An empty cache in ``tmp_path``; counts the real conversions (the GGUFs they read)."""
    monkeypatch.setenv("SVF_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[Path] = []
    real = models.convert_gguf

    def counting(gguf, out):
        calls.append(Path(gguf))
        real(gguf, out)

    monkeypatch.setattr(models, "convert_gguf", counting)
    return calls


def _models_dir() -> Path:
    return models.cache_dir() / "models"


def _loaded_from(model) -> Path:
    return Path(model.config._name_or_path)


def test_prepare_gguf_then_load_by_name_and_path(tiny_gguf, conversions, tmp_path, capsys):
    model, _ = models.load_model(tiny_gguf)  # not prepared: the GGUF itself, de-quantised
    assert _loaded_from(model) == tiny_gguf.parent and conversions == []

    assert main(["prepare", "--gguf", str(tiny_gguf), "--name", "mine"]) == 0
    target = _models_dir() / "mine"
    out, err = capsys.readouterr()
    assert out.strip() == str(target)
    assert err == ""  # stderr is no terminal: no de-quantisation bar
    assert conversions == [tiny_gguf.resolve()]
    marker = json.loads((target / models.COMPLETE_MARKER).read_text())
    assert marker["model"] == "mine" and marker["sha256"] == models.file_sha256(tiny_gguf)
    assert marker["source"] == str(tiny_gguf.resolve())
    assert sorted(p.name for p in _models_dir().iterdir()) == ["mine"]  # no temporary left
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 2

    by_name, tok = models.load_model("mine")
    by_path, _ = models.load_model(str(tiny_gguf))
    copy = shutil.copy(tiny_gguf, tmp_path / "renamed.gguf")  # same bytes elsewhere: found too
    by_copy, _ = models.load_model(copy)
    for loaded in (by_name, by_path, by_copy):
        assert _loaded_from(loaded) == target
    assert conversions == [tiny_gguf.resolve()]  # loaded three times, converted once
    assert tok.padding_side == "left" and tok.pad_token == "</s>"
    ids = tok(["ab c"], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(by_name(ids).logits, model(ids).logits, rtol=0, atol=1e-5)

    assert main(["prepare", "--gguf", str(tiny_gguf), "--name", "mine"]) == 0  # up to date: a no-op
    assert conversions == [tiny_gguf.resolve()]
    assert main(["prepare", "--gguf", str(tiny_gguf), "--name", "mine", "--force"]) == 0
    assert len(conversions) == 2 and sorted(p.name for p in _models_dir().iterdir()) == ["mine"]


def test_a_changed_file_is_not_given_the_old_conversion(tiny_gguf, conversions, tmp_path):
    path = shutil.copy(tiny_gguf, tmp_path / "model.gguf")
    assert models.prepare_gguf(path) == _models_dir() / "model"  # the name: the file name without .gguf
    write_tiny_gguf(Path(path), seed=1)  # new content at the same path
    model, _ = models.load_model(path)
    assert _loaded_from(model) == Path(path).parent  # de-quantised, not the stale conversion
    with pytest.raises(SVFArgumentError, match=r"name 'model' is taken: .* holds the conversion of"):
        models.prepare_gguf(path)  # the name holds the old content's conversion
    assert models.prepare_gguf(path, force=True) == _models_dir() / "model"
    assert _loaded_from(models.load_model(path)[0]) == _models_dir() / "model"
    assert len(conversions) == 2


def test_svf_train_with_a_prepared_gguf_by_name(tiny_gguf, conversions, tmp_path, capsys):
    assert main(["prepare", "--gguf", str(tiny_gguf), "--name", "mine"]) == 0
    data = tmp_path / "pairs.jsonl"
    words = ["abc", "cab", "bad", "dab", "fab", "gab", "jab", "lab"]
    data.write_text("".join(json.dumps({"positive": f"a {w} ab", "negative": f"z {w} zz"}) + "\n"
                            for w in words))
    out = tmp_path / "field"
    assert main(["train", "--model", "mine", "--data", str(data), "--layers", "0-1", "--max-epochs", "1",
                 "--no-progress", "--out", str(out)]) == 0
    assert (out / "field.safetensors").is_file() and len(conversions) == 1


# --------------------------------------------------------------------------- bad input


def _prepare(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(["prepare", *argv])
    except SystemExit as exc:  # argparse's refusal
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "words"), [
    (["--gguf", "{dir}/missing.gguf"], "argument --gguf: PATH must be a GGUF file: no such file"),
    (["--gguf", "{dir}"], "is not a file"),
    (["--gguf", "{dir}/text.gguf"], r"starts with b'hell', not the GGUF magic b'GGUF'"),
    (["--gguf", "{gguf}", "--name", "default"], ("argument --name: name 'default' is taken by the named model "
                                                "SmolLM2-135M-Instruct")),
    (["--gguf", "{gguf}", "--name", "smollm2-135m-instruct"], "is taken by the named model SmolLM2-135M-Instruct"),
    (["--gguf", "{gguf}", "--name", "gemma-3-270m"], "is taken by the named model gemma-3-270m"),
    (["--gguf", "{gguf}", "--name", "a/b"], "argument --name: name must be 1-100 letters, digits"),
    (["--gguf", "{gguf}", "--name", "../up"], "no path separators"),
    (["--gguf", "{gguf}", "--name", ".hidden"], "starting with a letter or digit"),
    (["--gguf", "{dir}/default.gguf"], ("argument --gguf: the name 'default' derived from the file name "
                                       "'default.gguf' is taken by the named model SmolLM2-135M-Instruct")),
    (["--name", "mine"], "argument --name: only with --gguf"),
    (["--gguf", "{gguf}", "--model", "gemma-3-270m"], "argument --model: not allowed with argument --gguf"),
])
def test_svf_prepare_gguf_refuses_bad_input(argv, words, tiny_gguf, conversions, tmp_path, capsys):
    (tmp_path / "text.gguf").write_text("hello, not a model")
    shutil.copy(tiny_gguf, tmp_path / "default.gguf")
    argv = [a.format(dir=tmp_path, gguf=tiny_gguf) for a in argv]
    code, err = _prepare(argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert re.search(words, err), err
    assert conversions == [] and not _models_dir().exists()


def test_a_gguf_transformers_cannot_load_leaves_nothing(conversions, tmp_path, capsys):
    odd = write_tiny_gguf(tmp_path / "odd.gguf", arch="notanarch")
    code, err = _prepare(["--gguf", str(odd), "--name", "odd"], capsys)
    assert code == 2 and err.startswith("svf prepare: error: ") and err.count("\n") == 1
    assert "cannot load this GGUF file" in err and "architecture notanarch is not supported" in err
    assert list(_models_dir().iterdir()) == []  # the temporary directory is gone
    with pytest.raises(SVFArgumentError, match="cannot load this GGUF file"):
        models.prepare_gguf(odd)


def test_prepare_gguf_argument_errors_name_the_argument(tiny_gguf, conversions, tmp_path):
    for call, words in [
        (lambda: models.prepare_gguf(tmp_path / "none.gguf"), "path must be a GGUF file: no such file"),
        (lambda: models.prepare_gguf(3), "path must be a path"),
        (lambda: models.prepare_gguf(tiny_gguf, name="x y"), "name must be 1-100 letters"),
        (lambda: models.prepare_gguf(tiny_gguf, name="Default"), "name 'Default' is taken"),
        (lambda: models.prepare_gguf(tiny_gguf, force=1), "force must be True or False"),
    ]:
        with pytest.raises(SVFArgumentError, match=words):
            call()
    assert conversions == [] and not _models_dir().exists()


def test_derived_names():
    assert models.gguf_model_name("/x/Qwen2.5 0.5B Instruct.Q8_0.gguf") == "Qwen2.5-0.5B-Instruct.Q8_0"
    assert models.gguf_model_name("my-tiny.GGUF") == "my-tiny"
    with pytest.raises(SVFArgumentError, match="no model name can be derived"):
        models.gguf_model_name("___.gguf")
