import json
from types import SimpleNamespace

import pytest

from selfrec_ft.scoring.spec import EvalSpec
from selfrec_ft.training.hook import HOOK_FILE, SelfRecEvalCallback, read_hook_records
from selfrec_ft.training.report import write_training_report


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from selfrec_ft.models.loading import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def ood_corpus_dir(tmp_path_factory):
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus

    return write_corpus(synth_corpus("highlights", 4, seed=9), tmp_path_factory.mktemp("ood") / "hl")


class FakeTrainer:
    """What the hook uses of a trainer: its model, tokenizer, output_dir and ``log``."""

    def __init__(self, model, tokenizer, output_dir):
        self.model, self.processing_class = model, tokenizer
        self.args = SimpleNamespace(output_dir=str(output_dir))
        self.logged = []

    def log(self, logs):
        self.logged.append(dict(logs))


def hook_specs(short_corpus_dir, ood_corpus_dir):
    common = dict(self_source="lead", others=["human"], tasks=["pairwise-recognition", "pairwise-preference"],
                  limit=3, n_resamples=200)
    return [EvalSpec(corpus=short_corpus_dir, skip_first=8, domain="in_domain", **common),
            EvalSpec(corpus=ood_corpus_dir, domain="out_of_domain", **common)]


def test_hook_logs_each_step_once_and_matches_eval(loaded, short_corpus_dir, ood_corpus_dir, tmp_path):
    from selfrec_ft.scoring.evaluate import evaluate
    from selfrec_ft.scoring.scorer import Scorer

    model, tok = loaded
    trainer = FakeTrainer(model, tok, tmp_path)
    cb = SelfRecEvalCallback(trainer, hook_specs(short_corpus_dir, ood_corpus_dir), batch_size=4)
    assert cb.trainer is trainer and cb.scorer.model is model and cb.scorer.tokenizer is tok
    assert [spec.domain for spec, _ in cb.domains] == ["in_domain", "out_of_domain"]
    assert [len(items) for _, items in cb.domains] == [3 * 2 * 2, 3 * 2 * 2]
    args = SimpleNamespace(output_dir=str(tmp_path))
    for step, event in [(0, cb.on_train_begin), (2, cb.on_save), (2, cb.on_train_end), (4, cb.on_train_end)]:
        event(args, SimpleNamespace(global_step=step, epoch=step / 4, is_world_process_zero=True), None, model=model)
    recs = read_hook_records(tmp_path)
    assert [r["step"] for r in recs] == [0, 2, 4]  # step 2 evaluated once
    assert [r["event"] for r in recs] == ["start", "save", "end"]
    assert len(trainer.logged) == 3
    assert set(trainer.logged[0]) == {f"selfrec/{d}/{m}" for d in ("in_domain", "out_of_domain")
                                      for m in ("recognition", "preference")}
    # the hook and `selfrec eval` share one engine and one metric: same numbers on the same articles
    spec = EvalSpec(corpus=short_corpus_dir, self_source="lead", others=["human"],
                    tasks=["pairwise-recognition", "pairwise-preference"], skip_first=8, limit=3, n_resamples=200)
    res = evaluate(Scorer(model, tok), spec, tmp_path / "eval", progress=False)
    for m in ("recognition", "preference"):
        assert recs[0]["in_domain"][m]["mean"] == pytest.approx(res.report["pairwise"][m]["mean"], abs=1e-6)
        assert recs[0]["in_domain"][m]["n"] == 3
    # a restarted hook (resumed run) does not evaluate a step it already has
    cb2 = SelfRecEvalCallback(FakeTrainer(model, tok, tmp_path), hook_specs(short_corpus_dir, ood_corpus_dir),
                              batch_size=4)
    cb2.on_save(args, SimpleNamespace(global_step=4, epoch=1.0, is_world_process_zero=True), None, model=model)
    assert len((tmp_path / HOOK_FILE).read_text().splitlines()) == 3


def test_training_report_from_hook_records(tmp_path):
    def rec(step, event, r):
        m = {"mean": r, "ci95": [r - 0.05, r + 0.05], "n": 10, "accuracy": r, "position_biased": False}
        return {"step": step, "event": event, "in_domain": {"recognition": m, "preference": m},
                "out_of_domain": {"recognition": m, "preference": m}}

    lines = [rec(0, "start", 0.5), rec(5, "save", 0.7), rec(10, "save", 0.9)]
    (tmp_path / HOOK_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = write_training_report(tmp_path)
    assert report["baseline"]["in_domain"]["recognition"]["mean"] == 0.5
    assert report["final"]["step"] == 10 and report["final"]["out_of_domain"]["preference"]["mean"] == 0.9
    assert [c["step"] for c in report["checkpoints"]] == [5, 10]
    assert json.loads((tmp_path / "report.json").read_text()) == report
    md = (tmp_path / "report.md").read_text()
    assert "| baseline | 0 | in-domain | 0.500 [0.450, 0.550]" in md
    png = tmp_path / report["plot"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_summary_ends_with_the_table_and_the_paths(tmp_path):
    from selfrec_ft.training.report import render_training_console
    from selfrec_ft.training.sft import SFTResult

    def block(mean, biased=False):
        return {"mean": mean, "ci95": [mean - 0.01, mean + 0.02], "n": 48, "position_biased": biased}

    lines = [{"step": s, "event": e, "in_domain": {"recognition": block(r), "preference": block(p, s == 64)},
              "out_of_domain": {"recognition": block(r - 0.1), "preference": block(p)}}
             for s, e, r, p in [(0, "start", 0.48, 0.49), (64, "save", 0.636, 0.549), (128, "end", 0.9, 0.7)]]
    (tmp_path / HOOK_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = write_training_report(tmp_path)
    table = render_training_console(report, tmp_path).splitlines()
    rows = [ln.split() for ln in table[2:-2]]
    # baseline -> every checkpoint -> final, both domains, recognition and preference with CIs
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("baseline", "0", "in-domain"), ("baseline", "0", "out-of-domain"), ("checkpoint", "64", "in-domain"),
        ("checkpoint", "64", "out-of-domain"), ("final", "128", "in-domain"), ("final", "128", "out-of-domain")]
    assert "0.549 [0.539, 0.569] (position-biased)" in table[4]
    assert table[2].split()[3:] == ["0.480", "[0.470,", "0.500]", "0.490", "[0.480,", "0.510]", "48"]
    assert table[-2:] == [f"report: {tmp_path / 'report.md'}",
                          f"plot:   {tmp_path / 'recognition_preference_by_step.png'}"]
    stats = SimpleNamespace(rows=8, articles=4, labels={"1": 4, "2": 4}, by_source={"human": 8}, shortened=0,
                            ties=0, ties_dropped=0)
    result = SFTResult(tmp_path, "full", 128, {"train_loss": 0.1}, stats, {}, None, report=report)
    summary = result.summary().splitlines()
    assert summary[1] == "global step 128, train loss 0.1000" and summary[-2:] == table[-2:]
    assert SFTResult(tmp_path, "full", 128, {}, stats, {}, None).summary().count("\n") == 2  # no hook, no table


def test_compact_console_line():
    from selfrec_ft.training.console import compact_line

    logs = {"selfrec/in_domain/recognition": 0.63581, "selfrec/in_domain/preference": 0.5487,
            "selfrec/out_of_domain/recognition": 0.52, "epoch": 1.0}
    assert compact_line(logs, 64) == ("selfrec step 64 | in-domain recognition 0.636, preference 0.549 | "
                                      "out-of-domain recognition 0.520")
    assert compact_line({"loss": 0.4, "epoch": 1.0}, 64) is None


def test_training_log_lines_are_compact_and_other_dicts_untouched():
    from selfrec_ft.training.console import console_line

    logs = {"loss": 0.4313, "grad_norm": 1.692, "learning_rate": 0.002893, "entropy": 0.3644,
            "mean_token_accuracy": 0.8145, "num_tokens": 56950.0, "epoch": 0.5}
    assert console_line(logs, 32) == "step 32 | loss 0.431 | token accuracy 0.815 | grad norm 1.69 | lr 2.89e-03 | epoch 0.50"
    end = {"train_runtime": 59.89, "train_samples_per_second": 34.2, "train_steps_per_second": 4.275,
           "train_loss": 0.1059, "epoch": 4.0}
    assert console_line(end, 256) == "training done in 60 s | 34.2 examples/s | mean loss 0.106"
    assert console_line({"eval_loss": 0.3, "epoch": 1.0}, 8) is None  # printed by transformers as before


def test_the_cpu_only_bitsandbytes_notice_is_dropped_and_nothing_else(monkeypatch):
    import logging

    import torch

    import selfrec_ft.training as training

    log = logging.getLogger(training.BNB_CPU_LOGGER)
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    log.addHandler(handler)
    try:
        training.quiet_cpu_bitsandbytes_notice()  # idempotent: importing the package installed it already
        assert sum(type(f).__name__ == "_DropCpuKernelNotice" for f in log.filters) == 1
        notice = training.BNB_CPU_NOTICE + ": No module named 'kernels'. Please make sure ..."
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        log.warning(notice)
        log.warning("another bitsandbytes warning")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        log.warning(notice)  # with CUDA the notice is not ours to hide
    finally:
        log.removeHandler(handler)
    assert seen == ["another bitsandbytes warning", notice]


def test_hook_hit_false_alarm_and_perturbed_condition_match_eval(loaded, short_corpus_dir, ood_corpus_dir, tmp_path):
    """With the individual task and hook_perturb, every evaluation holds hit / false-alarm rates and
    the perturbed condition; they equal an independent computation from `selfrec eval`'s rows, and
    the training report shows them."""
    from selfrec_ft.jsonl import read_jsonl_rows
    from selfrec_ft.scoring.evaluate import evaluate
    from selfrec_ft.scoring.scorer import Scorer

    model, tok = loaded
    tasks = ["pairwise-recognition", "pairwise-preference", "individual-recognition"]
    specs = [s.replace(tasks=tasks) for s in hook_specs(short_corpus_dir, ood_corpus_dir)]
    trainer = FakeTrainer(model, tok, tmp_path)
    cb = SelfRecEvalCallback(trainer, specs, batch_size=4, perturb=["word-shuffle"], perturb_seed=3)
    args = SimpleNamespace(output_dir=str(tmp_path))
    for step, event in [(0, cb.on_train_begin), (2, cb.on_train_end)]:
        event(args, SimpleNamespace(global_step=step, epoch=step / 2, is_world_process_zero=True), None, model=model)
    rec = read_hook_records(tmp_path)[-1]["in_domain"]
    assert {"hit_rate", "false_alarm_rate", "d_prime"} <= set(rec)
    assert rec["perturbed"]["word-shuffle"]["seed"] == 3
    logged = trainer.logged[-1]
    assert "selfrec/in_domain/hit_rate" in logged and "selfrec/in_domain/perturbed/word-shuffle/recognition" in logged

    # independent: the claims straight from `selfrec eval`'s individual rows (p(Yes)/(p(Yes)+p(No)) > 1/2)
    spec = specs[0].replace(domain=None)
    evaluate(Scorer(model, tok), spec, tmp_path / "eval", progress=False)
    rows = [r for r in read_jsonl_rows(tmp_path / "eval" / "examples.jsonl") if r["task"] == "individual-recognition"]
    claimed = {True: [], False: []}
    for r in rows:
        p = r["probs"]["Yes"] / (r["probs"]["Yes"] + r["probs"]["No"])
        claimed[r["target_source"] == "lead"].append(1.0 if p > 0.5 else 0.0)
    assert rec["hit_rate"]["mean"] == pytest.approx(sum(claimed[True]) / len(claimed[True]))
    assert rec["false_alarm_rate"]["mean"] == pytest.approx(sum(claimed[False]) / len(claimed[False]))
    from sklearn.metrics import roc_auc_score  # the threshold-free AUROC of p(Yes), self vs other

    p_yes = [r["probs"]["Yes"] / (r["probs"]["Yes"] + r["probs"]["No"]) for r in rows]
    auroc = roc_auc_score([r["target_source"] == "lead" for r in rows], p_yes)
    assert rec["individual_ratio"]["auroc"] == pytest.approx(auroc)
    res = evaluate(Scorer(model, tok), spec.replace(perturb="word-shuffle", perturb_seed=3), tmp_path / "pert",
                   progress=False)
    for m in ("recognition", "preference"):
        assert rec["perturbed"]["word-shuffle"][m]["mean"] == pytest.approx(res.report["pairwise"][m]["mean"], abs=1e-6)

    md = (tmp_path / "report.md").read_text() if write_training_report(tmp_path) else ""
    assert ("| stage | domain | condition | recognition | preference | hit rate | false-alarm rate | d′ | "
            "individual ratio | AUROC |") in md
    assert "| final | in-domain | word-shuffle (seed 3) |" in md
    assert "| baseline | out-of-domain | none |" in md


def test_hook_perturb_unknown_kind_is_one_line():
    from selfrec_ft.training.args import EvalHookArguments, value_problems

    problems = value_problems(EvalHookArguments(hook_perturb="word-shuffle,shuffle-everything"))
    assert problems == [("hook_perturb", "unknown perturbation 'shuffle-everything'; use word-shuffle, "
                         "sentence-shuffle, truncate-to-equal-length, lowercase-strip-punct")]
