"""The bundles a server (or the app) can serve: found under ``bundles_dir()`` and any extra paths,
addressed by model id (``pneumonia-effnet_lite0_head-eps2``) or directory name, loaded lazily."""
from __future__ import annotations

import threading
from pathlib import Path

from privmed.config import bundles_dir
from privmed.errors import BundleError
from privmed.inference.bundle import read_metadata


class UnknownModel(LookupError):
    pass


class Registry:
    def __init__(self, extra: list[str | Path] | None = None, scan_default: bool = True):
        self.extra = [Path(p) for p in extra or []]
        self.scan_default = scan_default
        self._loaded: dict[Path, object] = {}
        self._meta: dict[Path, tuple[tuple, dict]] = {}  # path -> ((mtime, size), metadata)
        self._lock = threading.Lock()

    def _read(self, d: Path) -> dict:
        """Metadata, re-read only when the file changed: bundles carry ~1 MB of OOD statistics, and
        parsing every bundle's JSON on every request cost more than the prediction itself."""
        st = (d / "metadata.json").stat()
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._meta.get(d)
        if cached and cached[0] == stamp:
            return cached[1]
        m = read_metadata(d)
        self._meta[d] = (stamp, m)
        return m

    def entries(self) -> list[dict]:
        dirs: list[Path] = []
        if self.scan_default and bundles_dir().is_dir():
            dirs += sorted(d for d in bundles_dir().iterdir() if (d / "metadata.json").is_file())
        dirs += [p for p in self.extra if (p / "metadata.json").is_file()]
        out, seen = [], set()
        for d in dirs:
            if d.resolve() in seen:
                continue
            seen.add(d.resolve())
            try:
                m = self._read(d.resolve())
            except BundleError:
                continue
            out.append({"id": m.get("model_id") or d.name, "name": d.name, "path": d, "metadata": m})
        return out

    def find(self, ref: str | None) -> dict:
        entries = self.entries()
        if not entries:
            raise UnknownModel("no model bundles are installed on this server; train one with `privmed train`")
        if not ref:
            if len(entries) == 1:
                return entries[0]
            raise UnknownModel("several models are available; choose one with the 'model' field: "
                               + ", ".join(e["id"] for e in entries))
        for e in entries:
            if ref in (e["id"], e["name"]):
                return e
        raise UnknownModel(f"unknown model '{ref}'; available: " + ", ".join(f"{e['id']} ({e['name']})" for e in entries))

    def model(self, entry: dict):
        from privmed.inference.predictor import Model

        path = Path(entry["path"]).resolve()
        with self._lock:
            m = self._loaded.get(path)
            if m is None or m.metadata.get("weights_sha256") != entry["metadata"].get("weights_sha256"):
                m = Model(path)
                self._loaded[path] = m
            return m

    @property
    def loaded(self) -> int:
        return len(self._loaded)
