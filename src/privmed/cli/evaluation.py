"""Evaluation subcommands, registered by ``privmed.cli``:

* ``privmed privacy audit BUNDLE [--json] [--k N] [--n N] [--seed S] [--canaries M]``
* ``privmed report BUNDLE_OR_RUN --out DIR``
"""
from __future__ import annotations

import json
from pathlib import Path


def cmd_audit(a) -> int:
    from privmed.evaluation.audit import audit_bundle, format_audit
    from privmed.inference.predictor import resolve_bundle

    block = audit_bundle(resolve_bundle(a.bundle), k_reference=a.k, n_per_side=a.n, seed=a.seed,
                         data_root=a.data_root, progress=not a.json, store=not a.no_store, canaries=a.canaries)
    print(json.dumps(block, indent=2, default=str) if a.json else format_audit(block))
    return 3 if block["exceeds_ceiling"] else 0


def cmd_report(a) -> int:
    from privmed.evaluation.report import write_report

    target = Path(a.target)
    if not (target / "metadata.json").is_file() and any(target.glob("*/result.json")):
        print(f"error: {target} is a run directory of benchmarks/paper.py, not a bundle; its report is "
              f"`python benchmarks/paper.py --report {target} --out {a.out}`")
        return 2
    out = write_report(a.target, a.out, data_root=a.data_root, progress=not a.quiet)
    print(f"report written: {out['html']} and {out['markdown']}")
    return 0


def register(sub, privacy_sub) -> None:
    pa = privacy_sub.add_parser("audit", help="membership-inference audit of a bundle against its (eps, delta) ceiling")
    pa.add_argument("bundle")
    pa.add_argument("--k", type=int, default=4, help="reference models for offline LiRA (0: loss attack only)")
    pa.add_argument("--n", type=int, default=500, help="members (and as many non-members) to audit")
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--canaries", type=int, default=0, metavar="M",
                    help="also run the one-run canary audit of the recipe with M canaries (head models): the only "
                         "check that can fail the audit (exit 3)")
    pa.add_argument("--data-root", type=Path)
    pa.add_argument("--no-store", action="store_true",
                    help="do not write the result into the private run log (<bundle>.run/audit.json)")
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(fn=cmd_audit)

    r = sub.add_parser("report", help="HTML + Markdown report of a bundle")
    r.add_argument("target", help="bundle directory")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--data-root", type=Path)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(fn=cmd_report)
