"""``privmed bench paper [--quick] [--out docs/PAPER.md] [--run-dir DIR]``, registered by
``privmed.cli``."""
from __future__ import annotations

from pathlib import Path


def cmd_bench_paper(a) -> int:
    from privmed.bench.paper import run_paper

    res = run_paper(quick=a.quick, out=a.out, run_dir=a.run_dir, only=a.only, progress=not a.quiet)
    print(f"results written to {res['markdown']} (raw results in {res['run_dir']})")
    for k, v in res["failed"].items():
        print(f"error: {k}: {v}")
    return 1 if res["failed"] else 0


def register(sub, privacy_sub) -> None:
    b = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_cmd", required=True)
    bp = b.add_parser("paper", help="the paper's comparison tables, ablation, robustness, privacy-utility curve")
    bp.add_argument("--quick", action="store_true",
                    help="the cheap subset (privmed's best model, its privacy-utility curve, COVID-19 X-ray)")
    bp.add_argument("--out", type=Path, default=Path("docs/PAPER.md"), help="the generated tables (overwritten)")
    bp.add_argument("--run-dir", type=Path,
                    help="where bundles and raw results go (default runs/paper[-quick], git-ignored)")
    bp.add_argument("--only", action="append", help="run only entries whose id starts with this (repeatable)")
    bp.add_argument("--quiet", action="store_true")
    bp.set_defaults(fn=cmd_bench_paper)
