"""Phone photos of chest films through the served prediction path, as a file and as a camera frame.

    python benchmarks/bench_camera.py [--bundle chest_xray_pneumonia] [--n 40] [--seed 0] [--glare 1]
        [--moire 1] [--json OUT]

Simulated photos (``privmed.evaluation.camera_sim``) of films from the official chest_xray_pneumonia
test split, half of each class. For each: accepted (not refused by quality or OOD) and label agreement
with the clean film's served prediction, with ``source="file"`` (before) and ``"camera"`` (after), and
how far the rectified corners are from the film's (percent of the film side). Non-X-ray inputs (Grace
Hopper, uniform noise, brain MRIs, photo-like scenes) must stay refused with ``source="camera"``."""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from privmed.config import default_data_root
from privmed.data.read import load_image
from privmed.errors import PrivmedError
from privmed.evaluation.camera_sim import phone_photo, scene_photo
from privmed.inference.predictor import load_model
from privmed.inference.service import analyse


def pick(folder: Path, n: int, rng: np.random.Generator) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return [files[i] for i in sorted(rng.choice(len(files), n, replace=False))]


def served(model, data: bytes, source: str) -> dict:
    try:
        return analyse(model, data, source=source)[0]
    except PrivmedError as e:  # refused before the network: counts as not accepted
        return {"abstain": True, "label": None, "abstain_reasons": [str(e)], "image": {}}


def corner_error(res: dict, truth: np.ndarray) -> float | None:
    r = (res.get("image") or {}).get("rectified") or {}
    if not r.get("found"):
        return None
    side = np.mean([np.linalg.norm(truth[i] - truth[(i + 1) % 4]) for i in range(4)])
    return float(np.abs(np.asarray(r["corners"]) - truth).max() / side * 100)


def non_xray(root: Path, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    import matplotlib.cbook as cbook

    out = [("grace_hopper", Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes())]
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 256, (960, 1280, 3), dtype=np.uint8)).save(buf, "PNG")
    out.append(("uniform_noise", buf.getvalue()))
    for p in pick(root / "brain_tumor_mri" / "test" / "glioma", 2, rng) + \
            pick(root / "brain_tumor_mri" / "test" / "notumor", 2, rng):
        out.append((f"brain_mri/{p.parent.name}", p.read_bytes()))
    out += [("scene_no_film", scene_photo(rng)) for _ in range(3)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="chest_xray_pneumonia")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--glare", type=float, default=1.0, help="scale of the glare spot (0: none; an ablation)")
    ap.add_argument("--moire", type=float, default=1.0, help="scale of the monitor's moire lines (an ablation)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    root = default_data_root()
    model = load_model(a.bundle)
    rng = np.random.default_rng(a.seed)
    test = root / "chest_xray_pneumonia" / "test"
    films = pick(test / "normal", a.n // 2, rng) + pick(test / "pneumonia", a.n - a.n // 2, rng)
    rows = []
    for p in films:
        clean = served(model, p.read_bytes(), "file")
        photo = phone_photo(load_image(p).pixels, rng, glare=a.glare, moire=a.moire)
        row = {"film": f"{p.parent.name}/{p.name}", "kind": photo.kind, "clean_label": clean["label"],
               "clean_accepted": not clean["abstain"], "clean_p": clean["probabilities"].get("pneumonia")}
        for source in ("file", "camera"):
            res = served(model, photo.jpeg, source)
            row[source] = {"accepted": not res["abstain"], "label": res["label"],
                           "p": (res.get("probabilities") or {}).get("pneumonia"),
                           "agree": res["label"] == clean["label"], "reasons": res.get("abstain_reasons", [])}
        row["corner_error_pct"] = corner_error(served(model, photo.jpeg, "camera"), photo.corners)
        rows.append(row)
    summary = {}
    for source in ("file", "camera"):
        acc = [r for r in rows if r[source]["accepted"]]
        summary[source] = {"accepted": len(acc), "of": len(rows),
                           "agree_among_accepted": sum(r[source]["agree"] for r in acc),
                           "agree_all": sum(r[source]["agree"] for r in rows)}
        for kind in sorted({r["kind"] for r in rows}):
            k = [r for r in rows if r["kind"] == kind]
            summary[source][f"accepted_{kind}"] = f"{sum(r[source]['accepted'] for r in k)}/{len(k)}"
    sure = [r for r in rows if r["clean_p"] is not None and abs(r["clean_p"] - 0.5) >= 0.2 and r["camera"]["accepted"]]
    summary["camera"]["confident_clean_agree"] = f"{sum(r['camera']['agree'] for r in sure)}/{len(sure)}"
    shift = [r["camera"]["p"] - r["clean_p"] for r in rows if r["camera"]["p"] is not None and r["clean_p"] is not None]
    summary["camera"]["p_pneumonia_shift_median"] = float(np.median(shift)) if shift else None
    errs = [r["corner_error_pct"] for r in rows]
    found = [e for e in errs if e is not None]
    summary["rectified"] = {"found": len(found), "of": len(rows),
                            "corner_error_pct_median": float(np.median(found)) if found else None,
                            "within_2_5pct": sum(e <= 2.5 for e in found)}
    summary["clean_accepted"] = sum(r["clean_accepted"] for r in rows)
    others = []
    for name, data in non_xray(root, rng):
        f, c = served(model, data, "file"), served(model, data, "camera")
        others.append({"input": name, "file_accepted": not f["abstain"], "camera_accepted": not c["abstain"],
                       "camera_rectified": ((c.get("image") or {}).get("rectified") or {}).get("found")})
    summary["non_xray"] = {"n": len(others), "accepted_file": sum(o["file_accepted"] for o in others),
                           "accepted_camera": sum(o["camera_accepted"] for o in others)}
    print(json.dumps(summary, indent=2))
    for o in others:
        print(o)
    for r in rows:
        if not r["camera"]["accepted"] or not r["camera"]["agree"]:
            print("camera miss:", r["film"], r["kind"], "clean p", round(r["clean_p"] or 0, 3),
                  "corner err %", r["corner_error_pct"], r["camera"])
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "photos": rows, "non_xray": others}, indent=2))


if __name__ == "__main__":
    main()
