import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def char_tok():
    from helpers import char_tokenizer

    return char_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, char_tok):
    """A saved tiny Llama (4 decoder layers) with the character tokenizer, loadable by path as
    the command line loads a model; one per test module."""
    from helpers import tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", vocab_size=len(char_tok)).save_pretrained(path)
    char_tok.save_pretrained(path)
    return path


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request, char_tok):
    """(model, tokenizer) for each supported family."""
    from helpers import tiny_model

    return tiny_model(request.param, vocab_size=len(char_tok)), char_tok
