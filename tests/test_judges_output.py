"""The embedding judge's encoder loads and embeds without writing to stderr or warning."""

from __future__ import annotations

import warnings

from transformers.utils import logging as hf_logging

from svf.eval import judges


def test_loading_and_embedding_print_nothing(capfd):
    judges._sentence_encoder.cache_clear()  # load it here, where the output is watched
    bars = hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = judges.embed(["a tiny input", "and another"])
    assert out.shape == (2, 384)
    assert capfd.readouterr().err == ""
    assert [str(w.message) for w in caught] == []
    assert hf_logging.is_progress_bar_enabled() == bars  # transformers' bars as they were
