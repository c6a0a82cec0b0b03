"""Property tests of the public op's argument checks.

Random valid argument sets must run (and match the torch reference); the same sets with one
argument broken must raise ``SVFArgumentError`` whose message names that argument, and leave
``hidden`` untouched (bad input loses nothing). Covers ``field_update_`` and
``field_table_update_`` (shapes, dtypes, devices, contiguity, strengths, tau, eps, ids).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svf_kernels import SVFArgumentError, field_table_update_, field_update_
from svf_kernels.ops.reference import field_table_update_reference, field_update_reference

EXAMPLES = int(os.environ.get("SVF_PROPERTY_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
META = torch.device("meta")  # a second device on any machine: device mismatches without a GPU


def _valid(data, table: bool) -> dict:
    """A random valid argument set (CPU, small odd sizes, any storage dtype)."""
    n = data.draw(st.integers(0, 9), label="N")
    # d >= 2: at d = 1 the RMS-normalised score is flat (its gradient is ~eps-sized rounding
    # noise), so the direction's sign differs between float32 kernels and the float64 truth
    d = data.draw(st.integers(2, 40), label="d")
    C = data.draw(st.integers(1, 3), label="C")
    m = data.draw(st.integers(1, 9), label="m")
    F = data.draw(st.integers(1, 3), label="F")
    dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), label="dtype")
    pdt = data.draw(st.sampled_from([torch.float32, dtype]), label="param dtype")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    lead = (F,) if table else ()
    args = {
        "hidden": torch.randn(n, d, generator=g).to(dtype),
        "A": (torch.randn(*lead, C, m, d, generator=g) / d**0.5).to(pdt),
        "c": torch.randn(*lead, C, m, generator=g).to(pdt),
        "w2": torch.randn(*lead, C, m, generator=g).to(pdt),
        "b2": torch.randn(*lead, C, generator=g).to(pdt),
    }
    if table:
        args["field_ids"] = torch.randint(-1, F, (n,), generator=g)
    if data.draw(st.booleans(), label="alpha tensor"):
        args["alpha"] = torch.rand(n, generator=g)
    else:
        args["alpha"] = data.draw(st.floats(-3, 3, allow_nan=False), label="alpha")
    args["tau"] = data.draw(st.floats(0.05, 10), label="tau")
    if not table and data.draw(st.booleans(), label="rows mask"):
        args["rows"] = torch.rand(n, generator=g) > 0.3
    return args


def _call(args: dict, table: bool) -> torch.Tensor:
    a = dict(args)
    pos = [a.pop(k) for k in (("hidden", "A", "c", "w2", "b2", "field_ids", "alpha") if table
                              else ("hidden", "A", "c", "w2", "b2", "alpha"))]
    return (field_table_update_ if table else field_update_)(*pos, **a)


def _breaks(args: dict, table: bool) -> list[tuple[str, object]]:
    """(argument name, a bad value) pairs for this valid set."""
    h, A = args["hidden"], args["A"]
    n, d = h.shape
    out = [
        ("hidden", h.reshape(1, n, d)),
        ("hidden", h.to(torch.int32)),
        ("hidden", h.tolist()),
        ("hidden", torch.randn(d + 1, max(n, 2)).t()[:n, :d] if d > 1 else h.to(torch.int64)),
        ("A", A[..., :-1] if d > 1 else A.expand(*A.shape[:-1], 2)),
        ("A", A.to(torch.int32)),
        ("A", A.to(META)),
        ("A", A.reshape(-1)),
        ("c", args["c"][..., :-1] if args["c"].shape[-1] > 1 else args["c"].repeat_interleave(2, -1)),
        ("c", args["c"].to(META)),
        ("w2", args["w2"].to(torch.int64)),
        ("w2", args["w2"].unsqueeze(-1)),
        ("b2", args["b2"].unsqueeze(-1)),
        ("b2", "b2"),
        ("alpha", torch.ones(n + 1)),
        ("alpha", float("nan")),
        ("alpha", float("inf")),
        ("alpha", "0.5"),
        ("alpha", torch.ones(n, device=META)),
        ("tau", 0.0),
        ("tau", -1.0),
        ("tau", float("nan")),
        ("tau", float("inf")),
        ("tau", "1"),
        ("tau", None),
        ("eps", 0.0),
        ("eps", float("nan")),
    ]
    if table:
        ids = args["field_ids"]
        F = args["A"].shape[0]
        out += [
            ("field_ids", ids.float()),
            ("field_ids", torch.zeros(n + 1, dtype=torch.long)),
            ("field_ids", ids.to(META)),
            ("field_ids", torch.full((max(n, 1),), F, dtype=torch.long)[:n] if n else [0]),
            ("field_ids", torch.full((n,), -2, dtype=torch.long) if n else None),
        ]
    else:
        out += [
            ("rows", torch.ones(n)),
            ("rows", torch.ones(n + 1, dtype=torch.bool)),
            ("rows", torch.ones(n, dtype=torch.bool, device=META)),
        ]
    return out


def _expected(args: dict, table: bool) -> tuple[torch.Tensor, torch.Tensor]:
    h = args["hidden"].clone()
    a = args["alpha"]
    alpha = a if isinstance(a, torch.Tensor) else torch.full((h.shape[0],), float(a))
    if table:
        s = field_table_update_reference(h, args["A"], args["c"], args["w2"], args["b2"],
                                         args["field_ids"], alpha, args["tau"])
    else:
        s = field_update_reference(h, args["A"], args["c"], args["w2"], args["b2"], alpha,
                                   args["tau"], rows=args.get("rows"))
    return h, s


@pytest.mark.parametrize("table", [False, True], ids=["field_update_", "field_table_update_"])
@SETTINGS
@given(data=st.data())
def test_valid_arguments_run_and_match_the_reference(table, data):
    args = _valid(data, table)
    want_h, want_s = _expected(args, table)
    h = args["hidden"]
    scores = _call(args, table)
    assert scores.shape == (h.shape[0], args["A"].shape[-3]) and scores.dtype == torch.float32
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}[h.dtype]
    torch.testing.assert_close(h.float(), want_h.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(scores, want_s, atol=1e-3, rtol=1e-3, equal_nan=True)


@pytest.mark.parametrize("table", [False, True], ids=["field_update_", "field_table_update_"])
@SETTINGS
@given(data=st.data())
def test_one_bad_argument_is_named_and_hidden_is_untouched(table, data):
    args = _valid(data, table)
    name, bad = data.draw(st.sampled_from(_breaks(args, table)), label="broken argument")
    if bad is None:  # this break does not apply to this set (e.g. ids of an empty batch)
        return
    broken = {**args, name: bad}
    h = broken["hidden"] if isinstance(broken["hidden"], torch.Tensor) else args["hidden"]
    before = h.clone()
    with pytest.raises(SVFArgumentError) as err:
        _call(broken, table)
    assert name in str(err.value), f"message does not name {name!r}: {err.value}"
    assert torch.equal(h, before)


# -- the library's entry points: steer() and steer_requests() ---------------------------------

_STEER_BREAKS = [
    ("layers", 1), ("layers", "12"), ("layers", [1.0]), ("layers", [True]), ("layers", [9]),
    ("layers", [-1]), ("layers", [1, 1]), ("layers", []),
    ("strength", float("nan")), ("strength", "0.1"), ("strength", True), ("strength", float("inf")),
    ("alpha", float("-inf")), ("alpha", "x"),
    ("tau", 0.0), ("tau", "1"), ("tau", float("nan")),
    ("refresh", 0), ("refresh", 1.5), ("refresh", True),
    ("positions", "first"), ("method", "pca"), ("normalize", "yes"), ("record_scores", 1),
]
_REQUEST_BREAKS = [
    ("layers", 1), ("layers", [9]), ("layers", ["1"]), ("tau", -1.0), ("tau", float("inf")),
    ("refresh", 0), ("positions", "everywhere"), ("normalize", None),
]


@pytest.fixture(scope="module")
def tiny_steerable():
    from helpers import random_field, tiny_model

    model = tiny_model("llama")
    return model, random_field(model, steer_layers=(1, 2))


def _snapshot(model):
    return [id(m) for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}


@SETTINGS
@given(data=st.data())
def test_steer_bad_arguments_are_named(tiny_steerable, data):
    import svf

    model, field = tiny_steerable
    name, bad = data.draw(st.sampled_from(_STEER_BREAKS), label="broken argument")
    good = {"strength": data.draw(st.floats(-1, 1), label="strength"), "layers": [1, 2]}
    kwargs = {**good, name: bad}
    if name == "alpha":
        kwargs.pop("strength")
    before = _snapshot(model)
    with pytest.raises(SVFArgumentError) as err:
        svf.steer(model, field, **kwargs).attach().detach()
    assert name in str(err.value), f"message does not name {name!r}: {err.value}"
    after = _snapshot(model)
    assert after[0] == before[0] and all(torch.equal(after[1][k], v) for k, v in before[1].items())


@SETTINGS
@given(data=st.data())
def test_steer_requests_bad_arguments_are_named(tiny_steerable, data):
    import svf

    model, field = tiny_steerable
    name, bad = data.draw(st.sampled_from(_REQUEST_BREAKS), label="broken argument")
    with pytest.raises(SVFArgumentError) as err:
        svf.steer_requests(model, {"a": field}, **{name: bad})
    assert name in str(err.value), f"message does not name {name!r}: {err.value}"


@pytest.mark.parametrize("model", [None, torch.nn.Linear(2, 2), "gpt2"])
def test_not_a_model_is_named(tiny_steerable, model):
    import svf

    _, field = tiny_steerable
    for build in (lambda: svf.steer(model, field), lambda: svf.steer_requests(model, {"a": field})):
        with pytest.raises(SVFArgumentError, match="model must be a Hugging Face decoder model"):
            build()


@pytest.mark.parametrize("fields", [None, 3, "a", []])
def test_not_fields_are_named(tiny_steerable, fields):
    import svf

    model, _ = tiny_steerable
    with pytest.raises(SVFArgumentError, match="fields must be"):
        svf.steer(model, fields)


# ------------------------------------------------------------------ module constructors

def _module_parts(data) -> dict:
    """Valid parts for PackedField / FieldTable / StaticVector / FusedSteeringField."""
    d = data.draw(st.integers(2, 40), label="d")
    C, m, F = (data.draw(st.integers(1, 3), label=k) for k in ("C", "m", "F"))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    return {"d": d, "F": F,
            "packed": (torch.randn(C, m, d, generator=g), torch.randn(C, m, generator=g),
                       torch.randn(C, m, generator=g), torch.randn(C, generator=g)),
            "table": (torch.randn(F, C, m, d, generator=g), torch.randn(F, C, m, generator=g),
                      torch.randn(F, C, m, generator=g), torch.randn(F, C, generator=g)),
            "vector": torch.randn(d, generator=g) + 0.1}


_FIELD_BREAKS = [  # (argument, position in (A, c, w2, b2) or keyword, bad value)
    ("A", 0, "A"), ("A", 0, None), ("A", 0, "int"), ("c", 1, "list"), ("w2", 2, "shape"),
    ("b2", 3, "int"), ("tau", "tau", 0.0), ("tau", "tau", float("nan")), ("eps", "eps", -1.0),
    ("normalize", "normalize", 1),
]


@SETTINGS
@given(data=st.data())
def test_row_field_constructors_name_the_bad_argument(data):
    from svf_kernels import FieldTable, PackedField

    parts = _module_parts(data)
    cls, key = data.draw(st.sampled_from([(PackedField, "packed"), (FieldTable, "table")]), label="class")
    tensors = list(parts[key])
    cls(*tensors, tau=0.5)  # the valid set constructs
    name, where, bad = data.draw(st.sampled_from(_FIELD_BREAKS), label="broken argument")
    kwargs = {}
    if isinstance(where, int):
        t = tensors[where]
        tensors[where] = {"A": "A", "int": t.to(torch.int32), "list": t.tolist(),
                          "shape": t.unsqueeze(-1)}.get(bad, bad)
    else:
        kwargs[where] = bad
    with pytest.raises(SVFArgumentError) as err:
        cls(*tensors, **kwargs)
    assert name in str(err.value), f"message does not name {name!r}: {err.value}"


@SETTINGS
@given(data=st.data())
def test_fused_steering_field_names_the_bad_argument(data):
    from svf_kernels import FieldTable, FusedSteeringField, PackedField, StaticVector

    parts = _module_parts(data)
    layer = torch.nn.Identity()
    packed, table = PackedField(*parts["packed"]), FieldTable(*parts["table"])
    FusedSteeringField(layer, packed, 0.5)
    FusedSteeringField(layer, table, torch.ones(3), field_ids=torch.tensor([0, -1, parts["F"] - 1]))
    FusedSteeringField(layer, StaticVector(parts["vector"]), -1, last_only=True)
    name, kwargs = data.draw(st.sampled_from([
        ("layer", {"layer": "decoder"}), ("field", {"field": None}), ("field", {"field": parts["vector"]}),
        ("alpha", {"alpha": float("nan")}), ("alpha", {"alpha": "0.5"}), ("alpha", {"alpha": torch.ones(2, 2)}),
        ("alpha", {"alpha": torch.ones(2, dtype=torch.long)}), ("planner", {"planner": 3}),
        ("field_ids", {"field_ids": torch.zeros(2)}), ("field_ids", {"field_ids": torch.zeros(2, dtype=torch.long)}),
        ("field_ids", {"field": table}), ("last_only", {"last_only": "yes"}),
    ]), label="broken argument")
    args = {"layer": layer, "field": packed, "alpha": 0.5, **kwargs}
    with pytest.raises(SVFArgumentError) as err:
        FusedSteeringField(args.pop("layer"), args.pop("field"), args.pop("alpha"), **args)
    assert name in str(err.value), f"message does not name {name!r}: {err.value}"


@pytest.mark.parametrize("vector,message", [
    ([1.0, 2.0], "1-D floating-point tensor"), (torch.ones(2, 3), r"1-D floating-point tensor \[d\], got \(2, 3\)"),
    (torch.ones(3, dtype=torch.long), "1-D floating-point"), (torch.zeros(4), "finite and non-zero"),
    (torch.tensor([1.0, float("inf")]), "finite and non-zero"),
])
def test_constant_field_names_the_bad_vector(vector, message):
    from svf_kernels import StaticVector

    with pytest.raises(SVFArgumentError, match=message):
        StaticVector(vector)


@pytest.mark.parametrize("backend", ["", "torch"])
def test_field_table_apply_names_bad_rows(backend, monkeypatch):
    from svf_kernels import FieldTable

    monkeypatch.setenv("SVF_BACKEND", backend)
    g = torch.Generator().manual_seed(0)
    table = FieldTable(torch.randn(2, 1, 3, 8, generator=g), torch.randn(2, 1, 3, generator=g),
                       torch.randn(2, 1, 3, generator=g), torch.randn(2, 1, generator=g))
    ids = torch.tensor([0, 1])
    for rows, message in ((torch.zeros(2, 8, dtype=torch.int32), "hidden dtype"),
                          (torch.zeros(2, 7), r"A must be \[F, C, m, 7\]"), (torch.zeros(2, 3, 8), r"hidden must be \[N, d\]")):
        before = rows.clone()
        with pytest.raises(SVFArgumentError, match=message):
            table.apply_(rows, 0.5, ids)
        assert torch.equal(rows, before)
