"""Tests for svf.artifacts: exact round trips, refusal of every kind of bad artifact and
no unpickling ever (the hypothesis fuzzing of the loader is in test_artifacts_fuzz.py)."""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import re
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch as st
import torch

from svf import artifacts
from svf.artifacts import (
    FORMAT_VERSION,
    OPTIONAL_TENSOR_NAMES,
    TENSOR_NAMES,
    ArtifactError,
    check_compatible,
    expected_shapes,
    load_field,
    save_field,
    validate_metadata,
    validate_tensors,
)
from svf_kernels import SVFArgumentError

D, R, DE, M, NUM_LAYERS = 16, 4, 3, 5, 6
TRAIN = [2, 3, 4]


def make_field(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A valid random (tensors, meta) pair: d=16, r=4, de=3, m=5, layers [2,3,4] of 6."""
    meta = {
        "format": "svf-field",
        "format_version": 3,
        "concept": "sentiment:positive",
        "model": {"name": "tiny-llama", "hidden_size": D, "num_layers": NUM_LAYERS},
        "train_layers": list(TRAIN),
        "steer_layers": [2, 3],
        "hparams": {"r": R, "de": DE, "m": M, "eps": 1e-6, "activation": "gelu_tanh"},
        "default_strength": 0.25,
        "default_direction": "gradient",
        "default_target": None,
        "natural": None,
        "metrics": {"val_acc": 0.875, "epochs": 5, "curve": [0.5, 0.25], "note": None,
                    "best": {"layer": 3, "ok": True}},
    }
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "R": (R, D), "layer_emb": (3, DE), "Wg": (R, DE), "Wb": (R, DE), "W1": (M, R),
        "b1": (M,), "w2": (M,), "b2": (1,), "mean_norms": (3,), "caa": (3, D),
    }
    tensors = {name: torch.randn(*shape, generator=g) for name, shape in shapes.items()}
    tensors["mean_norms"] = tensors["mean_norms"].abs() + 0.5
    return tensors, meta


def raw_save(path: Path, tensors: dict[str, torch.Tensor], meta: Any = None, *,
             svf_text: str | None = None, st_meta: dict[str, str] | None = None) -> Path:
    """Write a safetensors file with plain safetensors, bypassing all validation."""
    if st_meta is None:
        st_meta = {"svf": svf_text if svf_text is not None else json.dumps(meta)}
    path.parent.mkdir(parents=True, exist_ok=True)
    st.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=st_meta)
    return path


def split_file(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(header dict, data section) of safetensors bytes."""
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def craft(header: dict[str, Any], data: bytes) -> bytes:
    """Hand-made safetensors bytes: u64 length, JSON header, data."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def valid_blob(tmp_path: Path) -> bytes:
    tensors, meta = make_field()
    return save_field(tmp_path / "valid.safetensors", tensors, meta).read_bytes()


def load_error(path: Path, **kwargs: Any) -> str:
    """Load ``path``, expecting an ArtifactError that names the file; return its message."""
    with pytest.raises(ArtifactError) as info:
        load_field(path, **kwargs)
    msg = str(info.value)
    assert str(path) in msg or str(path / "field.safetensors") in msg, msg
    return msg


# ------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("name", ["artifact_dir", "nested/dir/field_x.safetensors"])
def test_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    tensors, meta = make_field(seed=1)
    target = tmp_path / name
    written = save_field(target, tensors, meta)
    if name.endswith(".safetensors"):
        assert written == target
    else:
        assert written == target / "field.safetensors"
    assert sorted(os.listdir(written.parent)) == [written.name]  # no temp file left behind
    loaded, meta2 = load_field(target, hidden_size=D, num_layers=NUM_LAYERS)
    assert list(loaded) == list(TENSOR_NAMES)
    for key in TENSOR_NAMES:
        assert loaded[key].dtype == torch.float32 and loaded[key].is_contiguous()
        assert torch.equal(loaded[key], tensors[key]), key
    assert meta2 == meta
    loaded["R"].add_(1.0)  # loaded tensors are ordinary writable tensors


def test_file_layout_is_plain_safetensors(tmp_path: Path) -> None:
    tensors, meta = make_field()
    path = save_field(tmp_path / "f", tensors, meta)
    with st.safe_open(str(path), framework="pt") as f:
        assert f.metadata().keys() == {"svf"}
        assert json.loads(f.metadata()["svf"]) == meta
        assert set(f.keys()) == set(TENSOR_NAMES)
        for key in TENSOR_NAMES:
            assert f.get_tensor(key).dtype == torch.float32


def test_save_accepts_views_noncontiguous_and_grad(tmp_path: Path) -> None:
    tensors, meta = make_field()
    big = torch.randn(D, R + 3)
    tensors["R"] = big[:, :R].t()  # non-contiguous view of a larger storage
    tensors["caa"] = tensors["caa"].clone().requires_grad_(True)
    save_field(tmp_path / "f", tensors, meta)
    loaded, _ = load_field(tmp_path / "f")
    assert torch.equal(loaded["R"], tensors["R"])
    assert torch.equal(loaded["caa"], tensors["caa"].detach())


def test_metadata_is_normalised(tmp_path: Path) -> None:
    tensors, meta = make_field()
    meta["default_strength"] = 2
    meta["train_layers"] = (2, 3, 4)
    meta["hparams"]["eps"] = 1
    norm = validate_metadata(meta)
    assert norm["default_strength"] == 2.0 and isinstance(norm["default_strength"], float)
    assert norm["train_layers"] == [2, 3, 4] and isinstance(norm["hparams"]["eps"], float)
    save_field(tmp_path / "f", tensors, meta)
    _, loaded = load_field(tmp_path / "f")
    assert loaded == norm
    assert isinstance(loaded["default_strength"], float)


def test_expected_shapes() -> None:
    tensors, meta = make_field()
    shapes = expected_shapes(meta)
    assert tuple(shapes) == TENSOR_NAMES + OPTIONAL_TENSOR_NAMES
    assert {k: shapes[k] for k in TENSOR_NAMES} == {k: tuple(v.shape) for k, v in tensors.items()}
    assert shapes["robust_norms"] == (3,) and shapes["covariances"] == (3, R, R)
    assert FORMAT_VERSION == 3


def make_v2_field(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A valid version-2 artifact: the optional tensors and metadata fields included."""
    tensors, meta = make_field(seed)
    del meta["natural"]
    meta.update(format_version=2, default_direction="preconditioned", default_target=0.9)
    tensors["robust_norms"] = tensors["mean_norms"] * 0.5
    tensors["covariances"] = torch.eye(R).repeat(3, 1, 1)
    return tensors, meta


def test_version_2_round_trip(tmp_path: Path) -> None:
    tensors, meta = make_v2_field()
    file = save_field(tmp_path / "f", tensors, meta)
    loaded, lmeta = load_field(file)
    assert set(loaded) == set(TENSOR_NAMES + OPTIONAL_TENSOR_NAMES)
    assert torch.equal(loaded["covariances"], tensors["covariances"])
    assert lmeta["default_direction"] == "preconditioned" and lmeta["default_target"] == 0.9


def test_version_1_loads_without_the_optional_parts(tmp_path: Path) -> None:
    tensors, meta = make_field()
    meta["format_version"] = 1
    del meta["default_direction"], meta["default_target"], meta["natural"]
    loaded, lmeta = load_field(save_field(tmp_path / "f", tensors, meta))
    assert set(loaded) == set(TENSOR_NAMES)
    assert lmeta["format_version"] == 3  # normalised: version 3 without the optional parts
    assert lmeta["default_direction"] == "gradient" and lmeta["default_target"] is None
    assert lmeta["natural"] is None


@pytest.mark.parametrize("change, message", [
    (lambda t, m: t.pop("covariances"), "tensor 'robust_norms' is there but 'covariances' is missing"),
    (lambda t, m: (t.pop("covariances"), t.pop("robust_norms")),
     "'default_direction' is 'preconditioned' but the tensor 'covariances' is missing"),
    (lambda t, m: m.update(default_direction="sideways"), "'default_direction' must be one of"),
    (lambda t, m: m.update(default_target=0.4), "'default_target' must be null or a probability"),
    (lambda t, m: m.update(default_target=True), "'default_target'"),
    (lambda t, m: t.update(covariances=torch.eye(R + 1).repeat(3, 1, 1)), "tensor 'covariances' has shape"),
    (lambda t, m: m.update(format_version=1), "unexpected metadata field 'default_direction'"),
    (lambda t, m: m.update(format_version=4), "unsupported format_version 4"),
])
def test_version_2_refusals(tmp_path: Path, change, message: str) -> None:
    tensors, meta = make_v2_field()
    change(tensors, meta)
    with pytest.raises(ArtifactError, match=re.escape(message)):
        save_field(tmp_path / "f", tensors, meta)
    assert not (tmp_path / "f").exists()
    raw_save(tmp_path / "raw" / "field.safetensors", tensors, meta)
    with pytest.raises(ArtifactError, match=re.escape(message)):
        load_field(tmp_path / "raw")


# -------------------------------------------------------------------- save refusals


def _nan_r(t: dict, m: dict) -> None:
    t["R"][0, 0] = math.nan


def _wrong_shape(t: dict, m: dict) -> None:
    t["W1"] = torch.randn(M, R + 1)


def _float64(t: dict, m: dict) -> None:
    t["b1"] = t["b1"].double()


def _missing(t: dict, m: dict) -> None:
    del t["b2"]


def _extra(t: dict, m: dict) -> None:
    t["foo"] = torch.zeros(1)


def _bool_r(t: dict, m: dict) -> None:
    m["hparams"]["r"] = True


def _steer_outside(t: dict, m: dict) -> None:
    m["steer_layers"] = [2, 5]


def _zero_norm(t: dict, m: dict) -> None:
    t["mean_norms"][1] = 0.0


def _nan_metric(t: dict, m: dict) -> None:
    m["metrics"]["val_acc"] = math.nan


def _not_tensor(t: dict, m: dict) -> None:
    t["b2"] = [0.0]


SAVE_REFUSALS = [
    (_nan_r, "tensor 'R' contains NaN or Inf"),
    (_wrong_shape, "tensor 'W1' has shape (5, 5), expected (5, 4) from hparams r=4, m=5"),
    (_float64, "tensor 'b1' has dtype torch.float64, expected torch.float32"),
    (_missing, "missing tensor 'b2'"),
    (_extra, "unexpected tensor 'foo'"),
    (_bool_r, "metadata field 'hparams.r' must be an int >= 1, got True (bool)"),
    (_steer_outside, "metadata field 'steer_layers' must be a subset of train_layers"),
    (_zero_norm, "tensor 'mean_norms' must be > 0"),
    (_nan_metric, "metadata field 'metrics.val_acc' is nan"),
    (_not_tensor, "tensor 'b2' must be a torch.Tensor"),
]


@pytest.mark.parametrize(
    "mutate,problem", SAVE_REFUSALS, ids=[f.__name__ for f, _ in SAVE_REFUSALS]
)
@pytest.mark.parametrize("name", ["out_dir", "out.safetensors"])
def test_save_refuses_invalid_and_writes_nothing(
    tmp_path: Path, mutate: Any, problem: str, name: str
) -> None:
    tensors, meta = make_field()
    mutate(tensors, meta)
    with pytest.raises(ArtifactError, match=None) as info:
        save_field(tmp_path / name, tensors, meta)
    assert problem in str(info.value)
    assert str(tmp_path / name) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # not even the directory was created


def test_save_invalid_keeps_existing_artifact(tmp_path: Path) -> None:
    tensors, meta = make_field()
    path = save_field(tmp_path / "f", tensors, meta)
    before = path.read_bytes()
    bad = {k: v.clone() for k, v in tensors.items()}
    bad["W1"][0, 0] = math.inf
    with pytest.raises(ArtifactError, match="tensor 'W1' contains NaN or Inf"):
        save_field(tmp_path / "f", bad, meta)
    assert path.read_bytes() == before


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors, meta = make_field()
    path = save_field(tmp_path / "f", tensors, meta)
    before = path.read_bytes()

    def boom(src: Any, dst: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(artifacts.os, "replace", boom)
    with pytest.raises(ArtifactError, match="cannot save: disk on fire"):
        save_field(tmp_path / "f", make_field(seed=7)[0], meta)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["field.safetensors"]  # the temp file was removed


def test_save_into_a_file_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    tensors, meta = make_field()
    with pytest.raises(ArtifactError, match="exists and is not a directory"):
        save_field(tmp_path / "blocker", tensors, meta)


# ---------------------------------------------------------------- corrupt files


def test_truncated_file_every_region(tmp_path: Path) -> None:
    blob = valid_blob(tmp_path)
    n = struct.unpack("<Q", blob[:8])[0]
    size = len(blob)
    cuts = {0: "too short", 1: "too short", 7: "too short",
            8: "exceeds file size", 9: "exceeds file size", 8 + n // 2: "exceeds file size",
            8 + n - 1: "exceeds file size",
            8 + n: "truncated", 8 + n + 1: "truncated", (8 + n + size) // 2: "truncated",
            size - 4: "truncated", size - 1: "truncated"}
    for cut, problem in cuts.items():
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(blob[:cut])
        msg = load_error(path)
        assert problem in msg, (cut, msg)
        if cut < 8 + n:
            assert "not a safetensors file" in msg


def test_trailing_bytes_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(valid_blob(tmp_path) + b"\0" * 8)
    assert "8 unexpected bytes after the tensor data" in load_error(path)


@pytest.mark.parametrize("dtype,code", [(torch.float16, "F16"), (torch.float64, "F64"),
                                        (torch.bfloat16, "BF16"), (torch.int32, "I32")])
def test_wrong_dtype(tmp_path: Path, dtype: torch.dtype, code: str) -> None:
    tensors, meta = make_field()
    tensors["W1"] = tensors["W1"].to(dtype)
    path = raw_save(tmp_path / "f.safetensors", tensors, meta)
    assert f"tensor 'W1' has dtype {code}, expected F32" in load_error(path)


@pytest.mark.parametrize("name,value", [("R", math.nan), ("W1", math.inf), ("caa", -math.inf),
                                        ("b2", math.nan), ("layer_emb", math.inf)])
def test_non_finite_weight(tmp_path: Path, name: str, value: float) -> None:
    tensors, meta = make_field()
    tensors[name].view(-1)[-1] = value
    path = raw_save(tmp_path / "f.safetensors", tensors, meta)
    assert f"tensor '{name}' contains NaN or Inf" in load_error(path)


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_non_positive_mean_norm(tmp_path: Path, value: float) -> None:
    tensors, meta = make_field()
    tensors["mean_norms"][2] = value
    path = raw_save(tmp_path / "f.safetensors", tensors, meta)
    assert "tensor 'mean_norms' must be > 0 everywhere" in load_error(path)


def test_missing_tensor(tmp_path: Path) -> None:
    tensors, meta = make_field()
    del tensors["b2"]
    path = raw_save(tmp_path / "f.safetensors", tensors, meta)
    assert "missing tensor 'b2'" in load_error(path)


def test_extra_tensor(tmp_path: Path) -> None:
    tensors, meta = make_field()
    tensors["foo"] = torch.zeros(2)
    path = raw_save(tmp_path / "f.safetensors", tensors, meta)
    assert "unexpected tensor 'foo'" in load_error(path)


@pytest.mark.parametrize("name,shape,problem", [
    ("W1", (M, R - 1), "tensor 'W1' has shape (5, 3), expected (5, 4) from hparams r=4, m=5"),
    ("caa", (D, 3), "tensor 'caa' has shape (16, 3), expected (3, 16)"),
    ("b2", (), "tensor 'b2' has shape (), expected (1,)"),
    ("mean_norms", (4,), "tensor 'mean_norms' has shape (4,), expected (3,)"),
])
def test_wrong_shape(tmp_path: Path, name: str, shape: tuple[int, ...], problem: str) -> None:
    tensors, meta = make_field()
    tensors[name] = torch.ones(shape)
    path = raw_save(tmp_path / "f.safetensors", tensors, meta)
    assert problem in load_error(path)


class _LoaderCalled(AssertionError):
    pass


def _forbid_materialising(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any tensor load through safetensors fail the test."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise _LoaderCalled("safetensors was asked to materialise tensors")

    monkeypatch.setattr(artifacts._st, "load", forbidden)
    monkeypatch.setattr(artifacts._st, "load_file", forbidden)


@pytest.mark.parametrize("variant", ["meta_unchanged", "meta_agrees", "offsets_agree"])
def test_huge_declared_shape_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    header, data = split_file(valid_blob(tmp_path))
    huge = [2**40, 2**20]
    header["R"]["shape"] = huge
    if variant != "meta_unchanged":
        meta = json.loads(header["__metadata__"]["svf"])
        meta["hparams"]["r"], meta["model"]["hidden_size"] = huge
        header["__metadata__"]["svf"] = json.dumps(meta)
    if variant == "offsets_agree":
        header["R"]["data_offsets"] = [0, 2**60 * 4]
    path = tmp_path / "huge.safetensors"
    path.write_bytes(craft(header, data))
    _forbid_materialising(monkeypatch)
    start = time.perf_counter()
    msg = load_error(path)
    assert time.perf_counter() - start < 1.0
    expected = {
        "meta_unchanged": "tensor 'R' has shape (1099511627776, 1048576), expected (4, 16)",
        "meta_agrees": "tensor 'R' data_offsets [0, 256] span 256 bytes, but shape "
                       "(1099511627776, 1048576) float32 needs 4611686018427387904",
        "offsets_agree": "file is truncated: tensor 'R' data ends at byte 4611686018427387904",
    }[variant]
    assert expected in msg


def test_overlapping_and_gapped_offsets(tmp_path: Path) -> None:
    header, data = split_file(valid_blob(tmp_path))
    overlap = copy.deepcopy(header)
    overlap["w2"]["data_offsets"] = list(header["b1"]["data_offsets"])  # same size, same bytes
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(craft(overlap, data))
    assert "overlaps the previous tensor" in load_error(path)

    gapped = copy.deepcopy(header)
    for name in TENSOR_NAMES:
        gapped[name]["data_offsets"] = [x + 4 for x in header[name]["data_offsets"]]
    first = min(TENSOR_NAMES, key=lambda k: header[k]["data_offsets"][0])
    path = tmp_path / "gap.safetensors"
    path.write_bytes(craft(gapped, b"\0" * 4 + data))
    msg = load_error(path)
    assert f"tensor '{first}' data_offsets [4, " in msg and "leaves a gap" in msg


def test_duplicate_header_keys_refused(tmp_path: Path) -> None:
    blob = valid_blob(tmp_path)
    n = struct.unpack("<Q", blob[:8])[0]
    text = blob[8 : 8 + n].decode().rstrip()
    assert text.endswith("}")
    text = text[:-1] + ',"b2":' + json.dumps(split_file(blob)[0]["b2"]) + "}"
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text.encode() + blob[8 + n :])
    assert "duplicate key 'b2'" in load_error(path)


def test_header_not_json_object(tmp_path: Path) -> None:
    path = tmp_path / "list.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    assert "header is JSON list, not an object" in load_error(path)
    path.write_bytes(struct.pack("<Q", 2) + b"\xff\xfe")
    assert "header is not valid UTF-8 JSON" in load_error(path)


def test_header_over_1_mib_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    assert artifacts.MAX_HEADER_BYTES == 1024 * 1024
    n = 1024 * 1024 + 1
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n))
        f.truncate(8 + n + 16)  # sparse file: big but cheap
    assert f"header length {n} exceeds the 1048576-byte limit" in load_error(path)


def test_json_that_safetensors_refuses_is_refused_first(tmp_path: Path) -> None:
    """Python's json reads a lone surrogate escape and ``-0`` (as int 0); serde (inside
    safetensors) refuses both. The loader refuses them itself, with its own message."""
    header, data = split_file(valid_blob(tmp_path))
    first = min(TENSOR_NAMES, key=lambda k: header[k]["data_offsets"][0])
    text = json.dumps(header)
    path = tmp_path / "f.safetensors"
    minus_zero = text.replace(f'"{first}": {{"dtype": "F32", "shape": '
                              f'{json.dumps(header[first]["shape"])}, "data_offsets": [0,',
                              f'"{first}": {{"dtype": "F32", "shape": '
                              f'{json.dumps(header[first]["shape"])}, "data_offsets": [-0,')
    assert minus_zero != text
    path.write_bytes(struct.pack("<Q", len(minus_zero)) + minus_zero.encode() + data)
    assert f"tensor '{first}' has invalid data_offsets [-0.0, " in load_error(path)
    surrogate = text.replace('"b2": {', '"b2": {"\\udc80": 1, ')
    assert surrogate != text
    path.write_bytes(struct.pack("<Q", len(surrogate)) + surrogate.encode() + data)
    assert "holds a lone surrogate escape" in load_error(path)


def test_bad_path_and_arguments(tmp_path: Path) -> None:
    assert "cannot read: embedded null byte" in load_error(tmp_path / "a\0b")
    tensors, meta = make_field()
    save_field(tmp_path / "f", tensors, meta)
    for bad in (0, True, 1.5, "100"):
        with pytest.raises(SVFArgumentError, match="max_bytes must be an int >= 1"):
            load_field(tmp_path / "f", max_bytes=bad)


def test_messages_stay_short(tmp_path: Path) -> None:
    """Values from the file are shortened in messages: a message never grows with them."""
    tensors, meta = make_field()
    meta["model"]["k" * 5000] = 1
    path = raw_save(tmp_path / "f.safetensors", tensors, meta)
    msg = load_error(path)
    assert "unexpected metadata field 'model.kkk" in msg and len(msg) < len(str(path)) + 200
    meta = make_field()[1]
    meta["hparams"]["r"] = -(10**4000)
    msg = load_error(raw_save(path, tensors, meta))
    assert "'hparams.r' must be an int >= 1, got <int of 13288 bits>" in msg


def test_max_bytes(tmp_path: Path) -> None:
    tensors, meta = make_field()
    path = save_field(tmp_path / "f", tensors, meta)
    size = path.stat().st_size
    assert f"file is {size} bytes, over the max_bytes limit of 100" in load_error(
        tmp_path / "f", max_bytes=100)
    load_field(tmp_path / "f", max_bytes=size)


def test_missing_paths(tmp_path: Path) -> None:
    assert "field artifact not found" in load_error(tmp_path / "nope")
    assert "does not exist" in load_error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    msg = load_error(tmp_path / "empty")
    assert "field artifact not found" in msg and "does not exist" not in msg
    assert "field artifact not found" in load_error(tmp_path / "x.safetensors")
    (tmp_path / "plain.bin").write_bytes(b"12345678")
    assert "is not a directory" in load_error(tmp_path / "plain.bin")
    (tmp_path / "d.safetensors").mkdir()
    assert "not a regular file" in load_error(tmp_path / "d.safetensors")


# ------------------------------------------------------------------------ metadata


def _set(path: str, value: Any) -> Any:
    def mutate(meta: dict) -> None:
        *parents, last = path.split(".")
        target = meta
        for key in parents:
            target = target[key]
        target[last] = value
    mutate.__name__ = f"{path}={value!r}"[:40]
    return mutate


def _delete(path: str) -> Any:
    def mutate(meta: dict) -> None:
        *parents, last = path.split(".")
        target = meta
        for key in parents:
            target = target[key]
        del target[last]
    mutate.__name__ = f"del {path}"
    return mutate


INCREASING = "metadata field 'train_layers' must be a strictly increasing list of ints"
META_CASES = [
    (_set("train_layers", "2,3,4"), INCREASING),
    (_set("train_layers", [2, 2, 4]), INCREASING),
    (_set("train_layers", [4, 3, 2]), INCREASING),
    (_set("train_layers", []), INCREASING),
    (_set("train_layers", [2, 3.0, 4]), INCREASING),
    (_set("train_layers", [2, True, 4]), INCREASING),
    (_set("model.hidden_size", 16.0), "metadata field 'model.hidden_size' must be an int >= 1"),
    (_set("model.hidden_size", 0), "metadata field 'model.hidden_size' must be an int >= 1"),
    (_set("model.num_layers", True), ("metadata field 'model.num_layers' must be an int >= 1, "
                                     "got True (bool)")),
    (_set("hparams.r", True), "metadata field 'hparams.r' must be an int >= 1, got True (bool)"),
    (_set("hparams.m", "5"), "metadata field 'hparams.m' must be an int >= 1"),
    (_set("hparams.de", None), "metadata field 'hparams.de' must be an int >= 1"),
    (_set("hparams.eps", 0.0), "metadata field 'hparams.eps' must be a finite number > 0"),
    (_set("hparams.eps", False), "metadata field 'hparams.eps' must be a finite number > 0"),
    (_set("hparams.activation", "relu"), "metadata field 'hparams.activation' must be one of"),
    (_set("default_strength", "1.0"), "metadata field 'default_strength' must be a finite number"),
    (_set("default_strength", True), "metadata field 'default_strength' must be a finite number"),
    (_set("concept", ""), "metadata field 'concept' must be a non-empty string"),
    (_set("concept", "x" * 201), "metadata field 'concept' must be a non-empty string of at most"),
    (_set("concept", 5), "metadata field 'concept' must be a string"),
    (_set("model.name", 3), "metadata field 'model.name' must be a string"),
    (_set("model", "tiny"), "metadata field 'model' must be a JSON object"),
    (_set("model.revision", "main"), "unexpected metadata field 'model.revision'"),
    (_set("hparams.lr", 3e-4), "unexpected metadata field 'hparams.lr'"),
    (_delete("hparams.eps"), "missing metadata field 'hparams.eps'"),
    (_delete("concept"), "missing metadata field 'concept'"),
    (_delete("metrics"), "missing metadata field 'metrics'"),
    (_set("extra", 1), "unexpected metadata field 'extra'"),
    (_set("format", "gguf"), "metadata field 'format' must be 'svf-field'"),
    (_set("format_version", 4), "unsupported format_version 4"),
    (_set("format_version", "1"), "metadata field 'format_version' must be an int"),
    (_set("metrics", [1, 2]), "metadata field 'metrics' must be a JSON object"),
    (_set("metrics", {"big": "x" * 70000}), "over the 65536-byte limit"),
    (_set("steer_layers", [2, 5]), ("metadata field 'steer_layers' must be a subset of "
                                   "train_layers [2, 3, 4]; layers [5]")),
    (_set("steer_layers", [3, 2]), "metadata field 'steer_layers' must be a strictly increasing"),
    (_set("train_layers", [2, 3, 6]), ("metadata field 'train_layers' has layer 6, out of range "
                                      "[0, 6)")),
    (_set("train_layers", [-1, 3, 4]), "metadata field 'train_layers' has layer -1, out of range"),
]


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


META_CASES.append((_set("metrics", {"deep": _deep(40)}), "nested deeper than 32 levels"))


@pytest.mark.parametrize("mutate,problem", META_CASES, ids=[f.__name__ for f, _ in META_CASES])
def test_bad_metadata_in_file(tmp_path: Path, mutate: Any, problem: str) -> None:
    tensors, meta = make_field()
    mutate(meta)
    path = raw_save(tmp_path / "f.safetensors", tensors, meta)
    assert problem in load_error(path)
    with pytest.raises(ArtifactError) as info:  # the same check, called directly
        validate_metadata(meta)
    assert problem in str(info.value) and str(info.value).startswith("<metadata>: ")


@pytest.mark.parametrize("text,problem", [
    ("not json{", "metadata 'svf' is not valid JSON"),
    ("", "metadata 'svf' is not valid JSON"),
    ("[1, 2]", "metadata must be a JSON object (dict), got [1, 2] (list)"),
    ("REPLACE_STRENGTH NaN", "metadata 'svf' is not valid JSON (NaN is not valid JSON)"),
    ("REPLACE_STRENGTH 1e999", "metadata field 'default_strength' must be a finite number"),
    ("DUPLICATE", "metadata 'svf' is not valid JSON (duplicate key 'concept')"),
    ("[" * 5000 + "]" * 5000, "metadata 'svf' is not valid JSON (JSON nested too deeply)"),
])
def test_bad_metadata_text(tmp_path: Path, text: str, problem: str) -> None:
    tensors, meta = make_field()
    good = json.dumps(meta)
    if text.startswith("REPLACE_STRENGTH "):
        text = good.replace('"default_strength": 0.25', '"default_strength": ' + text[17:])
        assert text != good
    elif text == "DUPLICATE":
        text = good[:-1] + ', "concept": "other"}'
    path = raw_save(tmp_path / "f.safetensors", tensors, svf_text=text)
    assert problem in load_error(path)


@pytest.mark.parametrize("st_meta,problem", [
    (None, "safetensors metadata has no 'svf' key"),
    ({"other": "x"}, "safetensors metadata has no 'svf' key"),
    ({"svf": "GOOD", "format": "pt"}, "unexpected safetensors metadata key 'format'"),
])
def test_bad_safetensors_metadata(tmp_path: Path, st_meta: Any, problem: str) -> None:
    tensors, meta = make_field()
    path = tmp_path / "f.safetensors"
    if st_meta is None:
        st.save_file(tensors, str(path))
    else:
        st_meta = {k: json.dumps(meta) if v == "GOOD" else v for k, v in st_meta.items()}
        raw_save(path, tensors, st_meta=st_meta)
    assert problem in load_error(path)


def test_validate_metadata_python_values() -> None:
    _, meta = make_field()
    meta["metrics"] = {"a": (1, 2.5), "b": {"c": [None, True, "s"]}}
    assert validate_metadata(meta)["metrics"] == {"a": [1, 2.5], "b": {"c": [None, True, "s"]}}
    meta["metrics"] = {"a": {1: 2}}
    with pytest.raises(ArtifactError, match=r"metadata field 'metrics.a' has a non-string key"):
        validate_metadata(meta)
    meta["metrics"] = {"t": torch.tensor(1.0)}
    with pytest.raises(ArtifactError, match=r"metadata field 'metrics.t' must hold only JSON"):
        validate_metadata(meta)
    meta["metrics"] = {"x": [1.0, math.inf]}
    with pytest.raises(ArtifactError, match=r"metadata field 'metrics.x\[1\]' is inf"):
        validate_metadata(meta)
    with pytest.raises(ArtifactError, match=r"^my.safetensors: metadata must be a JSON object"):
        validate_metadata("nope", "my.safetensors")  # type: ignore[arg-type]


def test_validate_tensors_direct() -> None:
    tensors, meta = make_field()
    validate_tensors(tensors, meta, "src")
    tensors["Wg"] = tensors["Wg"].to("meta")
    with pytest.raises(ArtifactError, match=r"^src: tensor 'Wg' must be a dense tensor"):
        validate_tensors(tensors, meta, "src")
    with pytest.raises(ArtifactError, match=r"^src: tensors must be a dict"):
        validate_tensors([1], meta, "src")  # type: ignore[arg-type]


# ------------------------------------------------------------------- compatibility


def test_field_for_another_model(tmp_path: Path) -> None:
    tensors, meta = make_field()
    save_field(tmp_path / "f", tensors, meta)
    assert "field is for hidden_size 16 but the model has 32" in load_error(
        tmp_path / "f", hidden_size=32)
    assert "field train_layers contains layer 4 but the model has only 4 layers" in load_error(
        tmp_path / "f", num_layers=4)
    assert "field is for a model with 6 layers but the model has 8" in load_error(
        tmp_path / "f", num_layers=8)
    load_field(tmp_path / "f", hidden_size=D)
    load_field(tmp_path / "f", num_layers=NUM_LAYERS)
    with pytest.raises(SVFArgumentError, match="hidden_size must be an int"):
        load_field(tmp_path / "f", hidden_size=True)


def test_check_compatible_direct() -> None:
    _, meta = make_field()
    check_compatible(meta, D, NUM_LAYERS)
    with pytest.raises(ArtifactError, match=r"^x: field is for hidden_size 16 but the model has"):
        check_compatible(meta, 576, NUM_LAYERS, "x")
    with pytest.raises(ArtifactError, match=r"train_layers contains layer 3 .* only 3 layers"):
        meta2 = copy.deepcopy(meta)
        meta2["train_layers"] = [0, 3]
        meta2["steer_layers"] = [0, 3]
        check_compatible(meta2, D, 3)
    with pytest.raises(SVFArgumentError, match="num_layers must be an int"):
        check_compatible(meta, D, 6.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- pickles


class _Payload:
    """Unpickling this object runs code that writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


PICKLE_WRITERS = {
    "torch_zip": lambda obj, p: torch.save({"R": obj}, p),
    "torch_legacy": lambda obj, p: torch.save({"R": obj}, p, _use_new_zipfile_serialization=False),
    "raw_pickle": lambda obj, p: p.write_bytes(pickle.dumps(obj, protocol=4)),
    "raw_pickle_p2": lambda obj, p: p.write_bytes(pickle.dumps(obj, protocol=2)),
}


@pytest.mark.parametrize("writer", list(PICKLE_WRITERS))
@pytest.mark.parametrize("as_dir", [False, True])
def test_pickle_is_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str, as_dir: bool
) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / ("d/field.safetensors" if as_dir else "weights.safetensors")
    path.parent.mkdir(exist_ok=True)
    PICKLE_WRITERS[writer](_Payload(marker), path)

    def no_unpickling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("load_field tried to unpickle")

    with monkeypatch.context() as mp:
        mp.setattr(torch, "load", no_unpickling)
        mp.setattr(pickle, "load", no_unpickling)
        mp.setattr(pickle, "loads", no_unpickling)
        mp.setattr(pickle, "Unpickler", no_unpickling)
        load_error(path.parent if as_dir else path)
    assert not marker.exists()

    # The payload is live: an unpickling loader would have run it (so this test can fail).
    live = tmp_path / "live_marker"
    PICKLE_WRITERS[writer](_Payload(live), tmp_path / "live.pt")
    if writer.startswith("torch"):
        torch.load(tmp_path / "live.pt", weights_only=False)
    else:
        pickle.loads((tmp_path / "live.pt").read_bytes())
    assert live.read_text() == "pwned"
