"""Hypothesis fuzzing of the artifact loader.

Every property builds a bad (or, as a control, a good) artifact, loads it, and checks that
the loader either returns a valid field or raises ``ArtifactError`` whose message names the
file and the specific problem that the property predicts. No other exception may escape,
and three invariants hold for every example (see ``load``):

* the message starts with the file's path and its problem text stays short;
* safetensors never has to reject a file: every header problem is caught by our own checks
  first (the "safetensors could not load" fallback never fires);
* a file refused for its header never reaches the tensor materialisation.

CI runs ``SVF_FUZZ_EXAMPLES`` examples per property (default 150); a longer run is e.g.
``SVF_FUZZ_EXAMPLES=10000 pytest tests/test_artifacts_fuzz.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import os
import re
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch as st
import torch
from helpers import random_field, tiny_model
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as hs
from hypothesis.control import currently_in_test_context

from svf import artifacts
from svf.artifacts import TENSOR_NAMES, ArtifactError, load_field, validate_metadata
from svf.steering_field import SteeringField
from svf_kernels import SVFArgumentError

EXAMPLES = int(os.environ.get("SVF_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)

# The base artifact: a random field for a tiny 4-layer Llama with d=32, trained on layers
# 1..3 (r=4, de=3, m=5). Loads pass the model's sizes, as SteeringField.load(path, model)
# does, unless a property says otherwise.
D, NUM_LAYERS, TRAIN, STEER, R, DE, M = 32, 4, [1, 2, 3], [1, 2], 4, 3, 5
MODEL_KW = {"hidden_size": D, "num_layers": NUM_LAYERS}
MAX_PROBLEM_CHARS = 600  # well under artifacts.MAX_MESSAGE_CHARS: no value goes in untrimmed
FALLBACK = "safetensors could not load the file"


@functools.cache
def cached_model(kind: str, layers: int, d: int) -> torch.nn.Module:
    return tiny_model(kind, layers=layers, d=d)


def base_field() -> SteeringField:
    field = random_field(cached_model("llama", NUM_LAYERS, D), layers=TRAIN, steer_layers=STEER,
                         r=R, de=DE, m=M, concept="sentiment:positive", seed=3)
    field.metrics = {"val_acc": 0.875, "curve": [0.5, 0.25], "note": None,
                     "best": {"layer": 2, "ok": True}}
    return field


class LoadSpy:
    """Stands in for ``safetensors.torch.load``: counts calls, can forbid them."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls, self.forbid = real, 0, False

    def __call__(self, data: bytes) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.forbid:
            raise AssertionError("safetensors was asked to materialise tensors")
        return self.real(data)


class Env:
    """Per-module state: a scratch file, the valid blob, its header and data section."""

    def __init__(self, root: Path, spy: LoadSpy) -> None:
        self.root, self.spy = root, spy
        self.path = root / "fuzzed.safetensors"
        self.field = base_field()
        self.tensors, self.meta = self.field.tensors(), self.field.metadata()
        self.blob = artifacts.save_field(root / "valid.safetensors", self.tensors,
                                         self.meta).read_bytes()
        self.n = struct.unpack("<Q", self.blob[:8])[0]
        self.header, self.data = split_file(self.blob)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    spy = LoadSpy(artifacts._st.load)
    mp = pytest.MonkeyPatch()
    mp.setattr(artifacts._st, "load", spy)
    try:
        yield Env(tmp_path_factory.mktemp("fuzz"), spy)
    finally:
        mp.undo()


def split_file(blob: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def craft(header: dict[str, Any] | str, data: bytes) -> bytes:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + data


def load(env: Env, blob: bytes | None = None, **kwargs: Any) -> tuple[Any, str | None]:
    """Write ``blob`` (if given) and load it; return ``(result, None)`` or ``(None, problem)``.

    Any exception but ArtifactError propagates and fails the example.
    """
    if blob is not None:
        env.path.write_bytes(blob)
    calls = env.spy.calls
    try:
        result = load_field(env.path, **kwargs)
    except ArtifactError as exc:
        msg = str(exc)
        prefix = f"{env.path}: "
        assert msg.startswith(prefix), msg
        problem = msg[len(prefix):]
        assert len(problem) <= MAX_PROBLEM_CHARS, problem
        assert FALLBACK not in problem, problem
        if env.spy.calls != calls:  # materialised: only a tensor value may be wrong
            assert any(f in problem for f in ("contains NaN or Inf", "must be > 0")), problem
        note_event("refused: " + problem_class(problem))
        return None, problem
    note_event("loaded")
    tensors, meta = result
    assert list(tensors) == list(TENSOR_NAMES)
    artifacts.validate_tensors(tensors, meta, "loaded")
    assert validate_metadata(meta) == meta
    return result, None


def expect(env: Env, fragment: str | tuple[str, ...], blob: bytes | None = None,
           **kwargs: Any) -> str:
    """Load, expecting an ArtifactError whose problem contains ``fragment`` (or one of)."""
    _, problem = load(env, blob, **kwargs)
    assert problem is not None, f"loaded, but expected an error with {fragment!r}"
    frags = (fragment,) if isinstance(fragment, str) else fragment
    assert any(f in problem for f in frags), (frags, problem)
    return problem


def with_meta(env: Env, meta_text: str, header: dict[str, Any] | None = None) -> bytes:
    header = copy.deepcopy(env.header if header is None else header)
    header["__metadata__"]["svf"] = meta_text
    return craft(header, env.data)


# Every message the loader can give for a file (no "cannot read"/"not found": the file is
# there). A mutated header must yield one of these, never the safetensors fallback.
KNOWN_PROBLEMS = (
    "not a safetensors file", "file is truncated", "unexpected bytes after the tensor data",
    "safetensors metadata has no 'svf' key", "'__metadata__' must map strings to strings",
    "unexpected safetensors metadata key", "metadata 'svf' must be a string",
    "metadata 'svf' is not valid JSON", "metadata must be a JSON object",
    "missing metadata field", "unexpected metadata field", "metadata field '",
    "unsupported format_version", "missing tensor", "unexpected tensor",
    "header entry must be an object", "has dtype", "has an invalid shape", "has shape",
    "has invalid data_offsets", "data_offsets [", "contains NaN or Inf",
    "must be > 0 everywhere", "field is for", "field train_layers contains",
)


def problem_class(problem: str) -> str:
    """The message's kind, for hypothesis' statistics (``--hypothesis-show-statistics``)."""
    if problem.startswith("not a safetensors file"):
        return re.sub(r"\d+", "N", problem)[:50]
    return next((f for f in KNOWN_PROBLEMS if f in problem), problem[:40])


def note_event(text: str) -> None:
    if currently_in_test_context():
        event(text)


def known(problem: str) -> bool:
    return any(f in problem for f in KNOWN_PROBLEMS)


def trimmed(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3]


# ------------------------------------------------------------------- JSON strategies

TEXT = hs.text(max_size=8)
SCALARS = (hs.none() | hs.booleans() | hs.integers(-(2**200), 2**200)
           | hs.floats(allow_nan=False, allow_infinity=False) | TEXT)
JSON_VALUES = hs.recursive(
    SCALARS,
    lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=8,
)
# Values near the valid ones, where type confusions live: 1 vs 1.0 vs true vs "1".
NEAR = hs.sampled_from([  # (deep-copied: a test may mutate what it draws)
    None, True, False, 0, 1, -1, 2, 3, 4, 32, 1.0, 32.0, 0.5, -0.0, "", "1", "32", "F32",
    "gelu_tanh", "svf-field", [], [1], [1, 2], [1, 2, 3], [0, 1, 2, 3], [1.0, 2.0], [True],
    [3, 2, 1], [1, 1], [1, 2, 4], [-1, 1], {}, {"a": 1}, 2**64, 2**64 + 1, -(2**63),
    10**30, 1e300,
]).map(copy.deepcopy)
# Values whose text is long: no message may grow with them.
LONG = hs.sampled_from([10**4000, -(10**4000), 2**1000, "x" * 2000, ["a" * 1500],
                        {"k" * 1200: 1}, [1] * 500, list(range(-500, 0)), "\n" * 700]
                       ).map(copy.deepcopy)
LONG_TEXT = hs.tuples(hs.text(max_size=10), hs.characters(codec="utf-8"),
                      hs.integers(600, 1500)).map(lambda t: t[0] + t[1] * t[2])
PY_VALUES = hs.one_of(NEAR, hs.integers(-3, 70), hs.lists(hs.integers(-2, 6), max_size=5),
                      JSON_VALUES, LONG)
# Tokens written into the JSON text as is: not JSON (NaN, Infinity), over Python's digit
# limit, out of float range (read as inf) and -0 (an int to Python, a float to serde).
TOKENS = hs.sampled_from(["NaN", "Infinity", "-Infinity", "1" + "0" * 5000, "1e999",
                          "-1e999", "-0"])
TOKEN_VALUE = {"1e999": math.inf, "-1e999": -math.inf, "-0": -0.0}
SENTINEL = "@@fuzz-token@@"


def token_problem(token: str | None, where: str) -> str | None:
    """The JSON-level error a token causes (``where`` opens the message), or None when it
    parses (to TOKEN_VALUE)."""
    if token in ("NaN", "Infinity", "-Infinity"):
        return f"{where}{token} is not valid JSON"
    if token is not None and token.startswith("1000"):
        return f"{where}Exceeds the limit (4300 digits) for integer string conversion"
    return None


def dumps_with(obj: Any, token: str | None) -> str:
    text = json.dumps(obj)
    if token is not None:
        assert text.count(json.dumps(SENTINEL)) == 1
        text = text.replace(json.dumps(SENTINEL), token)
    return text


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        obj = obj[key]
    obj[last] = value


# ------------------------------------------------------------------- truncation, flips


@FUZZ
@given(data=hs.data())
def test_truncated_at_any_byte(env: Env, data: hs.DataObject) -> None:
    cut = data.draw(hs.integers(0, len(env.blob) - 1), label="cut")
    if cut < 8:
        frag = f"not a safetensors file (file is {cut} bytes, too short"
    elif cut < 8 + env.n:
        frag = (f"not a safetensors file (header length {env.n} exceeds file size {cut} minus "
                "the 8-byte length prefix)")
    else:
        frag = "file is truncated: tensor '"
    expect(env, frag, env.blob[:cut], **MODEL_KW)


def decode_expected(env: Env, data: bytes) -> tuple[dict[str, np.ndarray], str | None]:
    """The tensors a data section holds (per the valid header) and the error they cause."""
    arrays = {}
    for name in TENSOR_NAMES:
        begin, end = env.header[name]["data_offsets"]
        arrays[name] = np.frombuffer(data[begin:end], dtype="<f4")
    for name in TENSOR_NAMES:
        bad = int((~np.isfinite(arrays[name])).sum())
        if bad:
            return arrays, f"tensor '{name}' contains NaN or Inf ({bad} of {arrays[name].size} values)"
    if not (arrays["mean_norms"] > 0).all():
        return arrays, "tensor 'mean_norms' must be > 0 everywhere"
    return arrays, None


@FUZZ
@given(data=hs.data())
def test_bit_and_byte_flips(env: Env, data: hs.DataObject) -> None:
    """Flip bits or overwrite bytes in the length prefix, the header or the data."""
    buf = bytearray(env.blob)
    regions = {"prefix": (0, 7), "header": (8, 8 + env.n - 1), "data": (8 + env.n, len(buf) - 1)}
    touched = set()
    mode = data.draw(hs.sampled_from(["prefix", "header", "data", "data", "mixed"]), label="mode")
    for _ in range(data.draw(hs.integers(1, 4), label="flips")):
        region = mode if mode != "mixed" else data.draw(hs.sampled_from(list(regions)))
        pos = data.draw(hs.integers(*regions[region]))
        if data.draw(hs.booleans(), label="bit flip"):
            buf[pos] ^= 1 << data.draw(hs.integers(0, 7))
        else:
            buf[pos] = data.draw(hs.integers(0, 255) | hs.sampled_from(list(b'0123456789-.,:[]{}" ')))
        touched.add(region)
    blob = bytes(buf)
    result, problem = load(env, blob, **MODEL_KW)
    if touched == {"data"}:  # the header is intact: the outcome is exactly predictable
        arrays, want = decode_expected(env, blob[8 + env.n :])
        if want is None:
            assert problem is None, problem
            for name in TENSOR_NAMES:
                assert np.array_equal(result[0][name].numpy().reshape(-1), arrays[name]), name
        else:
            assert problem is not None and want in problem, (want, problem)
    elif problem is not None:
        assert known(problem), problem
    if blob == env.blob:
        assert problem is None


# ------------------------------------------------------------------------ dtypes, NaN

DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int8: "I8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
          torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3"}


@FUZZ
@given(changes=hs.dictionaries(hs.sampled_from(TENSOR_NAMES), hs.sampled_from(list(DTYPES)),
                               min_size=1, max_size=4))
def test_wrong_dtypes(env: Env, changes: dict[str, torch.dtype]) -> None:
    """Real safetensors files with tensors stored as f16/bf16/f64/ints/bool/f8."""
    tensors = {k: v.clone() for k, v in env.tensors.items()}
    for name, dtype in changes.items():
        tensors[name] = tensors[name].to(dtype)
    env.path.write_bytes(st.save(tensors, metadata={"svf": json.dumps(env.meta)}))
    first = next(n for n in TENSOR_NAMES if n in changes)
    expect(env, f"tensor '{first}' has dtype {DTYPES[changes[first]]}, expected F32 (float32)",
           **MODEL_KW)


@FUZZ
@given(name=hs.sampled_from(TENSOR_NAMES),
       dtype=hs.text(max_size=12) | JSON_VALUES | hs.sampled_from(["f32", "F32 ", "FLOAT32"]))
def test_declared_dtype_strings(env: Env, name: str, dtype: Any) -> None:
    """Any declared dtype but "F32" is refused by name, before a byte of data is read."""
    assume(dtype != "F32")
    header = copy.deepcopy(env.header)
    header[name]["dtype"] = dtype
    expect(env, f"tensor '{name}' has dtype ", craft(header, env.data), **MODEL_KW)


NAN_BITS = hs.sampled_from([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF])
NON_FINITE = (hs.sampled_from([math.nan, math.inf, -math.inf])
              | NAN_BITS.map(lambda b: struct.unpack("<f", struct.pack("<I", b))[0]))
NON_POSITIVE = hs.sampled_from([0.0, -0.0, -1.0, -1e-45, -3.4e38])


@FUZZ
@given(data=hs.data())
def test_nan_inf_weights_in_each_tensor(env: Env, data: hs.DataObject) -> None:
    """NaN (any payload), +-Inf in any tensor, at any position; non-positive mean norms."""
    tensors = {k: v.clone() for k, v in env.tensors.items()}
    poisoned = data.draw(hs.lists(hs.sampled_from(TENSOR_NAMES), min_size=0, max_size=3,
                                  unique=True), label="poisoned")
    for name in poisoned:
        flat = tensors[name].view(-1)
        for i in data.draw(hs.lists(hs.integers(0, flat.numel() - 1), min_size=1, max_size=4,
                                    unique=True)):
            flat[i] = data.draw(NON_FINITE)
    norms = data.draw(hs.lists(hs.integers(0, len(TRAIN) - 1), max_size=2, unique=True))
    for i in norms:
        tensors["mean_norms"][i] = data.draw(NON_POSITIVE)
    assume(poisoned or norms)
    env.path.write_bytes(st.save(tensors, metadata={"svf": json.dumps(env.meta)}))
    bad = [n for n in TENSOR_NAMES if not bool(torch.isfinite(tensors[n]).all())]
    if bad:
        count = int((~torch.isfinite(tensors[bad[0]])).sum())
        want = f"tensor '{bad[0]}' contains NaN or Inf ({count} of {tensors[bad[0]].numel()} values)"
    else:
        want = "tensor 'mean_norms' must be > 0 everywhere (mean activation norms)"
    expect(env, want, **MODEL_KW)


# -------------------------------------------------------------- huge shapes, offsets

HUGE = hs.integers(2**31, 2**64) | hs.integers(2**64, 2**200) | hs.sampled_from(
    [2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30])
DIMS = hs.lists(hs.integers(0, 64) | HUGE, max_size=4)


@FUZZ
@given(data=hs.data())
def test_huge_declared_shapes_and_offsets(env: Env, data: hs.DataObject) -> None:
    """Huge shapes (with or without metadata that agrees) and huge offsets are refused from
    the header alone: safetensors is never called and the Python heap stays small."""
    header = copy.deepcopy(env.header)
    meta = copy.deepcopy(env.meta)
    name = data.draw(hs.sampled_from(TENSOR_NAMES), label="tensor")
    want: str | tuple[str, ...]
    variant = data.draw(hs.sampled_from(["shape", "meta_agrees", "offsets", "prefix",
                                         "max_bytes"]), label="variant")
    kwargs: dict[str, Any] = {}
    if variant == "shape":
        dims = data.draw(DIMS.filter(lambda d: any(x > 64 for x in d)))
        header[name]["shape"] = dims
        want = f"tensor '{name}' has shape ("
    elif variant == "meta_agrees":  # R is (r, hidden_size): make the metadata say so
        name = "R"
        r, d = data.draw(HUGE), data.draw(HUGE | hs.just(D))
        header["R"]["shape"] = [r, d]
        meta["hparams"]["r"], meta["model"]["hidden_size"] = r, d
        begin = header["R"]["data_offsets"][0]
        if data.draw(hs.booleans(), label="offsets agree"):
            header["R"]["data_offsets"] = [begin, begin + r * d * 4]
            want = "file is truncated: tensor 'R' data ends at byte "
        else:
            want = f"tensor 'R' data_offsets [{begin}, "
    elif variant == "offsets":
        b0, e0 = env.header[name]["data_offsets"]
        begin = data.draw(hs.integers(0, len(env.data)) | hs.integers(0, 2**70) | HUGE)
        size = data.draw(hs.just(e0 - b0) | hs.integers(-(2**70), 2**70) | HUGE)
        header[name]["data_offsets"] = [begin, begin + size]
        assume([begin, begin + size] != [b0, e0])
        if size < 0:
            want = f"tensor '{name}' has invalid data_offsets"
        elif size != e0 - b0:
            want = f"tensor '{name}' data_offsets ["
        elif begin + size > len(env.data):
            want = f"file is truncated: tensor '{name}' data ends at byte"
        else:
            want = ("overlaps the previous tensor", "leaves a gap")
    elif variant == "prefix":  # the u64 header length itself (drawn below)
        want = "not a safetensors file (header length "
    else:
        kwargs = {"max_bytes": data.draw(hs.integers(1, len(env.blob) - 1))}
        want = "over the max_bytes limit of"
    header["__metadata__"]["svf"] = json.dumps(meta)
    blob = craft(header, env.data)
    if variant == "prefix":
        prefix = data.draw(hs.integers(len(blob) - 7, 2**64 - 1), label="header length")
        blob = struct.pack("<Q", prefix) + blob[8:]
    env.path.write_bytes(blob)
    env.spy.forbid = True
    tracemalloc.start()
    try:
        expect(env, want, **(kwargs or MODEL_KW))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        env.spy.forbid = False
    assert peak < 64 * len(blob) + (1 << 20), peak


@pytest.mark.parametrize("fill", ["objects", "nesting", "strings"])
def test_largest_header_parses_in_bounded_memory(env: Env, fill: str) -> None:
    """A header just under the cap, filled with the JSON that costs the most memory per
    byte, is parsed and refused within 48 MiB of Python heap (the former 100 MiB cap let
    such a header cost ~2.6 GB: 8 MiB of ``[{},{},...]`` peaked at 210 MiB)."""
    header = copy.deepcopy(env.header)
    budget = artifacts.MAX_HEADER_BYTES - len(json.dumps(header)) - 64
    if fill == "objects":
        header["pad"] = "@PAD@"
        text = json.dumps(header).replace('"@PAD@"', "[" + "{}," * (budget // 3 - 1) + "{}]")
        want = "unexpected tensor 'pad'"
    elif fill == "nesting":
        header["pad"] = "@PAD@"
        text = json.dumps(header).replace('"@PAD@"', "[" * (budget // 2) + "]" * (budget // 2))
        want = "header is not valid UTF-8 JSON: JSON nested too deeply"
    else:
        header["__metadata__"]["svf"] = json.dumps({**env.meta, "concept": "x" * budget})
        text = json.dumps(header)
        want = "metadata field 'concept' must be a non-empty string of at most 200"
    blob = craft(text, env.data)
    assert 8 + artifacts.MAX_HEADER_BYTES - 1024 < len(blob) - len(env.data)
    assert len(blob) - len(env.data) - 8 <= artifacts.MAX_HEADER_BYTES
    env.path.write_bytes(blob)
    tracemalloc.start()
    try:
        expect(env, want, **MODEL_KW)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 * 2**20, peak


# ------------------------------------------------------------ names and missing keys

NAME_TEXT = hs.text(min_size=1, max_size=20) | LONG_TEXT


@FUZZ
@given(drop=hs.just([]) | hs.lists(hs.sampled_from(TENSOR_NAMES), unique=True, max_size=10),
       extra=hs.lists(NAME_TEXT.filter(lambda s: s not in TENSOR_NAMES and s != "__metadata__"),
                      unique=True, max_size=3))
def test_missing_and_extra_tensors(env: Env, drop: list[str], extra: list[str]) -> None:
    assume(drop or extra)
    tensors = {k: v for k, v in env.tensors.items() if k not in drop}
    tensors.update({name: torch.zeros(2) for name in extra})
    env.path.write_bytes(st.save(tensors, metadata={"svf": json.dumps(env.meta)}))
    missing = [n for n in TENSOR_NAMES if n in drop]
    if missing:
        want = f"missing tensor '{missing[0]}'"
        if len(missing) > 1:
            want += f" (and {len(missing) - 1} more: {missing[1:]})"
    else:
        want = "unexpected tensor " + trimmed(repr(min(extra)))
    expect(env, want, **MODEL_KW)


META_LEVELS = {
    "": artifacts._META_KEYS, "model": artifacts._MODEL_KEYS, "hparams": artifacts._HPARAM_KEYS,
}


@FUZZ
@given(data=hs.data())
def test_missing_and_extra_metadata_keys(env: Env, data: hs.DataObject) -> None:
    """Drop and add keys at one level: metadata root, model, hparams, the safetensors
    ``__metadata__`` map, or one tensor's header entry."""
    level = data.draw(hs.sampled_from(["", "model", "hparams", "__metadata__", "entry"]))
    header = copy.deepcopy(env.header)
    meta = copy.deepcopy(env.meta)
    if level == "entry":
        name = data.draw(hs.sampled_from(TENSOR_NAMES))
        target, keys = header[name], ("dtype", "shape", "data_offsets")
    elif level == "__metadata__":
        target, keys = header["__metadata__"], ("svf",)
    else:
        target = meta[level] if level else meta
        keys = META_LEVELS[level]
    drop = data.draw(hs.just([]) | hs.lists(hs.sampled_from(keys), unique=True,
                                            max_size=len(keys)))
    extra = data.draw(hs.lists((hs.text(max_size=12) | LONG_TEXT).filter(lambda k: k not in keys),
                               unique=True, max_size=3))
    assume(drop or extra)
    for key in drop:
        del target[key]
    for key in extra:
        target[key] = data.draw(hs.text(max_size=5) if level == "__metadata__" else JSON_VALUES)
    if level == "entry":
        want = f"tensor '{name}' header entry must be an object with exactly"
    elif level == "__metadata__":
        want = ("safetensors metadata has no 'svf' key" if drop
                else "unexpected safetensors metadata key " + trimmed(repr(extra[0])))
    else:
        prefix = f"{level}." if level else ""
        missing = [k for k in keys if k in drop]
        want = (f"missing metadata field '{prefix}{missing[0]}'" if missing
                else f"unexpected metadata field '{prefix}{trimmed(extra[0])}")
    header["__metadata__"] = dict(header["__metadata__"])
    if "svf" in header["__metadata__"]:
        header["__metadata__"]["svf"] = json.dumps(meta)
    expect(env, want, craft(header, env.data), **MODEL_KW)


# ------------------------------------------------------------------ wrong JSON types

META_PATHS = ["format", "format_version", "concept", "model", "model.name",
              "model.hidden_size", "model.num_layers", "train_layers", "steer_layers",
              "hparams", "hparams.r", "hparams.de", "hparams.m", "hparams.eps",
              "hparams.activation", "default_strength", "metrics"]
INCREASING = "must be a strictly increasing list of ints"


def shown(v: int) -> str:
    """An int as messages show it: huge ones by size, long ones shortened."""
    return f"<int of {v.bit_length()} bits>" if v.bit_length() > 256 else trimmed(str(v), 40)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _layers_ok(v: Any) -> bool:
    return (isinstance(v, list) and len(v) > 0 and all(_int(x) for x in v)
            and all(a < b for a, b in itertools.pairwise(v)))


def meta_oracle(path: str, v: Any) -> str | None:
    """The problem that metadata field ``path`` set to ``v`` must produce (None: loads)."""
    field = f"metadata field '{path}'"
    if path == "format":
        return None if v == "svf-field" else f"{field} must be 'svf-field'"
    if path == "format_version":
        if not _int(v):
            return f"{field} must be an int, got"
        if v in (1, 2):  # the field's metadata holds fields that these versions lack
            return f"unexpected metadata field '{'default_direction' if v == 1 else 'natural'}'"
        return None if v == 3 else "unsupported format_version"
    if path in ("concept", "model.name", "hparams.activation") and not isinstance(v, str):
        return f"{field} must be a string, got"
    if path == "concept":
        return None if 0 < len(v) <= 200 else f"{field} must be a non-empty string of at most 200"
    if path == "model.name":
        return None
    if path == "hparams.activation":
        return None if v == "gelu_tanh" else f"{field} must be one of ['gelu_tanh']"
    if path in ("model", "hparams", "metrics"):
        if not isinstance(v, dict):
            return f"{field} must be a JSON object (dict), got"
        if path == "metrics":
            return None
        keys = META_LEVELS[path]
        missing = [k for k in keys if k not in v]
        if missing:
            return f"missing metadata field '{path}.{missing[0]}'"
        extra = [k for k in v if k not in keys]
        assume(extra)  # (a random dict with exactly the right keys: not a type error)
        return f"unexpected metadata field '{path}.{trimmed(extra[0])}"
    if path in ("model.hidden_size", "model.num_layers", "hparams.r", "hparams.de", "hparams.m"):
        if not _int(v) or v < 1:
            return f"{field} must be an int >= 1, got"
        if path == "model.num_layers":
            if v <= TRAIN[-1]:
                return (f"metadata field 'train_layers' has layer {next(t for t in TRAIN if t >= v)}"
                        ", out of range")
            return None if v == NUM_LAYERS else f"field is for a model with {shown(v)}"
        if path == "model.hidden_size":
            return None if v == D else f"tensor 'R' has shape ({R}, {D}), expected ({R}, "
        if path == "hparams.r":
            return None if v == R else f"tensor 'R' has shape ({R}, {D}), expected ("
        if path == "hparams.de":
            return None if v == DE else f"tensor 'layer_emb' has shape (3, {DE}), expected (3, "
        return None if v == M else f"tensor 'W1' has shape ({M}, {R}), expected ("
    if path in ("train_layers", "steer_layers"):
        if not _layers_ok(v):
            return f"{field} {INCREASING}"
        if path == "steer_layers":
            return None if set(v) <= set(TRAIN) else f"{field} must be a subset of train_layers"
        out = [x for x in v if not 0 <= x < NUM_LAYERS]
        if out:
            return f"{field} has layer {shown(out[0])}"
        if not set(STEER) <= set(v):
            return "metadata field 'steer_layers' must be a subset of train_layers"
        return None if len(v) == len(TRAIN) else "tensor 'layer_emb' has shape (3, 3), expected ("
    if path == "hparams.eps":
        f = _finite(v)
        return None if f is not None and f > 0 else f"{field} must be a finite number > 0"
    assert path == "default_strength"
    return None if _finite(v) is not None else f"{field} must be a finite number"


@FUZZ
@given(path=hs.sampled_from(META_PATHS), value=PY_VALUES, token=hs.none() | TOKENS)
def test_wrong_json_types_in_metadata(env: Env, path: str, value: Any, token: str | None) -> None:
    """Every metadata field set to null, a list, a dict, a string, a bool, a float, a huge,
    zero or negative int, or a non-JSON token (NaN, Infinity, 5000 digits, 1e999, -0)."""
    meta = copy.deepcopy(env.meta)
    set_path(meta, path, SENTINEL if token is not None else value)
    want = token_problem(token, "metadata 'svf' is not valid JSON (")
    if want is None:
        value = TOKEN_VALUE[token] if token else value
        want = meta_oracle(path, value)
    result, problem = load(env, with_meta(env, dumps_with(meta, token)), **MODEL_KW)
    if want is None:  # a value of the right type after all: it loads, normalised
        assert problem is None, (path, value, problem)
        got = result[1]
        for key in path.split("."):
            got = got[key]
        if path in ("hparams.eps", "default_strength"):
            assert type(got) is float and got == float(value)
        else:
            assert got == value
    else:
        assert problem is not None and want in problem, (path, value, token, want, problem)


HEADER_PATHS = ["entry", "dtype", "shape", "data_offsets"]


def header_oracle(env: Env, kind: str, name: str, v: Any) -> str | None:
    tensor = f"tensor '{name}'"
    if kind == "entry":
        assume(not (isinstance(v, dict) and set(v) == {"dtype", "shape", "data_offsets"}))
        return f"{tensor} header entry must be an object with exactly"
    if kind == "dtype":
        return None if v == "F32" else f"{tensor} has dtype "
    if kind == "shape":
        if not isinstance(v, list) or not all(_int(x) and x >= 0 for x in v):
            return f"{tensor} has an invalid shape"
        return None if v == env.header[name]["shape"] else f"{tensor} has shape ("
    if (not isinstance(v, list) or len(v) != 2 or not all(_int(x) for x in v)
            or not 0 <= v[0] <= v[1]):
        return f"{tensor} has invalid data_offsets"
    b0, e0 = env.header[name]["data_offsets"]
    if v == [b0, e0]:
        return None
    if v[1] - v[0] != e0 - b0:
        return f"{tensor} data_offsets ["
    if v[1] > len(env.data):
        return f"file is truncated: {tensor} data ends at byte"
    return "data_offsets ["  # overlaps the previous tensor / leaves a gap


@FUZZ
@given(kind=hs.sampled_from(HEADER_PATHS + ["__metadata__", "svf"]),
       name=hs.sampled_from(TENSOR_NAMES), value=PY_VALUES, token=hs.none() | TOKENS)
def test_wrong_json_types_in_header(env: Env, kind: str, name: str, value: Any,
                                    token: str | None) -> None:
    """The same values for each tensor entry (whole, dtype, shape, data_offsets), for the
    safetensors ``__metadata__`` map and for its ``svf`` text."""
    header = copy.deepcopy(env.header)
    put = SENTINEL if token is not None else value
    if kind == "entry":
        header[name] = put
    elif kind in HEADER_PATHS:
        header[name][kind] = put
    elif kind == "__metadata__":
        header["__metadata__"] = put
    else:
        header["__metadata__"]["svf"] = put
    want = token_problem(token, "not a safetensors file (header is not valid UTF-8 JSON: ")
    if want is None:
        v = TOKEN_VALUE[token] if token else value
        if kind in HEADER_PATHS:
            want = header_oracle(env, kind, name, v)
        elif kind == "__metadata__":
            if v is None or (isinstance(v, dict) and "svf" not in v):
                want = "safetensors metadata has no 'svf' key"
            elif not isinstance(v, dict):
                want = "safetensors '__metadata__' must map strings to strings"
            else:
                assume(False)
        elif not isinstance(v, str):
            want = "metadata 'svf' must be a string, got"
        else:
            try:
                parsed = json.loads(v)
            except ValueError:
                want = "metadata 'svf' is not valid JSON"
            else:
                want = ("metadata must be a JSON object" if not isinstance(parsed, dict)
                        else "missing metadata field 'format'" if "format" not in parsed
                        else None)
                assume(want is not None)
    _, problem = load(env, craft(dumps_with(header, token), env.data), **MODEL_KW)
    if want is None:
        assert problem is None, problem
    else:
        assert problem is not None and want in problem, (kind, name, value, token, want, problem)


@FUZZ
@given(data=hs.data())
def test_random_json_anywhere(env: Env, data: hs.DataObject) -> None:
    """1-3 random JSON values at random places (no oracle): a known problem or a load."""
    header = copy.deepcopy(env.header)
    meta = copy.deepcopy(env.meta)
    for _ in range(data.draw(hs.integers(1, 3))):
        where = data.draw(hs.sampled_from(["tensor", "tensor", "meta", "model", "hparams"]))
        value = data.draw(PY_VALUES)
        if where == "tensor":
            name = data.draw(hs.sampled_from([*TENSOR_NAMES, "extra"]))
            key = data.draw(hs.sampled_from(["dtype", "shape", "data_offsets", "whole"]))
            if key == "whole" or not isinstance(header.get(name), dict):
                header[name] = value
            else:
                header[name][key] = value
        else:
            target = meta if where == "meta" else meta.get(where)
            if not isinstance(target, dict):
                meta[where] = value
                continue
            target[data.draw(hs.sampled_from([*sorted(target), "extra"]))] = value
    header["__metadata__"]["svf"] = json.dumps(meta)
    _, problem = load(env, craft(header, env.data), **MODEL_KW)
    assert problem is None or known(problem), problem


# ------------------------------------------------------- JSON encodings (parser parity)


@FUZZ
@given(data=hs.data())
def test_json_encodings_agree_with_safetensors(env: Env, data: hs.DataObject) -> None:
    """Re-encoded headers (key order, whitespace, escapes, padding) load exactly like the
    original; the JSON that Python reads but safetensors' serde parser refuses (a lone
    surrogate escape, ``-0``, a BOM, a trailing NUL) is refused by our checks first."""
    header = copy.deepcopy(env.header)
    meta = copy.deepcopy(env.meta)
    if data.draw(hs.booleans(), label="shuffle"):
        keys = data.draw(hs.permutations(list(header)))
        header = {k: header[k] for k in keys}
    anomaly = data.draw(hs.sampled_from([None, None, "surrogate_meta", "surrogate_header",
                                         "minus_zero", "bom", "trailing_nul", "duplicate"]))
    if anomaly == "surrogate_meta":
        meta["concept"] = "a@SUR@b"
    svf = json.dumps(meta, ensure_ascii=data.draw(hs.booleans()),
                     indent=data.draw(hs.none() | hs.integers(0, 2)))
    if anomaly == "surrogate_meta":
        svf = svf.replace("@SUR@", "\\udc80")
    header["__metadata__"]["svf"] = svf
    seps = data.draw(hs.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
    text = json.dumps(header, ensure_ascii=data.draw(hs.booleans()), separators=seps,
                      indent=data.draw(hs.none() | hs.integers(0, 3)))
    text = data.draw(hs.sampled_from(["", " ", "\n", "\t\r\n "])) + text
    text += " " * data.draw(hs.integers(0, 9))
    want: str | None = None
    if anomaly == "surrogate_meta":
        want = "metadata 'svf' is not valid JSON (string 'a\\udc80b' holds a lone surrogate"
    elif anomaly == "surrogate_header":
        i = text.index('"dtype"')
        text = text[:i] + '"x\\ud800":1,' + text[i:]
        want = "not a safetensors file (header is not valid UTF-8 JSON: string 'x\\ud800'"
    elif anomaly == "minus_zero":  # the first tensor's data_offsets [0, n] become [-0, n]
        first = min(TENSOR_NAMES, key=lambda k: header[k]["data_offsets"][0])
        j = text.index("[", text.index('"data_offsets"', text.index(f'"{first}"')))
        j += len(text[j + 1 :]) - len(text[j + 1 :].lstrip()) + 1
        assert text[j] == "0"
        text = text[:j] + "-0" + text[j + 1 :]
        want = f"tensor '{first}' has invalid data_offsets [-0.0, "
    elif anomaly == "bom":
        text = "\ufeff" + text
        want = "header is not valid UTF-8 JSON: Unexpected UTF-8 BOM"
    elif anomaly == "trailing_nul":
        text += "\0"
        want = "header is not valid UTF-8 JSON: Extra data"
    elif anomaly == "duplicate":
        text = text.rstrip()[:-1] + ', "b2": ' + json.dumps(header["b2"]) + "}"
        want = "header is not valid UTF-8 JSON: duplicate key 'b2'"
    blob = craft(text, env.data)
    result, problem = load(env, blob, **MODEL_KW)
    if want is None:
        assert problem is None, problem
        tensors, loaded = result
        assert loaded == validate_metadata(env.meta)
        for name in TENSOR_NAMES:
            assert torch.equal(tensors[name], env.tensors[name])
        ref = st.load(blob)  # safetensors reads the same file the same way
        assert all(torch.equal(ref[k], tensors[k]) for k in TENSOR_NAMES)
    else:
        assert problem is not None and want in problem, (anomaly, want, problem)


# --------------------------------------------------------------- a file for another model

MODEL_SHAPES = hs.tuples(hs.sampled_from(["llama", "gpt2"]), hs.sampled_from([2, 3, 4, 6]),
                         hs.sampled_from([32, 64]))


@FUZZ
@given(data=hs.data())
def test_field_for_another_model(env: Env, data: hs.DataObject) -> None:
    """A field saved for one tiny model, loaded with ``SteeringField.load(path, model=...)``
    for another: another hidden size, fewer or more layers, layer indices out of range."""
    kind_f, layers_f, d_f = data.draw(MODEL_SHAPES, label="field's model")
    kind_t, layers_t, d_t = data.draw(MODEL_SHAPES, label="target model")
    train = sorted(data.draw(hs.sets(hs.integers(0, layers_f - 1), min_size=1), label="train"))
    steer = train[: data.draw(hs.integers(1, len(train)))]
    field = random_field(cached_model(kind_f, layers_f, d_f), layers=train, steer_layers=steer,
                         r=4, de=2, m=6, seed=data.draw(hs.integers(0, 3)))
    path = env.root / "other_model"
    field.save(path)
    target = cached_model(kind_t, layers_t, d_t)
    if d_f != d_t:
        want = f"field is for hidden_size {d_f} but the model has {d_t}"
    elif train[-1] >= layers_t:
        first = next(t for t in train if t >= layers_t)
        want = f"field train_layers contains layer {first} but the model has only {layers_t} layers"
    elif layers_f != layers_t:
        want = f"field is for a model with {layers_f} layers but the model has {layers_t}"
    else:
        note_event("loaded")
        loaded = SteeringField.load(path, target)
        assert loaded.train_layers == tuple(train) and loaded.steer_layers == tuple(steer)
        for name, tensor in field.tensors().items():
            assert torch.equal(loaded.tensors()[name], tensor), name
        return
    note_event("refused: " + re.sub(r"\d+", "N", want))
    with pytest.raises(ArtifactError) as info:
        SteeringField.load(path, target)
    msg = str(info.value)
    assert msg.startswith(f"{path / 'field.safetensors'}: ") and want in msg, (want, msg)


def test_load_with_a_non_model_is_an_argument_error(env: Env) -> None:
    env.path.write_bytes(env.blob)
    for bad in (object(), torch.nn.Linear(2, 2), "SmolLM2"):
        with pytest.raises(SVFArgumentError, match="model must be a Hugging Face decoder model"):
            SteeringField.load(env.path, bad)


def test_load_leaves_the_global_rng_alone(env: Env) -> None:
    env.path.write_bytes(env.blob)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    SteeringField.load(env.path, cached_model("llama", NUM_LAYERS, D))
    assert torch.equal(torch.random.get_rng_state(), before)
