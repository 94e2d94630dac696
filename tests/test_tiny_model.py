import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfrec_ft.models.tiny import make_tiny_model


def test_tiny_model_loads_with_llama2_layout(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert model.config.model_type == "llama"
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([3, 258]) == ["<0x00>", "<0xFF>"]
    assert tok.pad_token is not None
    text = "Ünïcode ✓ and 42"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte fallback round-trips unseen characters
    chat = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                                    {"role": "assistant", "content": "1"}], tokenize=False)
    assert chat == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST] 1 </s>"
    pieces = tok.convert_ids_to_tokens(tok(chat, add_special_tokens=False)["input_ids"])
    assert pieces[-4:] == ["▁", "1", "▁", "</s>"]  # a bare ▁ before the digit, as in Llama-2
    out = model(torch.tensor([ids])).logits
    assert out.shape == (1, len(ids), len(tok))


def test_deterministic_for_seed(tmp_path):
    a = make_tiny_model(tmp_path / "a", seed=5)
    b = make_tiny_model(tmp_path / "b", seed=5)
    c = make_tiny_model(tmp_path / "c", seed=6)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    ma, mb, mc = (AutoModelForCausalLM.from_pretrained(str(p)) for p in (a, b, c))
    for (n, pa), pb, pc in zip(ma.named_parameters(), mb.parameters(), mc.parameters()):
        assert torch.equal(pa, pb), n
    assert any(not torch.equal(pa, pc) for pa, pc in zip(ma.parameters(), mc.parameters()))


def test_cli_make_tiny_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "selfrec_ft", "make-tiny-model", str(tmp_path / "m"), "--seed", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()
