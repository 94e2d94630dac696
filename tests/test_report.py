"""Report layer: P1 and selfrec readers, markdown, the ``selfrec report`` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from selfrec_ft.cli import report_cmd
from selfrec_ft.errors import UserError
from selfrec_ft.scoring.metrics import compute_report
from selfrec_ft.data.p1_results import read_p1_file
from selfrec_ft.scoring.report import load_rows, render_markdown, report_paths

REAL_XSUM = Path("/work/shared/data/selfrec/paper_raw/pairwise/xsum/llama_results.jsonl")

# P1 pairwise objects: (key, other, fwd_det, bwd_det, fwd_cmp, bwd_cmp), numbers of our choosing.
P1_PAIRWISE = [
    ("101", "human", (0.9, 0.05), (0.3, 0.6), (0.8, 0.1), (0.7, 0.2)),
    ("101", "gpt4", (0.6, 0.35), (0.8, 0.15), (0.5, 0.45), (0.2, 0.7)),
    ("102", "human", (0.7, 0.2), (0.4, 0.5), (0.95, 0.02), (0.6, 0.3)),
    ("102", "gpt4", (0.2, 0.7), (0.9, 0.05), (0.3, 0.6), (0.85, 0.1)),
    ("103", "human", (0.55, 0.4), (0.45, 0.5), (0.6, 0.3), (0.5, 0.45)),
]


def p1_pairwise_objects():
    out = []
    for key, other, fd, bd, fc, bc in P1_PAIRWISE:
        out.append({
            "key": key, "model": other,
            "forward_detection_output": {"1": fd[0], "2": fd[1]},
            "backward_detection_output": {"1": bd[0], "2": bd[1]},
            "forward_comparison_output": {"1": fc[0], "2": fc[1]},
            "backward_comparison_output": {"1": bc[0], "2": bc[1]},
            # garbage scalars: must never be read
            "detection_score": 123.0, "self_preference": -7.5,
            "forward_detection": "2", "backward_detection": "2",
            "forward_comparison": "2", "backward_comparison": "2",
        })
    return out


def write_jsonl(path: Path, objs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def half_norm(f, b):
    return 0.5 * (f[0] / (f[0] + f[1]) + b[1] / (b[0] + b[1]))


def test_p1_pairwise_reader_recomputes_from_outputs(tmp_path):
    path = write_jsonl(tmp_path / "xsum" / "llama_results.jsonl", p1_pairwise_objects())
    rows = read_p1_file(path)
    assert len(rows) == 4 * len(P1_PAIRWISE)
    assert {r["domain"] for r in rows} == {"xsum"}
    assert {r["self_source"] for r in rows} == {"llama2-7b-chat"}
    rep = compute_report(rows, n_resamples=200)
    rec = [half_norm(fd, bd) for _, _, fd, bd, _, _ in P1_PAIRWISE]
    pref = [half_norm(fc, bc) for _, _, _, _, fc, bc in P1_PAIRWISE]
    assert rep["pairwise"]["recognition"]["mean"] == pytest.approx(np.mean(rec))
    assert rep["pairwise"]["preference"]["mean"] == pytest.approx(np.mean(pref))
    assert rep["pairwise"]["recognition"]["mean_raw"] == pytest.approx(
        np.mean([0.5 * (fd[0] + bd[1]) for _, _, fd, bd, _, _ in P1_PAIRWISE]))
    human = [half_norm(fd, bd) for _, o, fd, bd, _, _ in P1_PAIRWISE if o == "human"]
    assert rep["pairwise"]["recognition"]["by_source"]["human"]["mean"] == pytest.approx(np.mean(human))
    # argmax answers come from the probabilities, not from the stored "2" strings
    assert rep["pairwise"]["recognition"]["position"]["always_2"] == pytest.approx(0.0)


def test_p1_json_list_equals_jsonl(tmp_path):
    objs = p1_pairwise_objects()
    a = read_p1_file(write_jsonl(tmp_path / "a.jsonl", objs))
    list_path = tmp_path / "a.json"
    list_path.write_text(json.dumps(objs, indent=2))
    b = read_p1_file(list_path)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    assert b[4]["_line"] > b[0]["_line"] > 1  # four rows per P1 object


def test_p1_individual_readers(tmp_path):
    rec_objs, score_objs = [], []
    rec_v = {"101": {"llama": 0.8, "human": 0.4, "claude": 0.6},
             "102": {"llama": 0.3, "human": 0.5, "claude": 0.2}}
    score_p = {"101": {"llama": [0.01, 0.02, 0.1, 0.5, 0.3], "human": [0.1, 0.3, 0.3, 0.2, 0.05]},
               "102": {"llama": [0.05, 0.05, 0.4, 0.3, 0.1], "human": [0.0, 0.01, 0.1, 0.3, 0.55]}}
    for key, d in rec_v.items():
        for tgt, v in d.items():
            rec_objs.append({"key": key, "model": "llama", "target_model": tgt,
                             "recognition_score": v, "ground_truth": int(tgt == "llama")})
    for key, d in score_p.items():
        for tgt, p in d.items():
            score_objs.append({"key": key, "model": "llama", "target_model": tgt, "score": 99.0,
                               "scores": {str(k + 1): p[k] for k in range(5)}})
    rows = load_rows([write_jsonl(tmp_path / "rec.jsonl", rec_objs),
                      write_jsonl(tmp_path / "score.jsonl", score_objs)], fmt="p1")
    rep = compute_report(rows, n_resamples=200)
    for tgt in ("human", "claude"):
        exp = np.mean([d["llama"] / (d["llama"] + d[tgt]) for d in rec_v.values()])
        assert rep["individual"]["recognition"]["by_source"][tgt]["ratio"] == pytest.approx(exp)

    def er(p):
        return sum((k + 1) * p[k] for k in range(5)) / sum(p)

    exp = np.mean([er(d["llama"]) / (er(d["llama"]) + er(d["human"])) for d in score_p.values()])
    assert rep["individual"]["score"]["by_source"]["human"]["ratio"] == pytest.approx(exp)
    assert any("recognition_score" in n and "undocumented" in n for n in rep["notes"])
    md = render_markdown(rep)
    assert "undocumented" in md and "| recognition | human |" in md


@pytest.mark.parametrize("content, line, msg", [
    ('{"key": "1", "model": "human", "forward_detection_output": {"1": 0.5, "2": 0.4}}\n{bad\n', 2, "malformed"),
    ('{"key": "1", "model": "human", "forward_detection_output": {"1": 0.5}}\n', 1, "options"),
    ('{"key": "1", "model": "human", "forward_detection_output": {"1": "x", "2": 0.1}}\n', 1, "number"),
    ('{"key": "1", "target_model": "human"}\n', 1, "unrecognised"),
    ('{"model": "human", "forward_detection_output": {"1": 0.5, "2": 0.4}}\n', 1, '"key"'),
    ('[\n  {"key": "1", "target_model": "x", "recognition_score": 0.5},\n  {"key": "1"\n', 3, "malformed"),
])
def test_p1_malformed_inputs_name_file_and_line(tmp_path, content, line, msg):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError) as exc:
        load_rows([path], fmt="p1")
    assert exc.value.file == str(path) and exc.value.line == line
    assert msg in str(exc.value)


def selfrec_rows():
    rows = []
    for key, other, fd, bd, fc, bc in P1_PAIRWISE:
        for task, f, b in (("recognition", fd, bd), ("preference", fc, bc)):
            for order, p, so in (("forward", f, "1"), ("backward", b, "2")):
                rows.append({"task": f"pairwise-{task}", "article_id": key, "self_source": "m",
                             "other_source": other, "order": order, "self_option": so,
                             "probs": {"1": p[0], "2": p[1]}, "option_mass": sum(p)})
    return rows


def test_selfrec_reader_roundtrip_and_duplicates(tmp_path):
    rows = selfrec_rows()
    path = write_jsonl(tmp_path / "examples.jsonl", rows)
    loaded = load_rows([path])
    assert compute_report(loaded, n_resamples=100) == compute_report(rows, n_resamples=100)
    dup = write_jsonl(tmp_path / "dup.jsonl", rows + rows[3:4])
    with pytest.raises(UserError) as exc:
        load_rows([dup])
    assert exc.value.line == len(rows) + 1 and "duplicate" in str(exc.value)


def test_selfrec_reader_rejects_bad_rows_and_hints_p1(tmp_path):
    bad = dict(selfrec_rows()[0], order="sideways")
    path = write_jsonl(tmp_path / "e.jsonl", [selfrec_rows()[1], bad])
    with pytest.raises(UserError, match="order") as exc:
        load_rows([path])
    assert exc.value.line == 2
    p1 = write_jsonl(tmp_path / "p1.jsonl", p1_pairwise_objects())
    with pytest.raises(UserError, match="--format p1"):
        load_rows([p1], fmt="selfrec")


def test_render_markdown_tables():
    # twice the articles (6): an interval needs at least 5 articles
    rows = selfrec_rows() + [dict(r, article_id=r["article_id"] + "b") for r in selfrec_rows()]
    rep = compute_report(rows, n_resamples=100)
    md = render_markdown(rep)
    rec = rep["pairwise"]["recognition"]
    assert "| task | mean | 95% CI |" in md
    assert f"| recognition | {rec['mean']:.3f} | [{rec['ci95'][0]:.3f}, {rec['ci95'][1]:.3f}] |" in md
    assert "| recognition | human |" in md and "| preference | gpt4 |" in md
    assert "consistent self" in md and "Kendall τ" in md
    few = compute_report(selfrec_rows(), n_resamples=100)  # 3 articles: no interval
    assert f"| recognition | {few['pairwise']['recognition']['mean']:.3f} | – (< 5 articles) |" in render_markdown(few)


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="selfrec")
    report_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_report_command_prints_and_writes_json(tmp_path, capsys):
    src = write_jsonl(tmp_path / "xsum" / "llama_results.jsonl", p1_pairwise_objects())
    out = tmp_path / "r.json"
    assert run_cli(["report", "--format", "p1", str(src), "--json", str(out),
                    "--seed", "3", "--n-resamples", "150"]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["meta"]["seed"] == 3 and data["meta"]["n_resamples"] == 150
    assert data == report_paths([src], fmt="p1", seed=3, n_resamples=150)
    assert printed == render_markdown(data)


def test_report_command_through_main(tmp_path, capsys, monkeypatch):
    import selfrec_ft.cli as cli

    assert "report_cmd" in cli.COMMAND_MODULES
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["report_cmd"])  # independent of sibling commands
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "pairwise-recognition"}\n')
    assert cli.main(["report", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:1: ") and "\n" not in err


@pytest.mark.skipif(not REAL_XSUM.is_file(), reason="P1 released data not present")
def test_real_p1_xsum_recognition_matches_independent_recomputation():
    objs = [json.loads(line) for line in REAL_XSUM.read_text().splitlines() if line.strip()]
    rep = report_paths([REAL_XSUM], fmt="p1", n_resamples=200)
    rec = []
    for o in objs:
        f, b = o["forward_detection_output"], o["backward_detection_output"]
        rec.append(0.5 * (f["1"] / (f["1"] + f["2"]) + b["2"] / (b["1"] + b["2"])))
    r = rep["pairwise"]["recognition"]
    assert r["n"] == len(objs) and r["invalid"] == 0
    assert r["mean"] == pytest.approx(np.mean(rec))
    # README: in xsum the stored `self_preference` is really the unnormalised recognition
    assert r["mean_raw"] == pytest.approx(np.mean([o["self_preference"] for o in objs]))


# ----------------------------------------------------------------------------- P1's other files

SHARED_P1 = Path("/work/shared/data/selfrec/paper_raw")
REAL_SCORE_XSUM = SHARED_P1 / "individual_score" / "xsum" / "llama_results.jsonl"
REAL_REC_XSUM = SHARED_P1 / "individual_recognition" / "xsum" / "llama_results.jsonl"


def _as_fine_tuned(src: Path, dest: Path, variant: str = "xsum_500_ft_llama") -> list[dict]:
    """P1's base-model individual file rewritten as a fine-tuned evaluator's file (a JSON list,
    ``model`` = the variant, ``ground_truth`` 0 everywhere, as in P1's released ft files)."""
    objs = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    for o in objs:
        o["model"] = variant
        if "ground_truth" in o:
            o["ground_truth"] = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(objs))
    return objs


def _independent_ratios(objs, value, skip_first):
    """Per target: mean over articles (after the first skip_first in file order) of
    v(llama) / (v(llama) + v(target)), written out with plain dicts."""
    order = list(dict.fromkeys(o["key"] for o in objs))
    keep = set(order[skip_first:])
    v = {(o["key"], o["target_model"]): value(o) for o in objs if o["key"] in keep}
    out = {}
    for tgt in {o["target_model"] for o in objs} - {"llama"}:
        ratios = [v[(k, "llama")] / (v[(k, "llama")] + v[(k, tgt)]) for k in order[skip_first:]]
        out[tgt] = (np.mean(ratios), len(ratios))
    return out


@pytest.mark.skipif(not REAL_SCORE_XSUM.is_file(), reason="P1 released data not present")
def test_p1_fine_tuned_individual_file_reads_llama_as_self_and_skips_training_articles(tmp_path, capsys):
    path = tmp_path / "xsum" / "xsum_500_ft_llama_results.json"
    objs = _as_fine_tuned(REAL_SCORE_XSUM, path)

    def expected_rating(o):
        p = o["scores"]
        return sum(int(k) * p[k] for k in p) / sum(p.values())

    for skip in (0, 500):
        rep = report_paths([path], fmt="p1", n_resamples=100, skip_first=skip)
        by = rep["individual"]["score"]["by_source"]
        exp = _independent_ratios(objs, expected_rating, skip)
        assert set(by) == set(exp) == {"human", "claude", "gpt4", "gpt35"}
        for tgt, (mean, n) in exp.items():
            assert by[tgt]["ratio"] == pytest.approx(mean) and by[tgt]["n"] == n == 1000 - skip
        assert rep["meta"]["self_sources"] == ["llama2-7b-chat"]
        assert rep["meta"]["p1_evaluators"] == ["xsum_500_ft_llama"]
        note = next(n for n in rep["notes"] if "xsum_500_ft_llama" in n)
        assert ("first 500 articles" in note) if skip else ("--skip-first" in note)
    assert run_cli(["report", "--format", "p1", str(path), "--skip-first", "500", "--n-resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert f"| score | human | {exp['human'][0]:.3f} |" in out and "| 500 |" in out


@pytest.mark.skipif(not REAL_REC_XSUM.is_file(), reason="P1 released data not present")
def test_p1_fine_tuned_recognition_file(tmp_path):
    path = tmp_path / "cnn" / "xsum_500_ft_llama_results.json"
    objs = _as_fine_tuned(REAL_REC_XSUM, path)
    rep = report_paths([path], fmt="p1", n_resamples=50, skip_first=500)
    exp = _independent_ratios(objs, lambda o: o["recognition_score"], 500)
    for tgt, (mean, n) in exp.items():
        r = rep["individual"]["recognition"]["by_source"][tgt]
        assert r["ratio"] == pytest.approx(mean) and r["n"] == n
    assert rep["meta"]["domains"] == ["cnn"]  # the directory names the evaluation domain


def test_p1_evaluator_names():
    from selfrec_ft.data.p1_results import p1_evaluator

    assert p1_evaluator("xsum_500_ft_llama") == ("llama2-7b-chat", "xsum_500_ft_llama")
    assert p1_evaluator("cnn_always_1_ft_llama") == ("llama2-7b-chat", "cnn_always_1_ft_llama")
    assert p1_evaluator("xsum_length_ft_gpt35") == ("gpt35", "xsum_length_ft_gpt35")
    assert p1_evaluator("llama") == ("llama2-7b-chat", None)
    assert p1_evaluator("gpt4") == ("gpt4", None)


def test_p1_gpt_pairwise_file_is_refused_in_one_clear_line(tmp_path, capsys, monkeypatch):
    import selfrec_ft.cli as cli

    # the shape of P1's results/{xsum,cnn}/gpt35_results.json: argmax answers and scalars only
    objs = [{"key": "35232142", "model": "human", "forward_detection": "2", "backward_detection": "2",
             "detection_score": 0.59, "forward_comparison": "1", "backward_comparison": "2",
             "self_preference": 0.97}]
    path = tmp_path / "xsum" / "gpt35_results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(objs))
    with pytest.raises(UserError) as exc:
        read_p1_file(path)
    assert "no per-order option probabilities" in str(exc.value) and "_detection_output" in str(exc.value)
    assert "target_model" not in str(exc.value)
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["report_cmd"])
    assert cli.main(["report", "--format", "p1", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:1: ") and err.count("\n") == 1


def test_skip_first_and_missing_self_rows_are_user_errors(tmp_path):
    rows = write_jsonl(tmp_path / "examples.jsonl", selfrec_rows())
    with pytest.raises(UserError, match="--format p1"):
        report_paths([rows], fmt="selfrec", skip_first=2)
    p1 = write_jsonl(tmp_path / "p1.jsonl", p1_pairwise_objects())
    with pytest.raises(UserError, match="leaves no article"):
        read_p1_file(p1, skip_first=3)
    assert {r["article_id"] for r in read_p1_file(p1, skip_first=2)} == {"103"}
    only_others = write_jsonl(tmp_path / "ind.jsonl", [
        {"key": "1", "model": "gpt4", "target_model": "human", "recognition_score": 0.4}])
    with pytest.raises(UserError, match="own summary"):
        read_p1_file(only_others)
