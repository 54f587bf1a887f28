"""Do the default bundles answer the same through ONNX Runtime (the default since 2026-12-05) as through
torch (the runtime they served with before)? Every image of each bundle's test split goes through
``Model.predict`` twice, once per runtime; the table gives the largest probability difference and how
many labels and refusals differ. Written to benchmarks/results/onnx_agreement.md.

    python benchmarks/onnx_agreement.py [--bundles chest_xray_pneumonia ...] [--data-root DATASETS]

Against older code: ``PYTHONPATH=OLD/src python benchmarks/onnx_agreement.py --dump old.json`` writes that
code's torch answers per image; ``--against old.json --out FILE`` then adds their largest probability difference
from this code's torch and default runtimes, how many labels and refusals of the default runtime differ from the
old code's, and the accuracy of both on the test folders (every image, refusals scored by their label).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

DEFAULTS = ("chest_xray_pneumonia", "brain_tumor_mri", "covid19_xray", "covid19_ct")
OUT = Path(__file__).resolve().parent / "results" / "onnx_agreement.md"


def load_both(bundle: str):
    from privmed.inference.predictor import load_model

    os.environ["PRIVMED_ONNX"] = "0"
    torch_model = load_model(bundle)
    os.environ.pop("PRIVMED_ONNX")
    return torch_model, load_model(bundle)


def max_diff(p: dict, q: dict) -> float:
    return max(abs(p[k] - q[k]) for k in p)


def compare(bundle: str, files: list[Path], dump: dict, against: dict, default_only: bool = False) -> dict:
    """``default_only``: the default runtime alone (its answers stand in for torch's: half the time)."""
    if default_only:
        from privmed.inference.predictor import load_model

        torch_model = default = load_model(bundle)
    else:
        torch_model, default = load_both(bundle)
    r = {"bundle": bundle, "runtime": default.backend, "images": len(files), "diff": 0.0, "labels": 0,
         "refusals": 0, "old_torch": 0.0, "old_default": 0.0, "old_labels": 0, "old_refusals": 0,
         "right_old": 0, "right": 0}
    for f in tqdm(files, desc=bundle, leave=False):
        pt, pd = torch_model.predict(f), default.predict(f)
        r["diff"] = max(r["diff"], max_diff(pt.probabilities, pd.probabilities))
        r["labels"] += pt.label != pd.label
        r["refusals"] += bool(pt.abstain) != bool(pd.abstain)
        r["right"] += pd.label == f.parent.name
        dump[str(f)] = {"p": pt.probabilities, "label": pt.label, "abstain": bool(pt.abstain)}
        old = against.get(str(f))
        if old:
            r["old_torch"] = max(r["old_torch"], max_diff(old["p"], pt.probabilities))
            r["old_default"] = max(r["old_default"], max_diff(old["p"], pd.probabilities))
            r["old_labels"] += old["label"] != pd.label
            r["old_refusals"] += old["abstain"] != bool(pd.abstain)
            r["right_old"] += old["label"] == f.parent.name
    return r


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", nargs="+", default=list(DEFAULTS))
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--dump", type=Path, help="write the torch probabilities per image here (JSON)")
    ap.add_argument("--against", type=Path, help="a --dump of older code to compare with")
    ap.add_argument("--default-only", action="store_true",
                    help="predict with the default runtime only (for --dump/--against between code versions)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"the markdown table (default {OUT.name})")
    a = ap.parse_args(argv)
    dump, against = {}, json.loads(a.against.read_text()) if a.against else {}
    os.environ["PRIVMED_CACHE"] = tempfile.mkdtemp(prefix="privmed-agreement-")
    from privmed.config import default_data_root

    root = a.data_root or default_data_root()
    t0 = time.time()
    rows = [compare(b, sorted((root / b / "test").glob("*/*")), dump, against, a.default_only) for b in a.bundles]
    if a.dump:
        a.dump.write_text(json.dumps(dump))
        return
    lines = markdown(rows, a, bool(against), time.time() - t0)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def markdown(rows: list[dict], a, against: bool, seconds: float) -> list[str]:
    cmd = "python benchmarks/onnx_agreement.py" + (" --default-only" if a.default_only else "") + \
        (f" --against {a.against.name}" if against else "")
    where = f"{time.strftime('%Y-%m-%d', time.gmtime())}, {platform.machine()} CPU ({os.cpu_count()} cores), " \
            f"{seconds:.0f} s"
    old_head = " max probability difference torch / default | labels differing | refusals differing | " \
               "accuracy old -> new |"
    if a.default_only:
        lines = ["# This code's served answers against older code's, on the default bundles' test splits", "",
                 f"`{cmd}`, {where}. Each image through `Model.predict` (the default runtime) here and in the "
                 f"older code's `--dump` ({a.against.name if against else 'none'}).", "",
                 "| bundle | runtime | test images | max abs probability difference | labels differing | refusals "
                 "differing | accuracy old -> new |", "|---|---|---|---|---|---|---|"]
        return lines + [f"| {r['bundle']} | {r['runtime']} | {r['images']} | {r['old_default']:.1e} |"
                        + old_columns(r).split("|", 1)[1] for r in rows]
    lines = ["# ONNX Runtime against torch on the default bundles' test splits", "",
             f"`{cmd}`, {where}. Each image through `Model.predict` with `PRIVMED_ONNX=0` (torch) and with the "
             "default runtime.", "",
             "| bundle | default runtime | test images | max abs probability difference | labels differing "
             "| refusals differing |" + (" vs --against:" + old_head if against else ""),
             "|---|---|---|---|---|---|" + ("---|---|---|---|" if against else "")]
    lines += [f"| {r['bundle']} | {r['runtime']} | {r['images']} | {r['diff']:.1e} | {r['labels']} | {r['refusals']} |"
              + (old_columns(r) if against else "") for r in rows]
    if against:
        lines += ["", f"`--against {a.against.name}`: the torch answers of older code (`--dump`) on the same images; "
                  "labels and refusals differing, and accuracy, are the default runtime's against them."]
    return lines


def old_columns(r: dict) -> str:
    n = r["images"]
    return (f" {r['old_torch']:.1e} / {r['old_default']:.1e} | {r['old_labels']} | {r['old_refusals']} | "
            f"{100 * r['right_old'] / n:.1f} % -> {100 * r['right'] / n:.1f} % |")


if __name__ == "__main__":
    main()
