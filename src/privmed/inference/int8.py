"""Where an int8 graph made by ``privmed quantize`` lives (``BUNDLE.local/``, beside the bundle, never
in it) and whether the served path may use it. Apart from ``quantize``, which writes the graph, so
that ``Model`` can look for it without importing the quantization tool (which itself loads a
``Model``)."""
from __future__ import annotations

import json
from pathlib import Path

from privmed.config import settings

INT8_FILE = "model.int8.onnx"
RECORD_FILE = "int8.json"


def local_dir(bundle: Path) -> Path:
    """Deployment-side folder beside the bundle (``BUNDLE.local``): never part of a release."""
    bundle = Path(bundle).resolve()
    return bundle.with_name(bundle.name + ".local")


def usable_int8(bundle: Path, meta: dict) -> Path | None:
    """``BUNDLE.local/model.int8.onnx`` when it was accepted and still matches this bundle's weights
    and fp32 graph; ``PRIVMED_INT8=off`` never uses it."""
    if settings().int8 == "off":
        return None
    d = local_dir(bundle)
    try:
        record = json.loads((d / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    from privmed.files import sha256_file
    from privmed.inference.onnx_export import ONNX_FILE

    path, fp32 = d / INT8_FILE, Path(bundle) / ONNX_FILE
    ok = (record.get("accepted") is True and record.get("weights_sha256") == meta.get("weights_sha256")
          and path.is_file() and fp32.is_file() and sha256_file(path) == record.get("sha256")
          and sha256_file(fp32) == record.get("fp32_onnx_sha256"))
    return path if ok else None
