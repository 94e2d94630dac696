"""`selfrec corpus check|import-p1|from-hf` and `selfrec synth-corpus OUT_DIR`."""

from __future__ import annotations

from selfrec_ft.cli.common import int_at_least
from selfrec_ft.defaults import GENERATION_DOMAINS


def _check(args) -> int:
    from selfrec_ft.data.corpus import check_corpus, load_corpus

    report = check_corpus(load_corpus(args.dir))
    print(report.format())
    return 0 if report.usable else 1


def _import_p1(args) -> int:
    from selfrec_ft.data.p1_import import import_p1

    print(import_p1(args.clone, args.out).format())
    return 0


def _from_hf(args) -> int:
    from selfrec_ft.data.corpus import check_corpus, load_hf_corpus, read_id_list, write_new_corpus

    ids = read_id_list(args.ids) if args.ids else None
    corpus = load_hf_corpus(args.dataset, args.config, args.split, ids=ids, n=args.n,
                            document_column=args.document_column, summary_column=args.summary_column,
                            id_column=args.id_column)
    written = write_new_corpus(corpus, args.out)
    check = check_corpus(corpus)
    order = f"in the order of {args.ids}" if ids else (f"the first {args.n}" if args.n else "all rows")
    print(f"{'wrote' if written else 'unchanged (already there)'}: {check.n_articles} articles ({order}) of "
          f"{args.dataset}" + (f" [{args.config}]" if args.config else "") + f", split {args.split}, with "
          f"their {args.summary_column} as source human -> {args.out}")
    if check.empty_articles or check.empty_summaries.get("human"):
        print(f"note: {len(check.empty_articles)} empty articles, "
              f"{len(check.empty_summaries.get('human', []))} empty reference summaries")
    print(f"next: selfrec generate --model MODEL --corpus {args.out} --source NAME   # the evaluator's own summaries")
    return 0


def _synth(args) -> int:
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus

    corpus = synth_corpus(args.domain, args.n, seed=args.seed)
    out = write_corpus(corpus, args.out_dir)
    print(f"wrote {len(corpus.articles)} {args.domain} articles with sources {', '.join(corpus.sources())} to {out}")
    return 0


def register(sub) -> None:
    corpus = sub.add_parser("corpus", help="inspect, import and convert corpus directories")
    csub = corpus.add_subparsers(dest="corpus_command", metavar="ACTION")
    csub.required = True
    check = csub.add_parser("check", help="validate a corpus directory and count what it holds")
    check.add_argument("dir", help="directory with articles.jsonl and summaries.jsonl")
    check.set_defaults(func=_check)

    p1 = csub.add_parser(
        "import-p1", help="corpora and result files from a clone of P1's repository",
        description="Read a clone of github.com/ArjunPanickssery/self_recognition (Panickssery et al., "
        "NeurIPS 2024) and write OUT/xsum and OUT/cnn (articles in P1's order, which defines the training "
        "articles; sources human, llama2-7b-chat, gpt35, gpt4, claude) and OUT/results/{pairwise,"
        "individual_recognition,individual_score}/{xsum,cnn}/*.jsonl (P1's per-example results, for "
        "selfrec report --format p1). A rerun leaves identical files alone and refuses to overwrite "
        "different ones. The Llama-2 recipes read data/p1/{xsum,cnn}: use --out data/p1.")
    p1.add_argument("clone", metavar="P1_CLONE", help="directory of a clone of P1's repository")
    p1.add_argument("--out", required=True, metavar="DIR", help="output directory (e.g. data/p1)")
    p1.set_defaults(func=_import_p1)

    hf = csub.add_parser(
        "from-hf", help="a corpus from a Hugging Face dataset (hub id, save_to_disk directory or data file)",
        description="Convert one split of a dataset into a corpus directory whose reference summary is "
        "source human: a hub id through datasets.load_dataset (needs internet), a directory written by "
        "save_to_disk through load_from_disk, or a local .json/.jsonl/.parquet/.csv file or directory of "
        "them through load_dataset. XSUM: EdinburghNLP/xsum --document-column document --summary-column "
        "summary; CNN/DailyMail: abisee/cnn_dailymail --config 3.0.0 --document-column article "
        "--summary-column highlights.")
    hf.add_argument("dataset", metavar="DATASET", help="hub id, save_to_disk directory, or local data file/directory")
    hf.add_argument("--config", metavar="C", help="dataset configuration (e.g. 3.0.0 for CNN/DailyMail)")
    hf.add_argument("--split", required=True, metavar="S", help="split, e.g. train (hub datasets: also train[:1000])")
    hf.add_argument("--document-column", required=True, metavar="D", help="article text column")
    hf.add_argument("--summary-column", required=True, metavar="R", help="reference summary column (source human)")
    hf.add_argument("--id-column", required=True, metavar="I", help="article id column")
    pick = hf.add_mutually_exclusive_group()
    pick.add_argument("--n", type=int_at_least(1), metavar="N", help="keep the first N rows")
    pick.add_argument("--ids", metavar="FILE",
                      help="keep these ids in this order: one id per line, or a corpus articles.jsonl (or its "
                      "directory), e.g. data/p1/xsum for P1's articles; a missing id is an error")
    hf.add_argument("--out", required=True, metavar="DIR", help="corpus directory to write")
    hf.set_defaults(func=_from_hf)

    synth = sub.add_parser("synth-corpus", help="write a synthetic news corpus (for tests and the demo)")
    synth.add_argument("out_dir")
    synth.add_argument("--domain", choices=GENERATION_DOMAINS, default="short")
    synth.add_argument("--n", type=int_at_least(1), default=100, help="number of articles")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)
