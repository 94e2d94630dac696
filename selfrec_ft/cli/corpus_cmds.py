"""`selfrec corpus check DIR` and `selfrec synth-corpus OUT_DIR`."""

from __future__ import annotations

from selfrec_ft.defaults import GENERATION_DOMAINS


def _check(args) -> int:
    from selfrec_ft.data.corpus import check_corpus, load_corpus

    report = check_corpus(load_corpus(args.dir))
    print(report.format())
    return 0 if report.usable else 1


def _synth(args) -> int:
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus

    corpus = synth_corpus(args.domain, args.n, seed=args.seed)
    out = write_corpus(corpus, args.out_dir)
    print(f"wrote {len(corpus.articles)} {args.domain} articles with sources {', '.join(corpus.sources())} to {out}")
    return 0


def register(sub) -> None:
    corpus = sub.add_parser("corpus", help="inspect corpus directories")
    csub = corpus.add_subparsers(dest="corpus_command", metavar="ACTION")
    csub.required = True
    check = csub.add_parser("check", help="validate a corpus directory and count what it holds")
    check.add_argument("dir", help="directory with articles.jsonl and summaries.jsonl")
    check.set_defaults(func=_check)

    synth = sub.add_parser("synth-corpus", help="write a synthetic news corpus (for tests and the demo)")
    synth.add_argument("out_dir")
    synth.add_argument("--domain", choices=GENERATION_DOMAINS, default="short")
    synth.add_argument("--n", type=int, default=100, help="number of articles")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)
