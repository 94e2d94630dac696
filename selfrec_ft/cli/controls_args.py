"""The control flags of ``selfrec eval`` (peer judges, other-vs-other pairs, perturbed conditions)
and of ``selfrec report`` (peer and other-vs-other rows); the work is in
:mod:`selfrec_ft.scoring.controls`."""

from __future__ import annotations

import argparse

from selfrec_ft.defaults import PERTURBATIONS


def add_control_arguments(p: argparse.ArgumentParser) -> None:
    """``selfrec eval``'s control flags."""
    g = p.add_argument_group("controls (is it self-recognition?)")
    g.add_argument("--peer-model", action="append", metavar="M", default=[],
                   help="peer judge (repeatable): scores the same self-vs-other pairs, asked which summary the "
                        "author (--self-source) wrote (template pairwise-recognition-peer); the report gives "
                        "self − peer with a paired article-clustered CI")
    g.add_argument("--peer-template", default="pairwise-recognition-peer", metavar="TEMPLATE",
                   help="the recognition template the peers are asked with (default pairwise-recognition-peer: "
                        "\"which summary did {author} write?\"; pairwise-recognition for a peer fine-tuned on the "
                        "judge's own training pairs, which was trained on \"which did you write?\")")
    g.add_argument("--false-alarm", action="store_true",
                   help="also score pairs of two other sources (\"which did you write?\"): false-alarm rate and "
                        "the source the judge attributes most")
    g.add_argument("--perturb", action="append", choices=PERTURBATIONS, metavar="KIND", default=[],
                   help=f"also score with both summaries of every pair perturbed (repeatable): "
                        f"{', '.join(PERTURBATIONS)}; reported side by side")
    g.add_argument("--perturb-seed", type=int, default=0, help="seed of the shuffles (default 0)")


def run_eval_controls(args: argparse.Namespace, scorer, spec, markdown: str) -> str:
    """Run the controls asked for on ``selfrec eval``'s command line; the report's markdown after."""
    if not (args.peer_model or args.false_alarm or args.perturb):
        return markdown
    from selfrec_ft.scoring.controls import Controls, run_controls
    from selfrec_ft.scoring.scorer import Scorer

    def builder(path: str):
        return lambda: Scorer(path, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                              max_batch_tokens=args.max_batch_tokens, max_length=args.max_length)

    controls = Controls(peers=tuple((m, builder(m)) for m in args.peer_model), peer_template=args.peer_template,
                        false_alarm=args.false_alarm, perturb=tuple(dict.fromkeys(args.perturb)),
                        perturb_seed=args.perturb_seed)
    _, md = run_controls(scorer, spec, args.out, controls, progress=not args.no_progress)
    return md


def add_report_control_arguments(p: argparse.ArgumentParser) -> None:
    """``selfrec report``'s control inputs."""
    p.add_argument("--peer", action="append", metavar="PATH", default=[],
                   help="examples.jsonl of a peer judge on the same pairs (repeatable; e.g. OUT/peers/1-NAME/): "
                        "adds the self − peer baseline")
    p.add_argument("--other-pairs", action="append", metavar="PATH", default=[],
                   help="examples.jsonl of other-vs-other pairs (repeatable; OUT/false-alarm/*/): adds the "
                        "pairwise false-alarm rate")


def check_report_controls(args: argparse.Namespace) -> None:
    """Before any file is read: peer and other-pair rows go with selfrec rows only."""
    if args.format != "selfrec" and (args.peer or args.other_pairs):
        from selfrec_ft.errors import UserError

        raise UserError("--peer and --other-pairs read selfrec examples.jsonl files (--format selfrec)")


def report_controls(args: argparse.Namespace, report: dict) -> str:
    """The controls section of ``selfrec report`` (``report`` gets ``controls``); empty when there
    is nothing to show."""
    from selfrec_ft.scoring.controls import controls_markdown, controls_report
    from selfrec_ft.scoring.report import load_rows
    from selfrec_ft.stats import json_safe

    rows = load_rows(args.inputs, fmt=args.format, skip_first=args.skip_first)
    peers = {p: load_rows([p]) for p in args.peer}
    others = [r for p in args.other_pairs for r in load_rows([p])]
    controls = controls_report(rows, peers=peers, other_rows=others, seed=args.seed, n_resamples=args.n_resamples)
    if not controls:
        return ""
    report["controls"] = json_safe(controls)
    return "\n" + controls_markdown(controls)
