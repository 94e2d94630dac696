"""Tiny Llama-architecture models with a locally trained tokenizer (no hub needed).

The tokenizer is a byte-fallback BPE trained with ``tokenizers`` on the project's synthetic corpus
and prompt presets, laid out like Llama-2's (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, the 256 byte tokens
``<0x00>``..``<0xFF>`` at 3..258, then merges), with ``▁`` word boundaries, digits split one by one
(so an answer digit after ``[/INST]`` tokenizes as a bare ``▁`` and the digit, as in Llama-2) and
Llama-2's chat template. Pad is ``<unk>``. Weights are random (seeded) unless trained later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from selfrec_ft.files import apply_umask, ensure_dir, writing

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    n_tokenizer_articles: int


SIZES = {
    "tiny": TinySpec(1024, 64, 176, 2, 4, 2048, 200),
    "demo": TinySpec(1024, 128, 352, 2, 4, 2048, 200),  # the CPU demo's evaluator and "other" model
    "small": TinySpec(8000, 384, 1024, 6, 6, 4096, 1500),
}


def training_texts(n_articles: int) -> list[str]:
    """Texts a tiny tokenizer is trained on: synthetic articles and summaries of both domains and
    every preset's instructions (plus Llama-2 chat markers)."""
    from selfrec_ft.data.synth import synth_corpus
    from selfrec_ft.prompts.templates import available_presets, load_preset

    texts = []
    for domain in ("short", "highlights"):
        c = synth_corpus(domain, n_articles, seed=12345)
        for a in c.articles:
            texts.append(a.text)
            texts.extend(c.summary(a.id, s) for s in c.sources())
    # chat markers and every answer option the presets use, so that each option is one token after
    # the template's "[/INST] " (Llama-2 has "▁Yes" / "▁No"; digits stay single characters)
    texts.extend(["[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] answer"] * 50)
    texts.extend([f"[/INST] {o} </s>" for o in ("Yes", "No") for _ in range(1000)])
    for name in available_presets():
        for t in load_preset(name).tasks.values():
            texts.extend([t.system, t.user])
    return texts


def build_tokenizer(vocab_size: int, n_articles: int = 200):
    """A Llama-2-like fast tokenizer trained on the synthetic corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trainer_tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(byte_tokens), special_tokens=specials, min_frequency=2,
        show_progress=False, limit_alphabet=200,
    )
    trainer_tok.train_from_iterator(training_texts(n_articles), trainer=trainer)
    learned = trainer_tok.get_vocab()
    merges = [tuple(m) for m in trainer_tok.model.get_merges()] if hasattr(trainer_tok.model, "get_merges") else None
    if merges is None:
        import json

        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                  for m in json.loads(trainer_tok.to_str())["model"]["merges"]]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens)}
    for tok, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    tok.add_special_tokens(specials)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>",
        model_max_length=4096, clean_up_tokenization_spaces=False,
    )
    hf.chat_template = LLAMA2_CHAT_TEMPLATE
    return hf


def make_tiny_model(out_dir: str | os.PathLike, seed: int = 0, size: str = "tiny", tokenizer=None,
                    eos_token_id: int | list[int] | None = None) -> Path:
    """Build and save a random Llama model + tokenizer; loadable with ``from_pretrained``.

    ``tokenizer`` (default: :func:`build_tokenizer`'s Llama-2-like one) sets the vocabulary and the
    special ids; ``eos_token_id`` (default: the tokenizer's EOS) goes into ``generation_config.json``,
    a list as models with several end tokens ship it (Llama-3: ``<|end_of_text|>``, ``<|eom_id|>``,
    ``<|eot_id|>``)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}")
    spec = SIZES[size]
    out = ensure_dir(out_dir)
    if tokenizer is None:
        tokenizer = build_tokenizer(spec.vocab_size, spec.n_tokenizer_articles)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id if eos_token_id is None else eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    from safetensors import SafetensorError

    before = {f: f.stat().st_mtime_ns for f in out.iterdir()}
    # a file in the way, no permission, disk full: one line naming the directory
    with writing(out, also=(SafetensorError,), full_note="free space and rerun"):
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    # safetensors writes model.safetensors 0600: the files written get the user's umask instead
    apply_umask(*(f for f in out.iterdir() if f.is_file() and before.get(f) != f.stat().st_mtime_ns))
    return out
