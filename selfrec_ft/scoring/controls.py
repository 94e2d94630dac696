"""The controls a reviewer asks for, run beside an evaluation: peer judges, other-vs-other pairs and
perturbed conditions (``selfrec eval --peer-model / --false-alarm / --perturb``), and their report
section ("Is it self-recognition?", ``controls`` in report.json).

Every control is one more :func:`~selfrec_ft.scoring.evaluate.evaluate` run (resumable, with its own
``examples.jsonl`` and report) in a subdirectory of the evaluation:

* ``perturbed/<kind>/``: the self judge on the same tasks with the summaries perturbed
  (:mod:`selfrec_ft.scoring.perturb`; familiarity left out);
* ``false-alarm/<A>--<B>/``: the self judge's pairwise recognition on pairs of two other sources
  (``self_source`` A: the rows' score is the share it attributes to A);
* ``peers/<i>-<name>/``: a peer judge's pairwise recognition on the same self-vs-other pairs, asked
  which summary the author wrote (:data:`~selfrec_ft.scoring.baselines.PEER_TEMPLATE`).

The numbers are :mod:`selfrec_ft.scoring.baselines`'; this module runs, gathers and formats them.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfrec_ft.defaults import EXAMPLES_FILE, FAMILIARITY, REPORT_JSON, REPORT_MD
from selfrec_ft.errors import UserError
from selfrec_ft.markdown import estimate, table

RECOGNITION = "pairwise-recognition"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def _pairwise_mean(report: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    block = (report.get("pairwise") or {}).get(name)
    return None if block is None else {"mean": block.get("mean"), "ci95": block.get("ci95")}


def controls_report(self_rows: Sequence[Mapping[str, Any]], *,
                    peers: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                    other_rows: Sequence[Mapping[str, Any]] | None = None,
                    perturbed: Mapping[str, Mapping[str, Any]] | None = None,
                    seed: int = 0, n_resamples: int = 2000) -> dict[str, Any]:
    """The ``controls`` block: ``peer`` ({judge: :func:`peer_comparison`}, ``self_recognition``,
    ``verdict``) when peers are given, ``hit_false_alarm`` (individual task) when its rows exist,
    ``other_pairs`` (other-vs-other pairs) when given, ``perturbed`` ({kind: recognition,
    preference, hit/false-alarm rates, seed, directory}) when given."""
    from selfrec_ft.scoring.baselines import (
        hit_false_alarm,
        other_pairs_false_alarm,
        peer_comparison,
        peer_verdict,
    )

    out: dict[str, Any] = {}
    if peers:
        judges = {name: peer_comparison(self_rows, rows, seed=seed, n_resamples=n_resamples)
                  for name, rows in peers.items()}
        claimed, verdict = peer_verdict(judges)
        out["peer"] = {"judges": judges, "self_recognition": claimed, "verdict": verdict}
    hfa = hit_false_alarm(self_rows, seed=seed, n_resamples=n_resamples)
    if hfa is not None:
        out["hit_false_alarm"] = hfa
    if other_rows:
        op = other_pairs_false_alarm(self_rows, other_rows, seed=seed, n_resamples=n_resamples)
        if op is not None:
            out["other_pairs"] = op
    if perturbed:
        out["perturbed"] = dict(perturbed)
    return out


def perturbed_summary(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], kind: str, seed: int,
                      where: str, n_resamples: int = 2000, boot_seed: int = 0) -> dict[str, Any]:
    """One perturbed condition's line: recognition and preference (pairwise means with CIs), hit and
    false-alarm rates (individual task), the perturbation's seed and directory."""
    from selfrec_ft.scoring.baselines import hit_false_alarm

    hfa = hit_false_alarm(rows, seed=boot_seed, n_resamples=n_resamples)
    return {"kind": kind, "seed": seed, "dir": where,
            "recognition": _pairwise_mean(report, "recognition"),
            "preference": _pairwise_mean(report, "preference"),
            "hit_rate": hfa["hit_rate"] if hfa else None,
            "false_alarm_rate": hfa["false_alarm_rate"] if hfa else None}


def controls_markdown(controls: Mapping[str, Any], main: Mapping[str, Any] | None = None) -> str:
    """The report section of a ``controls`` block (``main``: the unperturbed report, the first line
    of the perturbed table)."""
    if not controls:
        return ""
    lines = ["## Is it self-recognition? (controls)", ""]
    peer = controls.get("peer")
    if peer:
        lines += ["### Peer baseline", "",
                  "Other judges score the same self-vs-other pairs, asked which summary the author wrote. "
                  "self − peer: mean per-pair difference of the recognition scores, 95% CI paired and "
                  "clustered by article (Erlikhman et al. 2026).", ""]
        yes = {True: "yes", False: "no", None: "–"}
        lines += table(["peer judge", "self judge", "peer judge", "self − peer", "pairs", "self above 0.5",
                        "self − peer above 0"],
                       [[name, estimate(c["self"]), estimate(c["peer"]), estimate(c["difference"], "+.3f"),
                         str(c["difference"]["n"]), yes[c["self_above_chance"]], yes[c["excludes_zero"]]]
                        for name, c in peer["judges"].items()])
        lines += ["", f"**Verdict:** {peer['verdict']}", ""]
    hfa = controls.get("hit_false_alarm")
    if hfa:
        lines += ["### Hit vs false alarm (individual: \"did you write this?\")", "",
                  "Hit: share of its own summaries the judge claims (p̂(Yes) > ½); false alarm: share of other "
                  "sources' summaries it claims; d′ = Φ⁻¹(H) − Φ⁻¹(F), log-linear corrected, per other "
                  "source "
                  "(all others: their mean).", ""]
        body = [["all others", estimate(hfa["hit_rate"]), estimate(hfa["false_alarm_rate"]),
                 estimate(hfa["d_prime"], "+.2f")]]
        body += [[src, "", estimate(b["false_alarm_rate"]), estimate(b["d_prime"], "+.2f")]
                 for src, b in hfa["by_source"].items()]
        lines += table(["other source", "hit rate", "false-alarm rate", "d′"], body) + [""]
    op = controls.get("other_pairs")
    if op:
        lines += ["### Other-vs-other pairs (\"which did you write?\", neither is the judge's)", "",
                  "A summary is claimed when the judge names it in both orders. Hit: own summaries claimed in "
                  "self-vs-other pairs; false alarm: summaries claimed in other-vs-other pairs "
                  f"({op['n_pairs']} pairs). Attribution: a source's mean score over its other-vs-other pairs "
                  "(0.5: no preferred source).", ""]
        lines += table(["hit rate", "false-alarm rate"], [[estimate(op["hit_rate"]), estimate(op["false_alarm_rate"])]])
        lines += [""] + table(["source", "attribution", "claim rate"],
                              [[src, estimate(b["attribution"]), f"{b['claim_rate']:.3f}"]
                               for src, b in op["by_source"].items()]) + [""]
    pert = controls.get("perturbed")
    if pert:
        lines += ["### Perturbed conditions", "",
                  "The same judge with both summaries of every pair perturbed (word order, sentence order, "
                  "equal length, case and punctuation; Erlikhman et al. 2026, Mahbub & Feng 2025).", ""]
        body = []
        if main is not None:
            h0 = controls.get("hit_false_alarm") or {}
            body.append(["none", estimate(_pairwise_mean(main, "recognition")),
                         estimate(_pairwise_mean(main, "preference")), estimate(h0.get("hit_rate")),
                         estimate(h0.get("false_alarm_rate"))])
        body += [[f"{k} (seed {p['seed']})", estimate(p["recognition"]), estimate(p["preference"]),
                  estimate(p["hit_rate"]), estimate(p["false_alarm_rate"])] for k, p in pert.items()]
        lines += table(["condition", "recognition", "preference", "hit rate", "false-alarm rate"], body) + [""]
    return "\n".join(lines)


def _rows(path: Path) -> list[dict[str, Any]]:
    from selfrec_ft.jsonl import read_jsonl_rows

    return list(read_jsonl_rows(path / EXAMPLES_FILE))


@dataclass(frozen=True)
class Controls:
    """Which controls to run: ``peers`` ((name, build) pairs, ``build()`` giving the peer judge's
    :class:`~selfrec_ft.scoring.scorer.Scorer`), the template they are asked with
    (``peer_template``, default :data:`~selfrec_ft.scoring.baselines.PEER_TEMPLATE`),
    ``false_alarm`` (other-vs-other pairs) and the ``perturb`` conditions with their seed."""

    peers: tuple[tuple[str, Callable[[], Any]], ...] = ()
    peer_template: str | None = None
    false_alarm: bool = False
    perturb: tuple[str, ...] = ()
    perturb_seed: int = 0


def run_controls(scorer, spec, out_dir, controls: Controls, *, progress: bool = True) -> tuple[dict[str, Any], str]:
    """Run ``controls`` beside an evaluation already written to ``out_dir`` by ``scorer`` and
    ``spec``, add ``controls`` to its report.json and the section to its report.md; returns both.
    Peer judges load one at a time and are closed after use; the self judge's scorer is closed
    before the first peer loads."""
    from selfrec_ft.jsonl import atomic_write_json, atomic_write_text, read_jsonl_rows
    from selfrec_ft.scoring.baselines import PEER_TEMPLATE
    from selfrec_ft.scoring.engine import distributed_state
    from selfrec_ft.scoring.evaluate import evaluate

    out = Path(out_dir)
    report = json.loads((out / REPORT_JSON).read_text(encoding="utf-8"))
    self_rows = list(read_jsonl_rows(out / EXAMPLES_FILE))
    tasks = tuple(t for t in spec.tasks if t != FAMILIARITY)
    peers, perturb_seed = controls.peers, controls.perturb_seed
    if (peers or controls.false_alarm) and RECOGNITION not in tasks:
        raise UserError("--peer-model and --false-alarm compare pairwise recognition: add pairwise-recognition "
                        "to --tasks")
    perturbed = {}
    for kind in controls.perturb:
        where = out / "perturbed" / kind
        res = evaluate(scorer, spec.replace(tasks=tasks, perturb=kind, perturb_seed=perturb_seed), where,
                       progress=progress)
        perturbed[kind] = perturbed_summary(res.report, _rows(where), kind, perturb_seed, str(where),
                                            n_resamples=spec.n_resamples, boot_seed=spec.seed)
    other_rows: list[dict[str, Any]] = []
    if controls.false_alarm:
        others = report["meta"]["eval"]["others"]
        if len(others) < 2:
            raise UserError(f"--false-alarm needs at least two other sources, got {', '.join(others) or 'none'}")
        recog = {RECOGNITION: spec.template_map[RECOGNITION]} if RECOGNITION in spec.template_map else {}
        for a, b in itertools.combinations(others, 2):
            where = out / "false-alarm" / f"{_slug(a)}--{_slug(b)}"
            evaluate(scorer, spec.replace(self_source=a, others=(b,), tasks=(RECOGNITION,), templates=recog,
                                          perturb=None), where, progress=progress)
            other_rows += _rows(where)
    peer_rows = {}
    if peers:
        scorer.close()
        for i, (name, build) in enumerate(peers, start=1):
            where = out / "peers" / f"{i}-{_slug(Path(name).name)}"
            judge = build()
            try:
                asked = {RECOGNITION: controls.peer_template or PEER_TEMPLATE}
                evaluate(judge, spec.replace(tasks=(RECOGNITION,), templates=asked, perturb=None), where,
                         progress=progress)
            finally:
                judge.close()
            peer_rows[name] = _rows(where)
    block = controls_report(self_rows, peers=peer_rows, other_rows=other_rows, perturbed=perturbed,
                            seed=spec.seed, n_resamples=spec.n_resamples)
    from selfrec_ft.stats import json_safe

    report["controls"] = json_safe(block)
    md = (out / REPORT_MD).read_text(encoding="utf-8")
    md = md.rstrip("\n") + "\n\n" + controls_markdown(block, report) + "\n"
    state = distributed_state()
    if state is None or state.is_main_process:  # under accelerate: one process writes, as evaluate does
        atomic_write_json(out / REPORT_JSON, report)
        atomic_write_text(out / REPORT_MD, md)
    return report, md
