"""``selfrec dissect``: which response properties drive a judge's preferences (P2's dissection)."""

from __future__ import annotations

import argparse

from selfrec_ft.dissection.fit import DEFAULT_PRIOR_SCALE


def register(sub) -> None:
    p = sub.add_parser(
        "dissect",
        help="fit P2's Bayesian logistic regression of preferences on property comparisons",
        description=(
            "Regress 'response 1 preferred' on comparison features (-1/0/+1 per property: P2's 29 "
            "properties and 'self') with a Laplace(0, b) prior and no intercept. Writes report.json, "
            "report.md and preference_scores.png to --out."
        ),
    )
    p.add_argument("--comparisons", required=True, metavar="FILE.jsonl",
                   help='lines {"features": {PROPERTY: -1|0|1, ...}, "preferred": 1|0}')
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--method", choices=["map", "nuts"], default="map",
                   help="map: posterior mode + Laplace interval (fast, default); nuts: P2's exact "
                        "NUTS posterior mean averaged over folds (needs pip install selfrec_ft[bayes])")
    p.add_argument("--prior-scale", type=float, default=DEFAULT_PRIOR_SCALE, metavar="B",
                   help="scale b of the Laplace(0, b) prior on each weight (P2: 0.1)")
    p.add_argument("--folds", type=int, default=10, help="nuts only: training folds averaged (P2: 10)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from selfrec_ft.dissection.run import run_dissection
    from selfrec_ft.errors import UserError

    kwargs = {}
    if args.method == "nuts":
        if args.folds < 1:
            raise UserError(f"--folds must be at least 1, got {args.folds}")
        kwargs["folds"] = args.folds
    report = run_dissection(args.comparisons, args.out, method=args.method, prior_scale=args.prior_scale, **kwargs)
    print(f"{report['n']} comparisons, {len(report['properties'])} properties fitted, "
          f"accuracy {report['accuracy']:.3f}; wrote {args.out}/report.json, report.md, preference_scores.png")
    return 0
