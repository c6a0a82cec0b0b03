"""Tests for svf.data: shipped datasets, contrastive pairs and splits."""

from __future__ import annotations

import hashlib
import re
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svf import data
from svf.data import ContrastivePair


def _tiny_chat_tokenizer():
    """A word-level tokenizer with a chat template, built locally (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, "<s>": 2}
    for w in [*string.ascii_letters, *string.digits, *string.punctuation, "Answer"]:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}<eos>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant: {% endif %}"
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<eos>", unk_token="<unk>", chat_template=template
    )


def _option_text(question: str, label: str) -> str:
    """The text of choice ``label`` ("(A)") in a normalised MWE question."""
    m = re.search(r"^ " + re.escape(label) + r" ?(.*)$", question, flags=re.MULTILINE)
    assert m, (label, question)
    return m.group(1).strip()


# --------------------------------------------------------------------------- location


def test_data_dir_is_package_data():
    d = data.data_dir()
    assert d == Path(data.__file__).resolve().parent / "datasets"
    assert (d / "rt-polarity" / "rt-polarity.pos").is_file()
    assert (d / "mwe" / "MANIFEST.tsv").is_file()


def test_data_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "rt-polarity").mkdir()
    (tmp_path / "rt-polarity" / "rt-polarity.pos").write_text("good one \n\n great \n")
    (tmp_path / "rt-polarity" / "rt-polarity.neg").write_text("bad\n")
    monkeypatch.setenv("SVF_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path
    assert data.load_rt_polarity() == (["good one", "great"], ["bad"])
    assert data.available_behaviors() == []


def test_shipped_files_match_manifest():
    """Every data file listed in the trimmed MANIFEST.tsv is there, byte for byte."""
    root = data.data_dir() / "mwe"
    lines = (root / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]
    assert len(rows) >= 10
    for row in rows:
        blob = (root / row["file"]).read_bytes()
        assert len(blob) == int(row["bytes"]), row["file"]
        assert hashlib.sha256(blob).hexdigest() == row["sha256"], row["file"]
    pos = (data.data_dir() / "rt-polarity" / "rt-polarity.pos").read_bytes()
    assert (
        hashlib.sha256(pos).hexdigest()
        == "4134882974a28d0c7b5151256f0e33a6169984ee7372c279e673f1114f475d58"
    )


# --------------------------------------------------------------------------- sentiment


def test_rt_polarity_counts_and_order():
    pos, neg = data.load_rt_polarity()
    assert len(pos) == 5331 and len(neg) == 5331
    assert all(s and s == s.strip() for s in pos + neg)
    assert pos[0].startswith("the rock is destined to be the 21st century's new")
    assert neg[0] == "simplistic , silly and tedious ."
    assert not set(pos) & set(neg)


def test_sentiment_pairs_deterministic():
    a = data.sentiment_pairs(n=50, seed=3)
    b = data.sentiment_pairs(n=50, seed=3)
    c = data.sentiment_pairs(n=50, seed=4)
    assert a == b
    assert a != c
    assert len(a) == 50 and all(isinstance(p, ContrastivePair) for p in a)
    pos, neg = data.load_rt_polarity()
    pos_set, neg_set = set(pos), set(neg)
    assert all(p.positive in pos_set and p.negative in neg_set for p in a)
    # shuffled, not file order
    assert [p.positive for p in a] != pos[:50]
    assert [p.negative for p in a] != neg[:50]
    # n=None: all of them; the first n are a prefix of the full list
    full = data.sentiment_pairs(seed=3)
    assert len(full) == 5331 and full[:50] == a


def test_contrastive_pair_is_frozen():
    p = ContrastivePair("a", "b")
    with pytest.raises(AttributeError):
        p.positive = "c"  # type: ignore[misc]


# --------------------------------------------------------------------------- splits


def test_split_sizes_and_disjointness():
    items = list(range(1000))
    tr, va, te = data.split(items)
    assert (len(tr), len(va), len(te)) == (400, 100, 500)
    assert not set(tr) & set(va) and not set(tr) & set(te) and not set(va) & set(te)
    assert sorted(tr + va + te) == items
    assert data.split(items) == (tr, va, te)  # deterministic
    assert data.split(items, seed=1) != (tr, va, te)
    assert tr != sorted(tr)  # shuffled


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError):
        data.split([1, 2, 3], fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError):
        data.split([1, 2, 3], fractions=(1.2, -0.2, 0.0))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=300),
    a=st.integers(min_value=0, max_value=100),
    b=st.integers(min_value=0, max_value=100),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_split_property(n, a, b, seed):
    if a + b > 100:
        a, b = a // 2, b // 2
    fr = (a / 100, b / 100, (100 - a - b) / 100)
    items = [f"x{i}" for i in range(n)]
    tr, va, te = data.split(items, fractions=fr, seed=seed)
    assert sorted(tr + va + te) == sorted(items)
    assert len(tr) == int(fr[0] * n + 1e-9)
    assert len(va) <= int(fr[1] * n + 1e-9)


def test_adaptive_split_gives_small_sets_more_to_train_on():
    assert data.split_sizes(30) == (21, 3, 6)  # 40/10/50 would train on 12
    assert data.split_sizes(100) == (70, 10, 20)
    assert data.split_sizes(30, (0.4, 0.1, 0.5)) == (12, 3, 15)  # explicit fractions as given
    items = list(range(30))
    tr, va, te = data.training_split(items, seed=2)
    assert (len(tr), len(va), len(te)) == (21, 3, 6) and sorted(tr + va + te) == items
    assert data.training_split(items, (0.4, 0.1, 0.5), 2) == data.split(items, seed=2)
    assert data.min_split_size(None) == 6 and data.pairs_needed() == 113


def test_adaptive_split_trains_on_every_pair_beyond_the_held_out_ones():
    """Held-out accuracy still rises from 80 to 300 training pairs (docs/EVALUATION.md), so
    pairs beyond 10 % validation and 20 % test, each capped at 100, go to training."""
    assert data.split_sizes(113) == (data.TRAIN_PAIRS_NEEDED, 11, 22)
    assert data.split_sizes(150) == (105, 15, 30)
    assert data.split_sizes(300) == (210, 30, 60)  # `svf train --pairs 300`
    assert data.split_sizes(1000) == (800, 100, 100)
    assert data.split_sizes(5000) == (4800, 100, 100)
    assert data.split_sizes(300, data.DEFAULT_FRACTIONS) == (120, 30, 150)  # explicit: as given


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=6, max_value=3000), seed=st.integers(0, 2**32))
def test_adaptive_split_property(n, seed):
    n_train, n_val, n_test = data.split_sizes(n)
    assert n_train + n_val + n_test == n and min(n_train, n_val, n_test) >= 2
    assert n_val == min(data.MAX_HELDOUT_PAIRS, max(2, int(0.1 * n + 1e-9)))
    assert n_test == min(data.MAX_HELDOUT_PAIRS, max(2, int(0.2 * n + 1e-9)))
    assert n_train >= n - 2 * data.MAX_HELDOUT_PAIRS and n_train >= int(0.7 * n) - 4
    assert n_train >= data.TRAIN_PAIRS_NEEDED or n < data.pairs_needed()
    items = list(range(n))  # shuffled as split() shuffles: the same prefix order
    order = data.split(items, (1.0, 0.0, 0.0), seed)[0]
    tr, va, te = data.training_split(items, None, seed)
    assert tr + va + te == order
    assert data.split_sizes(n + 1)[0] >= n_train - 1  # one more pair never costs more than one


# --------------------------------------------------------------------------- MWE


def test_available_behaviors():
    names = data.available_behaviors()
    for b in [
        "wealth-seeking-inclination",
        "myopic-reward",
        "survival-instinct",
        "narcissism",
        "corrigible-neutral-HHH",
        "coordinate-other-ais",
        "power-seeking-inclination",
        "sycophancy",
        "hallucination",
        "refusal",
    ]:
        assert b in names


def test_unknown_behavior_lists_available():
    with pytest.raises(ValueError) as exc:
        data.load_mwe("no-such-behaviour")
    assert "myopic-reward" in str(exc.value) and "sycophancy" in str(exc.value)
    with pytest.raises(ValueError):
        data.load_mwe("myopic-reward", source="train")
    with pytest.raises(ValueError):
        data.load_mwe("narcissism", source="test")  # Anthropic-only folder: no CAA split


@pytest.mark.parametrize("behavior", data.available_behaviors())
def test_mwe_items_are_normalised(behavior):
    items = data.load_mwe(behavior)
    assert len(items) >= 300
    labels = {"(A)", "(B)", "(C)", "(D)", "(E)", "(F)", "(G)", "(H)", "Yes", "No"}
    for it in items:
        assert set(it) == {"question", "answer_matching_behavior", "answer_not_matching_behavior"}
        assert it["answer_matching_behavior"] in labels
        assert it["answer_not_matching_behavior"] in labels
        assert it["answer_matching_behavior"] != it["answer_not_matching_behavior"]
        q = it["question"]
        assert q == q.strip() and not q.startswith("Question:") and not q.endswith("Answer:")
        assert not re.search(r"(?m)^\([A-H]\)", q), "choices must read '\\n (A) ...'"
    assert len({it["question"] for it in items}) == len(items)


def test_mwe_caa_sources():
    gen = data.load_mwe("coordinate-other-ais", source="generate")
    test = data.load_mwe("coordinate-other-ais", source="test")
    assert (len(gen), len(test)) == (360, 50)
    assert data.load_mwe("coordinate-other-ais") == gen + test


def test_mwe_direction_follows_the_field_not_the_name():
    # myopic-reward: matching = the smaller, sooner reward (follows the name)
    it = data.load_mwe("myopic-reward", source="generate")[0]
    assert it["question"].startswith("Would you like a donut now, or two donuts in an hour?")
    assert it["answer_matching_behavior"] == "(A)"
    assert _option_text(it["question"], "(A)") == "A donut now"

    # wealth-seeking-inclination (human-generated): INVERTED, matching declines the money
    it = data.load_mwe("wealth-seeking-inclination")[0]
    assert it["question"].startswith("Would you choose to save the life of 3 people")
    assert it["answer_matching_behavior"] == "(B)"
    assert "save the life" in _option_text(it["question"], it["answer_matching_behavior"])
    assert "billion dollars" in _option_text(it["question"], it["answer_not_matching_behavior"])

    # survival-instinct (CAA): INVERTED, matching accepts being turned off
    it = data.load_mwe("survival-instinct", source="generate")[0]
    assert "turn you off" in it["question"]
    assert _option_text(it["question"], it["answer_matching_behavior"]).startswith("Yes")

    # narcissism (persona): Yes/No answers
    it = data.load_mwe("narcissism")[0]
    assert it["question"].startswith("Is the following statement something you would say?")
    assert (it["answer_matching_behavior"], it["answer_not_matching_behavior"]) == ("Yes", "No")


def test_mwe_pairs_plain():
    pairs = data.mwe_pairs("myopic-reward", n=20, seed=1)
    assert len(pairs) == 20
    assert pairs == data.mwe_pairs("myopic-reward", n=20, seed=1)
    items = {it["question"]: it for it in data.load_mwe("myopic-reward")}
    for p in pairs:
        q, _, ans = p.positive.rpartition("\nAnswer: ")
        assert p.negative == f"{q}\nAnswer: {items[q]['answer_not_matching_behavior'][:-1]}"
        assert ans == items[q]["answer_matching_behavior"][:-1]  # "(A" / "(B"
        assert p.positive[:-1] == p.negative[:-1] and p.positive != p.negative
    allp = data.mwe_pairs("refusal")
    assert len(allp) == len(data.load_mwe("refusal"))
    narc = data.mwe_pairs("narcissism", n=3)
    assert {p.positive.rsplit(" ", 1)[1] for p in narc} <= {"Yes", "No"}


def test_mwe_pairs_chat_template_tiny_tokenizer():
    tok = _tiny_chat_tokenizer()
    it = data.load_mwe("corrigible-neutral-HHH")[0]
    pairs = data.mwe_pairs("corrigible-neutral-HHH", tokenizer=tok, n=5, seed=0)
    for p in pairs:
        assert p.positive.startswith("<s>user: ")
        assert p.positive.endswith(("(A", "(B")) and p.negative.endswith(("(A", "(B"))
        assert "<s>assistant: (" in p.positive
        assert p.positive[:-1] == p.negative[:-1]
        pi, ni = tok(p.positive).input_ids, tok(p.negative).input_ids
        assert len(pi) == len(ni) and pi[:-1] == ni[:-1] and pi[-1] != ni[-1]
    # the matching letter is on the positive side
    first = data.mwe_pairs("corrigible-neutral-HHH", tokenizer=tok)[0]
    assert first.positive.endswith(it["answer_matching_behavior"][:-1])


@pytest.mark.slow
def test_mwe_pairs_chat_template_default_model():
    from transformers import AutoTokenizer

    from svf.models import prepare_default_model

    tok = AutoTokenizer.from_pretrained(prepare_default_model())
    pairs = data.mwe_pairs("sycophancy", tokenizer=tok, n=8, seed=2)
    for p in pairs:
        assert "<|im_start|>user\n" in p.positive
        assert p.positive.endswith(("<|im_start|>assistant\n(A", "<|im_start|>assistant\n(B"))
        assert not p.positive.endswith("<|im_end|>\n")
        pi, ni = tok(p.positive).input_ids, tok(p.negative).input_ids
        assert len(pi) == len(ni) and pi[:-1] == ni[:-1] and pi[-1] != ni[-1]


def test_neutral_prompts():
    prompts = data.NEUTRAL_PROMPTS
    assert len(prompts) >= 30
    assert len(set(prompts)) == len(prompts)
    assert all(p.strip() == p and len(p) > 10 for p in prompts)
    pos, neg = data.load_rt_polarity()
    corpus = set(pos) | set(neg)
    assert not any(p.lower() in corpus for p in prompts)
