"""``selfrec sweep`` = ``recipes/sweep_recognition.py``: train a grid of self-recognition
fine-tunes, evaluate them, analyse whether preference follows recognition.

    selfrec sweep                                           # the CPU demo (recipes/demo/sweep.yaml)
    selfrec sweep --config recipes/llama2-7b-chat/sweep.yaml [--output_dir DIR]
    selfrec sweep --config C --prepare_only                 # run configs (+ SLURM script) only
    selfrec sweep --config C --skip_training                # evaluate + analyse finished runs

Rerun the same command after a kill: finished runs and evaluations are not redone. Every logic lives
in :mod:`selfrec_ft.sweep` (config, runner, evaluation, slurm); see recipes/README.md.
"""

from __future__ import annotations

import argparse
import sys

from selfrec_ft.cmdline import ArgumentParser, run_main

NAME = "sweep"
HELP = "train, evaluate and analyse a recognition-strength sweep (= recipes/sweep_recognition.py)"
DEMO_CONFIG = "sweep.yaml"
DESCRIPTION = """\
Train a grid of self-recognition fine-tunes, evaluate them in-domain and out-of-domain, and analyse
whether preference follows recognition (SWEEP_DIR/runs.json, analysis.json, report.md, PNG plots).

  selfrec sweep                                         # the CPU demo (recipes/demo/sweep.yaml)
  selfrec sweep --config recipes/llama2-7b-chat/sweep.yaml [--output_dir DIR]
  selfrec sweep --config C --prepare_only               # run configs (+ SLURM script) only
  selfrec sweep --config C --skip_training              # evaluate + analyse finished runs

Rerun the same command after a kill: finished runs and evaluations are not redone."""


def make_parser(subparsers=None, prog: str | None = None) -> argparse.ArgumentParser:
    """The sweep's argument parser (argparse only: nothing heavy); with ``subparsers`` it is added
    there as the ``sweep`` command."""
    kwargs = {"description": DESCRIPTION, "formatter_class": argparse.RawDescriptionHelpFormatter}
    if subparsers is not None:
        p = subparsers.add_parser(NAME, help=HELP, **kwargs)
    else:
        p = ArgumentParser(prog=prog, **kwargs)  # one-line argument errors, as under `selfrec sweep`
    p.add_argument("--config", help=f"sweep YAML (default: the CPU demo, recipes/demo/{DEMO_CONFIG})")
    p.add_argument("--output_dir", help="sweep directory (default: output_dir in the sweep YAML)")
    p.add_argument("--prepare_only", action="store_true",
                   help="write every run's sweep_config.yaml (and slurm_array.sh) and stop")
    p.add_argument("--skip_training", action="store_true", help="train nothing; evaluate and analyse finished runs")
    p.add_argument("--no_progress", action="store_true", help="no progress bars over evaluations")
    p.set_defaults(func=sweep)
    return p


def sweep(args: argparse.Namespace) -> int:
    """Run the sweep ``args`` describe and print what became of every run; 1 if a run failed."""
    from selfrec_ft.scripts.configs import demo_config
    from selfrec_ft.sweep.processes import end_distributed, is_main_process
    from selfrec_ft.sweep.runner import run_sweep

    try:
        result = run_sweep(args.config or demo_config(DEMO_CONFIG), args.output_dir, train=not args.skip_training,
                           prepare_only=args.prepare_only, progress=not args.no_progress)
    finally:
        end_distributed()
    if not is_main_process():
        return 0
    print_summary(result)
    return 0 if not result.failed else 1


def print_summary(result) -> None:
    """The runs' fates, then the sweep's correlations and where its analysis is."""
    done = sum(r["status"] == "done" for r in result.runs)
    print(f"{len(result.runs)} runs in {result.sweep_dir / 'runs.json'}: {done} done, "
          f"{len(result.trained)} trained now, {len(result.skipped)} finished earlier, {len(result.failed)} failed")
    for run_id in result.failed:
        err = next(r["error"] for r in result.runs if r["run_id"] == run_id)
        print(f"  failed: {run_id}: {err}")
    if result.analysis is not None:
        def fmt(x):
            return "–" if x is None else f"{x:.3f}"

        for dom, c in result.analysis["correlation"].items():
            r, tau = c["pearson"]["r"], c["kendall"]["tau"]
            print(f"  {dom}: {c['n_runs']} runs, Pearson r {fmt(r)}, Kendall tau {fmt(tau)}, "
                  f"slope {fmt(c['slope']['value'])}")
        print(f"analysis: {result.sweep_dir / 'analysis.json'}, {result.sweep_dir / 'report.md'}; "
              f"table: {result.table}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``selfrec sweep`` and ``recipes/sweep_recognition.py``: the exit status (2 and
    one ``error:`` line for a bad sweep config)."""
    args = make_parser(prog=prog).parse_args(argv)
    return run_main(sweep, args)


if __name__ == "__main__":
    sys.exit(main())
