"""Concept data loading: formats, splits, held-out sentiment completions, named errors."""

from __future__ import annotations

import json

import pytest

from svf import concepts
from svf.data import data_dir, sentiment_pairs


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


@pytest.fixture
def data(tmp_path, monkeypatch):
    (tmp_path / "rt-polarity").symlink_to(data_dir() / "rt-polarity")
    monkeypatch.setenv("SVF_DATA_DIR", str(tmp_path))
    for name in concepts.CONCEPTS:
        root = tmp_path / "concepts" / name
        _write(root / "prompts.jsonl", [{"prompt": f"{name} prompt {i}"} for i in range(20)])
        _write(root / "pairs.jsonl", [{"positive": f"p{i}", "negative": f"n{i}"} for i in range(30)])
        _write(root / "completions.jsonl", [{"positive": f"cp{i}", "negative": f"cn{i}"} for i in range(12)])
        (root / "instructions.json").write_text(json.dumps(
            {side: {k: f"{side} {k}" for k in concepts.INTENSITIES} for side in ("toward", "away")}))
    return tmp_path


def test_authored_concept(data):
    c = concepts.load_concept("formality", n_pairs=10, n_completions=4)
    assert len(c.pairs) == 10 and c.pairs[0].positive == "p0"
    assert c.positive == ("cp0", "cp1", "cp2", "cp3") and c.negative[-1] == "cn3"
    assert c.validation_prompts == [f"formality prompt {i}" for i in range(6)]  # first 30%
    assert len(c.test_prompts) == 14 and not set(c.validation_prompts) & set(c.test_prompts)
    assert c.instruction(1, "very") == "toward very" and c.instruction(-1, "slightly") == "away slightly"
    with pytest.raises(ValueError, match="intensity 'extremely'"):
        c.instruction(1, "extremely")


def test_sentiment_completions_are_held_out_from_training(data):
    c = concepts.load_concept("sentiment", n_pairs=50, n_completions=5)
    assert list(c.pairs) == sentiment_pairs()[:50]
    train_text = {t for p in c.pairs for t in (p.positive, p.negative)}
    assert len(c.positive) == len(c.negative) == 5
    assert not (set(c.positive) | set(c.negative)) & train_text
    assert all(len(t.split()) <= 12 for t in c.positive + c.negative)


def test_errors_name_the_problem(data):
    with pytest.raises(ValueError, match="unknown concept 'colour'"):
        concepts.load_concept("colour")
    bad = data / "concepts" / "topic-ocean" / "pairs.jsonl"
    bad.write_text('{"positive": "a", "negative": "b"}\n{"positive": "a"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: missing key 'negative'"):
        concepts.load_concept("topic-ocean")
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: not JSON"):
        concepts.load_concept("topic-ocean")
    instructions = data / "concepts" / "sentiment" / "instructions.json"
    for bad_text in ('{"toward": {"plain": "x"}, "away": {}}', "[1]", "not json"):
        instructions.write_text(bad_text)
        with pytest.raises(ValueError, match="instructions.json"):
            concepts.load_concept("sentiment", n_pairs=50, n_completions=5)
    (data / "concepts" / "formality" / "prompts.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="prompts.jsonl not found"):
        concepts.load_concept("formality")


@pytest.mark.parametrize("name", concepts.CONCEPTS)
def test_shipped_concepts_meet_the_sizes(name):
    """Each shipped concept: >= 200 training pairs, >= 100 prompts, no prompt in training text."""
    c = concepts.load_concept(name)
    assert len(c.pairs) >= 200 and len(c.prompts) >= 100
    assert len(set(c.prompts)) == len(c.prompts)
    train_text = {t for p in c.pairs for t in (p.positive, p.negative)}
    assert not set(c.prompts) & train_text
    assert len(c.positive) == len(c.negative) == 8
    assert {sign: set(c.instructions[sign]) for sign in (1, -1)} == {1: set(concepts.INTENSITIES),
                                                                    -1: set(concepts.INTENSITIES)}
