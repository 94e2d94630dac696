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
