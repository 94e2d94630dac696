"""Tiny models in the tokenizer and chat-template shapes of four model families (for the tests).

Each shape is a BPE tokenizer trained locally with ``tokenizers`` on the project's synthetic texts,
laid out like its family's (special tokens, pre-tokenizer, decoder), with the family's real chat
template (``tests/chat_templates/``), and a tiny random Llama-architecture model of its vocabulary
whose ``generation_config.json`` lists the end ids the family's model ships:

* ``llama3``: Llama-3.1-Instruct — byte-level BPE with Llama-3's split pattern (digits in groups of up
  to three, never joined to a space), ``<|begin_of_text|>``, header ids, ``<|eot_id|>`` ending the
  assistant turn; EOS ``<|eot_id|>``, no pad token; generation ends on ``<|end_of_text|>``,
  ``<|eom_id|>`` and ``<|eot_id|>``;
* ``qwen2.5``: Qwen2.5-Instruct — byte-level BPE with Qwen2's pattern (single digits), ChatML
  ``<|im_start|>`` / ``<|im_end|>``, no BOS; EOS ``<|im_end|>``, pad ``<|endoftext|>``; generation ends
  on ``<|im_end|>`` and ``<|endoftext|>``;
* ``mistral``: Mistral-7B-Instruct-v0.3 — sentencepiece-like BPE (``▁``, byte fallback, single
  digits), ``[INST]`` / ``[/INST]`` control tokens; its template puts the system text in the last
  user turn only, so a conversation with the assistant's answer loses it;
* ``gemma``: Gemma-2-it — BPE with byte fallback and no prefix space, ``<start_of_turn>`` /
  ``<end_of_turn>``; its template raises "System role not supported"; EOS ``<eos>``; generation ends
  on ``<eos>`` and ``<end_of_turn>``.

``bytelevel-llama2`` (tokenizer only) is GPT-2's byte-level pre-tokenizer (a digit joins the space
before it: ``Ġ1``) under Llama-2's template, which writes ``[/INST] 1 </s>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "chat_templates"

# the pre-tokenizer split patterns of the families' tokenizer.json files
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class Shape:
    name: str
    template: str             # file in tests/chat_templates ("llama2": the tiny models' Llama-2 template)
    kind: str                 # "llama3" | "qwen2" | "gpt2" (byte-level) | "metaspace" | "gemma"
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    end_of_turn: str          # the token the template writes after the assistant's answer
    generation_eos: tuple[str, ...]  # generation_config.json eos_token_id
    folds_system: bool        # the template rejects or drops a system turn


SHAPES = {
    "llama3": Shape("llama3", "llama3_1.jinja", "llama3",
                    ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                     "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"),
                    "<|begin_of_text|>", "<|eot_id|>", None, None, "<|eot_id|>",
                    ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), False),
    "qwen2.5": Shape("qwen2.5", "qwen2_5.jinja", "qwen2", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                     None, "<|im_end|>", "<|endoftext|>", None, "<|im_end|>", ("<|im_end|>", "<|endoftext|>"), False),
    "mistral": Shape("mistral", "mistral_v0_3.jinja", "metaspace", ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
                     "<s>", "</s>", None, "<unk>", "</s>", ("</s>",), True),
    "bytelevel-llama2": Shape("bytelevel-llama2", "llama2", "gpt2", ("<|begin_of_text|>", "<|eot_id|>"),
                              "<|begin_of_text|>", "<|eot_id|>", None, None, "<|eot_id|>", ("<|eot_id|>",), False),
    "gemma": Shape("gemma", "gemma.jinja", "gemma",
                   ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                   "<bos>", "<eos>", "<pad>", "<unk>", "<end_of_turn>", ("<eos>", "<end_of_turn>"), True),
}


def _texts() -> list[str]:
    from selfrec_ft.models.tiny import training_texts

    texts = training_texts(120)
    # answers as the templates write them: after a newline, a space or a bare turn marker
    texts.extend(f"{sep}{o}" for o in ("1", "2", "3", "4", "5", "Yes", "No") for sep in ("\n", "\n\n", " ", "")
                 for _ in range(20))
    return texts


def build_tokenizer(shape: Shape, vocab_size: int = 1200):
    """The shape's fast tokenizer, trained on the synthetic texts (deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(shape.specials)
    if shape.kind in ("llama3", "qwen2", "gpt2"):
        tok = Tokenizer(models.BPE())
        if shape.kind == "qwen2":
            tok.normalizer = normalizers.NFC()
        if shape.kind == "gpt2":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            pattern = LLAMA3_PATTERN if shape.kind == "llama3" else QWEN2_PATTERN
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                      show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(_texts(), trainer=trainer)
    else:
        prepend = "first" if shape.kind == "metaspace" else "never"
        byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
        tok = Tokenizer(models.BPE(unk_token=shape.unk, byte_fallback=True, fuse_unk=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=True),
            pre_tokenizers.Digits(individual_digits=True),
        ])
        decoders_ = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if shape.kind == "metaspace":
            decoders_.append(decoders.Strip(" ", 1, 0))
        tok.decoder = decoders.Sequence(decoders_)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + byte_tokens,
                                      min_frequency=2, show_progress=False, limit_alphabet=200)
        tok.train_from_iterator(_texts(), trainer=trainer)
    tok.add_special_tokens(specials)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=shape.bos, eos_token=shape.eos, pad_token=shape.pad, unk_token=shape.unk,
        extra_special_tokens=[s for s in specials if s not in (shape.bos, shape.eos, shape.pad, shape.unk)],
        model_max_length=4096, clean_up_tokenization_spaces=False,
    )
    if shape.template == "llama2":
        from selfrec_ft.models.tiny import LLAMA2_CHAT_TEMPLATE

        hf.chat_template = LLAMA2_CHAT_TEMPLATE
    else:
        hf.chat_template = (TEMPLATES / shape.template).read_text(encoding="utf-8")
    return hf


def make_shape_model(shape_name: str, out_dir: Path, seed: int = 0) -> Path:
    """A tiny random Llama of the shape's vocabulary, its tokenizer and generation config, saved."""
    from selfrec_ft.models.tiny import make_tiny_model

    shape = SHAPES[shape_name]
    tokenizer = build_tokenizer(shape)
    eos = [tokenizer.convert_tokens_to_ids(t) for t in shape.generation_eos]
    return make_tiny_model(out_dir, seed=seed, size="tiny", tokenizer=tokenizer,
                           eos_token_id=eos if len(eos) > 1 else eos[0])
