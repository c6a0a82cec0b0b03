"""Shared builders for tests: a character tokenizer, tiny random HF models, random fields."""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from svf.scorer import ConceptScorer, ScorerConfig
from svf.steering_field import SteeringField

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character; left padding; a tiny chat template."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )
    out.chat_template = CHAT_TEMPLATE
    return out


#: CHAT_TEMPLATE after the BOS token, as Gemma's and Llama's templates write it.
BOS_CHAT_TEMPLATE = "{{ bos_token }}" + CHAT_TEMPLATE


def special_char_tokenizer(*, bos: bool, eos: bool, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """:func:`char_tokenizer`'s vocabulary plus ``<bos>`` (the last id) and a post-processor that
    puts ``<bos>`` before plain text (``bos``) and ``<eos>`` after it (``eos``), as
    ``add_special_tokens=True`` does for Gemma/Llama (``bos``) or for tokenizers that append an
    EOS; ``chat_template``: None for none."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[ch] = len(vocab)
    vocab["<bos>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    single = " ".join(["<bos>"] * bos + ["$A"] + ["<eos>"] * eos)
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} $B", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", 1)])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                  bos_token="<bos>", padding_side="left")
    out.chat_template = chat_template
    return out


def tiny_model(kind: str, vocab_size: int = 99, seed: int = 0, layers: int = 4, d: int = 64):
    """A randomly initialised causal LM of the Llama, GPT-2, Gemma-3 or Qwen-2 family, eval mode,
    float32."""
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            pad_token_id=0, eos_token_id=1, bos_token_id=1,
        )
        model = LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab_size, n_embd=d, n_layer=layers, n_head=4, n_positions=256,
            pad_token_id=0, eos_token_id=1, bos_token_id=1,
        )
        model = GPT2LMHeadModel(cfg)
    elif kind == "gemma3":
        # sliding-window and global layers alternating (a window of 8 tokens, so prompts cross it),
        # query-key norm, embeddings scaled by sqrt(d): Gemma 3's text decoder in small
        cfg = Gemma3TextConfig(
            vocab_size=vocab_size, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, head_dim=d // 4, query_pre_attn_scalar=d // 4,
            sliding_window=8, layer_types=[("sliding_attention", "full_attention")[i % 2] for i in range(layers)],
            max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=1,
        )
        model = Gemma3ForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = Qwen2Config(
            vocab_size=vocab_size, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            pad_token_id=0, eos_token_id=1, bos_token_id=1,
        )
        model = Qwen2ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    model.generation_config.eos_token_id = None  # random weights: never stop early
    model.generation_config.pad_token_id = 0
    return model.eval()


def random_field(
    model, layers=None, steer_layers=None, seed: int = 0, concept: str = "test", r: int = 8, de: int = 3, m: int = 12
) -> SteeringField:
    """A field with random (but non-trivial) scorer weights for ``model``'s sizes."""
    n_layers = model.config.num_hidden_layers
    d = model.config.hidden_size
    layers = tuple(layers if layers is not None else range(n_layers))
    g = torch.Generator().manual_seed(seed)
    scorer = ConceptScorer(ScorerConfig(d, layers, r=r, de=de, m=m))
    with torch.no_grad():
        for p in scorer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    scorer.eval()
    return SteeringField(
        scorer=scorer,
        concept=concept,
        model_name="tiny",
        num_layers=n_layers,
        steer_layers=tuple(steer_layers if steer_layers is not None else layers[:2]),
        mean_norms=torch.rand(len(layers), generator=g) + 1.0,
        caa=torch.randn(len(layers), d, generator=g),
        default_strength=0.5,
        metrics={},
    )


def random_prompt_batch(lengths, seed: int = 0, vocab: int = 99):
    """Random token prompts of the given lengths, and the same left-padded into ``(ids, mask)``."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(2, vocab, (n,), generator=g) for n in lengths]
    T = max(lengths)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):] = p
        mask[r, T - len(p):] = 1
    return prompts, ids, mask
