"""The reader-of-the-old-format check: a bundle's ``metadata.json`` parsed through the schema and
dumped back to JSON is the same document, every key and value (int stays int, float stays float)."""
from __future__ import annotations

import json
from pathlib import Path

from privmed.bundle.format import read_metadata


def assert_round_trip(bundle: Path) -> None:
    raw = json.loads((Path(bundle) / "metadata.json").read_text())
    meta = read_metadata(bundle)
    dumped = meta.model_dump(mode="json", exclude_unset=True)
    assert dumped == raw
    assert json.dumps(dumped, sort_keys=True) == json.dumps(raw, sort_keys=True)  # types too: 2 is not 2.0
    assert meta.raw == raw
