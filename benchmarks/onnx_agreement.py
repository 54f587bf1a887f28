"""Do the default bundles answer the same through ONNX Runtime (the default since 2026-12-05) as through
torch (the runtime they served with before)? Every image of each bundle's test split goes through
``Model.predict`` twice, once per runtime; the table gives the largest probability difference and how
many labels and refusals differ. Written to benchmarks/results/onnx_agreement.md.

    python benchmarks/onnx_agreement.py [--bundles chest_xray_pneumonia ...] [--data-root DATASETS]

Against older code: ``PYTHONPATH=OLD/src python benchmarks/onnx_agreement.py --dump old.json`` writes that
code's torch probabilities per image; ``--against old.json`` then adds their largest difference from this
code's torch and default runtimes.
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


def compare(bundle: str, files: list[Path], dump: dict, against: dict) -> dict:
    torch_model, default = load_both(bundle)
    r = {"bundle": bundle, "runtime": default.backend, "images": len(files), "diff": 0.0, "labels": 0,
         "refusals": 0, "old_torch": 0.0, "old_default": 0.0}
    for f in tqdm(files, desc=bundle, leave=False):
        pt, pd = torch_model.predict(f), default.predict(f)
        r["diff"] = max(r["diff"], max_diff(pt.probabilities, pd.probabilities))
        r["labels"] += pt.label != pd.label
        r["refusals"] += bool(pt.abstain) != bool(pd.abstain)
        dump[str(f)] = pt.probabilities
        if str(f) in against:
            r["old_torch"] = max(r["old_torch"], max_diff(against[str(f)], pt.probabilities))
            r["old_default"] = max(r["old_default"], max_diff(against[str(f)], pd.probabilities))
    return r


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", nargs="+", default=list(DEFAULTS))
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--dump", type=Path, help="write the torch probabilities per image here (JSON)")
    ap.add_argument("--against", type=Path, help="a --dump of older code to compare with")
    a = ap.parse_args(argv)
    dump, against = {}, json.loads(a.against.read_text()) if a.against else {}
    os.environ["PRIVMED_CACHE"] = tempfile.mkdtemp(prefix="privmed-agreement-")
    from privmed.config import default_data_root

    root = a.data_root or default_data_root()
    t0 = time.time()
    rows = [compare(b, sorted((root / b / "test").glob("*/*")), dump, against) for b in a.bundles]
    if a.dump:
        a.dump.write_text(json.dumps(dump))
        return
    lines = ["# ONNX Runtime against torch on the default bundles' test splits", "",
             f"`python benchmarks/onnx_agreement.py`, {time.strftime('%Y-%m-%d', time.gmtime())}, "
             f"{platform.machine()} CPU ({os.cpu_count()} cores), {time.time() - t0:.0f} s. Each image through "
             "`Model.predict` with `PRIVMED_ONNX=0` (torch) and with the default runtime.", "",
             "| bundle | default runtime | test images | max abs probability difference | labels differing "
             "| refusals differing |" + (" vs --against: torch / default |" if against else ""),
             "|---|---|---|---|---|---|" + ("---|" if against else "")]
    old = (lambda r: f" {r['old_torch']:.1e} / {r['old_default']:.1e} |") if against else (lambda r: "")
    lines += [f"| {r['bundle']} | {r['runtime']} | {r['images']} | {r['diff']:.1e} | {r['labels']} | {r['refusals']} |"
              + old(r) for r in rows]
    if against:
        lines += ["", f"`--against {a.against.name}`: the torch probabilities of older code (`--dump`) on the same "
                  "images."]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
