"""int8 static quantization of a bundle's ONNX graph, as a deployment-side option.

``quantize_static`` records the range of every activation over the calibration images, and those
ranges end up in the int8 graph: they are statistics of the calibration images, computed without
differential privacy. So:

- calibrate on images the bundle was NOT trained on: a public set of the same modality, for example
  the bundle dataset's public test split. Not ``covid19_xray`` for the ``chest_xray_pneumonia``
  bundle: its normal and viral-pneumonia films are Kermany copies (found 2026-12-05, most of them
  contrast-enhanced re-saves that no byte or pHash check catches). The bundle's own dataset's
  train/val splits are refused unless ``private_ok=True`` (``--private-calibration``);
- the int8 graph and its record go to ``BUNDLE.local/`` beside the bundle, never into it, so copying,
  signing or releasing a bundle never carries them. The record says which images calibrated it.

The int8 graph is used by ``Model`` only when its accuracy on the evaluation images (default: the
bundle dataset's public test split) is within 0.5 points of the fp32 graph's (``accepted``), and
only while both graphs and the weights are the ones it was made from.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np

from privmed.inference.int8 import INT8_FILE, RECORD_FILE, local_dir

MAX_DROP_POINTS = 0.5


def _tensors(model, records, limit: int | None = None) -> np.ndarray:
    from privmed.data.datasets import load_record

    records = records[:limit] if limit else records
    return np.concatenate([model.tensor(load_record(r)).numpy() for r in records]).astype(np.float32)


def _labels(sess, model, records, batch: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted class (the model's own decision rule) and OOD scores of dataset records through
    the served path (``Model.scores_many``) with ``sess`` as the model's ONNX Runtime session."""
    from privmed.data.datasets import load_record

    served = copy.copy(model)
    served.session = sess
    probs, ood = served.scores_many((load_record(r).pixels for r in records), batch)
    return served.label_index(probs), ood


def _median_ms(sess, x: np.ndarray, repeats: int) -> float:
    sess.run(None, {"input": x})
    t = []
    for _ in range(repeats):
        s = time.perf_counter()
        sess.run(None, {"input": x})
        t.append(time.perf_counter() - s)
    return float(np.median(t) * 1000)


class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed images, a few at a time."""

    def __init__(self, x: np.ndarray, batch: int = 8):
        self.batches = iter([x[i:i + batch] for i in range(0, len(x), batch)])

    def get_next(self):
        b = next(self.batches, None)
        return None if b is None else {"input": b}


def parse_source(text: str, default_split: str) -> tuple[str, str]:
    name, _, split = text.partition(":")
    return name, split or default_split


def quantize_bundle(bundle: str | Path, calib: str, *, eval_source: str | None = None, calib_n: int = 200,
                    private_ok: bool = False, data_root: Path | None = None, repeats: int = 30,
                    progress: bool = True) -> dict:
    """Calibrate on ``calib`` ("DATASET[:SPLIT]", default split train), evaluate on ``eval_source``
    (default: the bundle's dataset, test split), write ``BUNDLE.local/model.int8.onnx`` and
    ``int8.json``; returns the record."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from privmed.config import default_data_root
    from privmed.data.datasets import open_dataset
    from privmed.errors import BundleError, PrivmedError
    from privmed.files import sha256_file
    from privmed.inference.onnx_export import ONNX_FILE, session
    from privmed.inference.predictor import load_model

    bundle = Path(bundle)
    model = load_model(bundle)
    meta = model.metadata
    fp32 = bundle / ONNX_FILE
    block = meta.get("onnx") or {}
    if not fp32.is_file() or block.get("weights_sha256") != meta.get("weights_sha256"):
        raise BundleError(f"{bundle} has no current model.onnx; run `privmed onnx {bundle}` first")
    root = data_root or default_data_root()
    c_name, c_split = parse_source(calib, "train")
    if c_name == meta.get("dataset") and c_split in ("train", "val") and not private_ok:
        raise PrivmedError(f"calibrating on {c_name}:{c_split}, the data this bundle was trained on, would "
                           "put non-private statistics of those images in the int8 graph; calibrate on a "
                           "public dataset it was not trained on, or pass --private-calibration (the "
                           "artefact stays in BUNDLE.local either way)")
    e_name, e_split = parse_source(eval_source or str(meta.get("dataset")), "test")
    eval_ds = open_dataset(e_name, root)
    if eval_ds.classes != model.classes:
        raise BundleError(f"evaluation dataset classes {eval_ds.classes} differ from the bundle's {model.classes}")
    c_records = open_dataset(c_name, root).records(c_split)
    rng = np.random.default_rng(0)
    c_records = [c_records[i] for i in sorted(rng.permutation(len(c_records))[:calib_n])]
    e_records = eval_ds.records(e_split)
    if progress:
        print(f"calibrating on {len(c_records)} images of {c_name}:{c_split}; evaluating on "
              f"{len(e_records)} images of {e_name}:{e_split}", flush=True)

    out_dir = local_dir(bundle)
    out_dir.mkdir(mode=0o700, exist_ok=True)
    prep, out = out_dir / "model.prep.onnx", out_dir / INT8_FILE
    quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
    quantize_static(str(prep), str(out), _Reader(_tensors(model, c_records)), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    prep.unlink(missing_ok=True)

    y = np.array([r.label for r in e_records])
    s32, s8 = session(fp32), session(out)
    p32, o32 = _labels(s32, model, e_records)
    p8, o8 = _labels(s8, model, e_records)
    acc32, acc8 = float((p32 == y).mean()), float((p8 == y).mean())
    one = _tensors(model, e_records, 1)
    ms32, ms8 = _median_ms(s32, one, repeats), _median_ms(s8, one, repeats)
    record = {
        "file": INT8_FILE, "sha256": sha256_file(out), "fp32_onnx_sha256": sha256_file(fp32),
        "weights_sha256": meta.get("weights_sha256"), "method": "onnxruntime quantize_static, QDQ, MinMax, "
        "per-channel int8 weights, uint8 activations",
        "calibration": {"source": f"{c_name}:{c_split}", "images": len(c_records),
                        "private": c_name == meta.get("dataset") and c_split in ("train", "val")},
        "evaluation": {"source": f"{e_name}:{e_split}", "images": len(e_records), "accuracy_fp32": acc32,
                       "accuracy_int8": acc8, "delta_points": round((acc8 - acc32) * 100, 3),
                       "label_agreement": float((p8 == p32).mean())},
        "latency_ms_batch1": {"fp32": round(ms32, 3), "int8": round(ms8, 3), "speedup": round(ms32 / ms8, 3)},
        "accepted": bool((acc32 - acc8) * 100 <= MAX_DROP_POINTS),
        "rule": f"used only when int8 accuracy >= fp32 accuracy - {MAX_DROP_POINTS} points",
        "onnxruntime_version": _ort_version(),
    }
    if o32 is not None:
        thr = float(model.ood["threshold"])
        record["evaluation"]["ood_refused_fp32"] = float((o32 > thr).mean())
        record["evaluation"]["ood_refused_int8"] = float((o8 > thr).mean())
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2))
    return record


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
