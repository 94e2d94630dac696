"""The capability canary (selfrec_ft.training.canary): LM loss against a plain forward pass, ROUGE
against hand-counted n-grams, the flags, and a fine-tune forced to damage the model is flagged."""

from __future__ import annotations

import json
import math
import pytest

from selfrec_ft.training.canary import LOSS_RISE, ROUGE_DROP, Canary, canary_flags, canary_task, rouge_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(short_corpus_dir):
    from selfrec_ft.data.corpus import load_corpus

    return load_corpus(short_corpus_dir)


def test_lm_loss_is_the_pooled_token_nll_of_a_plain_forward_pass(tiny_model_dir, corpus, tmp_path):
    import torch

    from selfrec_ft.models.loading import load_model
    from selfrec_ft.prompts.templates import load_preset
    from selfrec_ft.scoring.items import familiarity_ids
    from selfrec_ft.scoring.scorer import Scorer

    model, tok = load_model(tiny_model_dir)
    task = canary_task(corpus, "in_domain", "short", skip_first=8, preset="compact", articles=3, generate=0)
    assert task.loss_ids == [a.id for a in corpus.articles[8:11]] and task.generate_ids == []
    got = Canary(tok, [task]).evaluate(Scorer(model, tok), tmp_path, "step-0")["in_domain"]
    assert set(got) == {"lm_loss"}  # generate=0: no ROUGE
    tmpl = load_preset("compact").task("generate-short")
    nll, n = 0.0, 0
    for aid in task.loss_ids:
        prompt, span = familiarity_ids(tok, tmpl, corpus.article(aid).text, corpus.summary(aid, "human"))
        ids = torch.tensor([prompt + span])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
        nll += float(torch.nn.functional.cross_entropy(logits.float(), torch.tensor(span), reduction="sum"))
        n += len(span)
    assert got["lm_loss"]["tokens"] == n and got["lm_loss"]["n"] == 3
    assert got["lm_loss"]["mean"] == pytest.approx(nll / n, rel=1e-4)
    lo, hi = got["lm_loss"]["ci95"]
    assert lo <= got["lm_loss"]["mean"] <= hi


def test_rouge_against_hand_counted_ngrams():
    refs = {"a": "the cat sat on the mat", "b": "a dog barked", "c": "rain fell"}
    preds = {"a": "the cat lay on a mat", "b": "a dog barked"}  # "c": no summary (empty counts 0)
    got = rouge_scores(preds, refs, ["a", "b", "c"], n_resamples=200)
    # a: unigrams in common the, cat, on, mat = 4 of 6 and 6 -> F1 2/3; bigrams: "the cat" = 1 of 5 and 5 ->
    # 0.2; longest common subsequence the cat on mat = 4 -> 2/3. b: identical -> 1. c: 0.
    assert got["rouge1"]["mean"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert got["rouge2"]["mean"] == pytest.approx((0.2 + 1 + 0) / 3)
    assert got["rougeL"]["mean"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert got["rougeL"]["empty"] == 1 and got["rougeL"]["n"] == 3


def test_flags_name_a_loss_rise_or_rouge_drop_beyond_the_thresholds():
    def rec(step, loss, rl):
        return {"step": step, "canary": {"in_domain": {"lm_loss": {"mean": loss}, "rougeL": {"mean": rl}}}}

    ok = 1 + LOSS_RISE * 0.9
    notes = canary_flags([rec(0, 2.0, 0.40), rec(5, 2.0 * ok, 0.40 * (1 - ROUGE_DROP * 0.9)),
                          rec(10, 2.0 * (1 + LOSS_RISE * 1.1), 0.40), rec(15, 2.0, 0.40 * (1 - ROUGE_DROP * 1.1))])
    assert len(notes) == 2
    assert "step 10, in-domain" in notes[0] and "LM loss" in notes[0] and "+22.0%" in notes[0]
    assert "step 15, in-domain" in notes[1] and "ROUGE-L" in notes[1] and "-27.5%" in notes[1]


def test_canary_skips_a_corpus_without_references(corpus):
    assert canary_task(corpus, "in_domain", "short", skip_first=8, preset="compact", reference="nobody") is None


def _train(tiny_model_dir, corpus_dir, out, lr):
    from trl import ModelConfig, SFTConfig

    from selfrec_ft.training.args import EvalHookArguments, SelfRecDataArguments
    from selfrec_ft.training.sft import run_sft

    training = SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, activation_checkpointing=False,
                         max_length=1024, per_device_train_batch_size=4, learning_rate=lr, lr_scheduler_type="constant",
                         max_steps=3, logging_steps=1, save_strategy="no", report_to="none", seed=0,
                         disable_tqdm=True, dataloader_num_workers=0)
    data = SelfRecDataArguments(corpus=str(corpus_dir), self_source="lead", others="human", n_articles=4,
                                prompt_preset="compact")
    model = ModelConfig(model_name_or_path=str(tiny_model_dir), use_peft=False)
    hook = EvalHookArguments(hook_in_domain=str(corpus_dir), hook_limit=2, hook_batch_size=8,
                             hook_tasks="pairwise-recognition", hook_canary_articles=4, hook_canary_generate=2,
                             hook_canary_max_new_tokens=8)
    run_sft(data, training, model, hook_args=hook, teardown=False)
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def damaged(tiny_model_dir, short_corpus_dir, tmp_path_factory):
    """Three full fine-tuning steps at learning rate 0.5: the tiny model learns to answer "1" or "2"
    and its language model is wrecked."""
    out = tmp_path_factory.mktemp("damaged")
    return out, _train(tiny_model_dir, short_corpus_dir, out, 0.5)


def test_a_fine_tune_that_damages_the_model_is_flagged(damaged):
    """The canary flags the damaging fine-tune (that a small change is not flagged is
    test_flags_name_a_loss_rise_or_rouge_drop_beyond_the_thresholds)."""
    tmp_path, report = damaged
    steps = report["canary"]["by_step"]
    assert [s["step"] for s in steps] == [0, 3]
    assert set(steps[0]["canary"]["in_domain"]) == {"lm_loss", "rouge1", "rouge2", "rougeL"}
    assert (tmp_path / "canary" / "step-3-in_domain.jsonl").is_file()
    d0, d3 = (s["canary"]["in_domain"]["lm_loss"]["mean"] for s in steps)
    assert math.isfinite(d3) and d3 > d0 * (1 + LOSS_RISE), (d0, d3)
    assert report["notes"][:-1] == report["canary"]["flags"] and "LM loss" in report["notes"][0]
    md = (tmp_path / "report.md").read_text()
    assert "## Capability canary" in md and "fine-tuning may have damaged the model" in md
    # the hook's style-classifier ceiling (trained on the 4 training articles, scored on the 2 held out)
    # stands beside the final recognition, and its verdict is the last note
    ceiling = report["style_ceiling"]
    assert ceiling["train_articles"] == 4 and ceiling["pairwise_accuracy"]["n"] == 2
    assert ceiling["judge"]["mean"] == report["final"]["in_domain"]["recognition"]["mean"]
    assert "## Style-classifier ceiling (in-domain)" in md and "style" in report["notes"][-1]
    hook = [json.loads(line) for line in (tmp_path / "selfrec_hook.jsonl").read_text().splitlines()]
    assert all(set(h["canary"]["in_domain"]) == {"lm_loss", "rouge1", "rouge2", "rougeL"} for h in hook)


def test_eval_checkpoints_canary_matches_the_hook_and_flags_the_damage(damaged, short_corpus_dir, tmp_path, capsys):
    from selfrec_ft.cli import main
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus

    run_dir, report = damaged
    ood = write_corpus(synth_corpus("highlights", 4, seed=9), tmp_path / "highlights")
    argv = ["eval-checkpoints", str(run_dir), "--out-of-domain", str(ood), "--limit", "2", "--tasks",
            "pairwise-recognition", "--canary", "--canary-articles", "4", "--canary-generate", "1", "--no-progress",
            "--out", str(tmp_path / "t")]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "t" / "eval_checkpoints.json").read_text())
    assert [(r["checkpoint"] == "final", r["domain"]) for r in rows] == [
        (False, "in_domain"), (False, "out_of_domain"), (True, "in_domain"), (True, "out_of_domain")]
    assert all(set(r["canary"]) == {"lm_loss", "rouge1", "rouge2", "rougeL"} for r in rows)
    # the same articles and the same weights as the hook's baseline and end-of-training canary: same loss
    hook = {s["step"]: s["canary"]["in_domain"]["lm_loss"]["mean"] for s in report["canary"]["by_step"]}
    assert rows[0]["canary"]["lm_loss"]["mean"] == pytest.approx(hook[0], rel=1e-4)
    assert rows[2]["canary"]["lm_loss"]["mean"] == pytest.approx(hook[3], rel=1e-4)
    assert any("LM loss" in n for n in rows[2]["canary_flags"]) and "canary_flags" not in rows[0]
    md = (tmp_path / "t" / "eval_checkpoints.md").read_text()
    assert "## Capability canary" in md and "fine-tuning may have damaged the model" in md
    # a second call reads every canary back instead of scoring again
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("canary.json")}
    assert len(before) == 2 and main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("canary.json")} == before


def test_console_line_shows_the_canary():
    from selfrec_ft.training.console import compact_line

    line = compact_line({"selfrec/in_domain/recognition": 0.61, "selfrec/canary/in_domain/lm_loss": 2.5,
                         "selfrec/canary/in_domain/rougeL": 0.25}, step=64)
    assert line.startswith("selfrec step 64 | in-domain recognition 0.61")
    assert "| canary in-domain lm_loss 2.5" in line and "rougeL 0.25" in line


def test_flags_are_one_note_per_domain_and_metric_naming_the_first_and_last_flagged_step():
    def rec(step, loss):
        return {"step": step, "canary": {"in_domain": {"lm_loss": {"mean": loss}, "rougeL": {"mean": 0.4}}}}

    notes = canary_flags([rec(0, 1.0), rec(5, 3.0), rec(10, 1.1), rec(15, 4.0)])
    assert len(notes) == 1
    assert "step 5, in-domain" in notes[0] and "+200.0%" in notes[0] and "1.000 -> 3.000" in notes[0]
    assert "flagged at 2 evaluations, the last step 15 (4.000, +300.0%)" in notes[0]
