"""`selfrec make-tiny-model OUT_DIR`."""

from __future__ import annotations

from selfrec_ft.defaults import TINY_SIZES


def _make(args) -> int:
    from selfrec_ft.models.tiny import make_tiny_model

    out = make_tiny_model(args.out_dir, seed=args.seed, size=args.size)
    print(f"wrote a {args.size} Llama-architecture model and tokenizer to {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("make-tiny-model", help="build a small random Llama model + local tokenizer")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(TINY_SIZES), default="tiny",
                   help="tiny: seconds to build, for tests; small: ~17M parameters, for benchmarks")
    p.set_defaults(func=_make)
