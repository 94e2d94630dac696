#!/usr/bin/env python
"""Sweep recognition strength: train a grid of self-recognition fine-tunes, evaluate, analyse.

    python recipes/sweep_recognition.py                                   # CPU demo (recipes/demo/sweep.yaml)
    python recipes/sweep_recognition.py --config recipes/llama2-7b-chat/sweep.yaml [--output_dir DIR]
    python recipes/sweep_recognition.py --config C --prepare_only         # run configs (+ SLURM script) only
    python recipes/sweep_recognition.py --config C --skip_training        # evaluate + analyse finished runs

Rerun the same command after a kill: finished runs and evaluations are not redone. Every logic lives
in ``selfrec_ft.sweep.runner``; see recipes/README.md.
"""

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "demo" / "sweep.yaml"


def main(argv=None) -> int:
    from selfrec_ft.errors import UserError
    from selfrec_ft.sweep.runner import is_main_process, end_distributed, run_sweep

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="sweep YAML (default: the CPU demo)")
    p.add_argument("--output_dir", help="sweep directory (default: output_dir in the sweep YAML)")
    p.add_argument("--prepare_only", action="store_true",
                   help="write every run's sweep_config.yaml (and slurm_array.sh) and stop")
    p.add_argument("--skip_training", action="store_true", help="train nothing; evaluate and analyse finished runs")
    p.add_argument("--no_progress", action="store_true", help="no progress bars over evaluations")
    args = p.parse_args(argv)
    try:
        result = run_sweep(args.config, args.output_dir, train=not args.skip_training,
                           prepare_only=args.prepare_only, progress=not args.no_progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        end_distributed()
    if not is_main_process():
        return 0
    done = sum(r["status"] == "done" for r in result.runs)
    print(f"{len(result.runs)} runs in {result.sweep_dir / 'runs.json'}: {done} done, "
          f"{len(result.trained)} trained now, {len(result.skipped)} finished earlier, {len(result.failed)} failed")
    for run_id in result.failed:
        err = next(r["error"] for r in result.runs if r["run_id"] == run_id)
        print(f"  failed: {run_id}: {err}")
    if result.analysis is not None:
        for dom, c in result.analysis["correlation"].items():
            r, tau = c["pearson"]["r"], c["kendall"]["tau"]
            fmt = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
            print(f"  {dom}: {c['n_runs']} runs, Pearson r {fmt(r)}, Kendall tau {fmt(tau)}, "
                  f"slope {fmt(c['slope']['value'])}")
        print(f"analysis: {result.sweep_dir / 'analysis.json'}, {result.sweep_dir / 'report.md'}; "
              f"table: {result.table}")
    return 0 if not result.failed else 1


if __name__ == "__main__":
    sys.exit(main())
