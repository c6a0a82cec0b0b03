"""Packing fields for a layer (``svf.field_packing``): one set of rules for ``svf.steer`` and
``svf.steer_requests``, padding that changes nothing, and the shared checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import random_field, tiny_model

import svf
from svf.field_packing import (
    check_fits_model,
    field_table,
    packed_field,
)
from svf.steering_field import check_train_layers, strength_scale
from svf_kernels import SVFArgumentError, field_table_update_, field_update_


@pytest.fixture(scope="module")
def fields():
    model = tiny_model("llama")
    fa = random_field(model, steer_layers=(1, 2), seed=1, concept="a")
    fb = random_field(model, steer_layers=(2, 3), seed=2, concept="b")
    fc = random_field(model, steer_layers=(1, 2), seed=3, concept="c", m=7)  # narrower scorer
    return model, fa, fb, fc


def test_packed_field_pads_narrow_scorers_with_zero_units(fields):
    _, fa, _, fc = fields
    p = packed_field([fa, fc], 1, tau=0.5)
    a, c = fa.scorer.fold(1), fc.scorer.fold(1)
    assert p.A.shape == (2, 12, a.A.shape[1]) and p.tau == 0.5
    assert torch.equal(p.A[0], a.A) and torch.equal(p.A[1, :7], c.A)
    assert not p.A[1, 7:].any() and not p.c[1, 7:].any() and not p.w2[1, 7:].any()
    assert torch.equal(p.b2, torch.cat([a.b2.reshape(1), c.b2.reshape(1)]))


def test_table_entries_are_the_packed_fields_padded(fields):
    """Each table entry is that entry's packed field, with missing concepts at b2 = +inf."""
    _, fa, fb, fc = fields
    entries = [[fa], [fb], [fa, fc]]
    table = field_table(entries, 2, tau=0.7, normalize=False)
    assert table.A.shape[:3] == (3, 2, 12) and table.tau == 0.7 and table.normalize is False
    for f, concepts in enumerate(entries):
        p = packed_field(concepts, 2)
        C = len(concepts)
        for name in ("A", "c", "w2", "b2"):
            assert torch.equal(getattr(table, name)[f, :C], getattr(p, name)), (f, name)
        assert (table.b2[f, C:] == math.inf).all() and not table.A[f, C:].any()


def test_table_moves_rows_as_the_packed_field_does(fields):
    """Padding adds nothing: the table op with an entry's id equals the one-field op."""
    _, fa, fb, fc = fields
    entries = [[fa], [fb], [fa, fc]]
    table = field_table(entries, 2)
    h = torch.randn(6, fa.hidden_size, generator=torch.Generator().manual_seed(0)) * 3
    ids = torch.tensor([0, 1, 2, 2, 1, 0])
    alpha = torch.linspace(0.5, 2.0, 6)
    got = h.clone()
    field_table_update_(got, table.A, table.c, table.w2, table.b2, ids, alpha)
    for r in range(6):
        p = packed_field(entries[int(ids[r])], 2)
        want = h[r:r + 1].clone()
        field_update_(want, p.A, p.c, p.w2, p.b2, alpha[r:r + 1])
        torch.testing.assert_close(got[r:r + 1], want, rtol=1e-5, atol=1e-5)


def test_steer_and_steer_requests_pack_alike(fields):
    model, fa, _, fc = fields
    one = svf.steer(model, [fa, fc], tau=0.5).layer_fields[1]
    batch = svf.steer_requests(model, {"ac": [fa, fc]}, tau=0.5).steering.layer_fields[1]
    for name in ("A", "c", "w2", "b2"):
        assert torch.equal(getattr(batch, name)[0], getattr(one, name)), name


def test_strength_scale_is_the_average_over_the_entry(fields):
    _, fa, _, fc = fields
    assert strength_scale([fa], 2, "mean_norm") == fa.mean_norm(2)
    assert strength_scale([fa, fc], 2, "mean_norm") == pytest.approx((fa.mean_norm(2) + fc.mean_norm(2)) / 2)
    fa.robust_norms = fa.mean_norms * 0.25
    assert strength_scale([fa], 2, "robust") == pytest.approx(fa.mean_norm(2) * 0.25)
    with pytest.raises(SVFArgumentError, match="has no robust norms"):
        strength_scale([fa, fc], 2, "robust")  # fc has none
    with pytest.raises(SVFArgumentError, match="unit must be None or one of"):
        strength_scale([fa], 2, "median")


def test_checks_name_the_field_and_the_problem(fields):
    model, fa, _, _ = fields
    check_train_layers([fa], [0, 3])
    narrow = random_field(model, layers=(1, 2), concept="narrow")
    outside = r"layers \[3\] are outside the training layers \[1, 2\] of field 'narrow'"
    with pytest.raises(SVFArgumentError, match=outside):
        check_train_layers([fa, narrow], [1, 3])
    check_fits_model([fa], model)
    with pytest.raises(SVFArgumentError,
                       match="field 'other' is for hidden_size 32 but the model has 64"):
        check_fits_model([fa, random_field(tiny_model("llama", d=32), concept="other")], model)


def test_fields_with_different_eps_are_not_packed_together(fields):
    """A packed field and a table take one ``eps``: fields trained with another one are refused,
    not steered with the first field's ``eps``."""
    model, fa, fb, _ = fields
    other = random_field(model, concept="other")
    other.scorer.config = dataclasses.replace(other.scorer.config, eps=1e-3)
    for pack in (lambda fs: packed_field(fs, 1), lambda fs: field_table(fs, 1)):
        with pytest.raises(SVFArgumentError, match=r"different eps \[1e-06, 0.001\]"):
            pack([fa, other])
    assert packed_field([fa, fb], 1).eps == fa.scorer.config.eps
