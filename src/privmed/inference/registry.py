"""The bundles a server (or the app) can serve: found under ``bundles_dir()`` and any extra paths,
addressed by model id (``pneumonia-effnet_lite0_head-eps2``) or directory name, loaded lazily."""
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from privmed.bundle.format import read_metadata
from privmed.bundle.schema import BundleMetadata
from privmed.bundle.signing import verify
from privmed.config import bundle_search_dirs
from privmed.errors import BundleError
from privmed.inference import site as site_calibration
from privmed.inference.intended_use import for_bundle
from privmed.inference.predictor import Model
from privmed.inference.runtime import expected
from privmed.privacy.ledger import statement


class UnknownModel(LookupError):
    pass


def _stamp(path: Path) -> tuple:
    """(name, mtime, size) of every file in a bundle and of its site calibration beside it: any change
    on disk triggers re-verification (a site calibrated while the server runs is used from then on)."""
    with os.scandir(path) as found:  # one stat per file (checked on every request)
        files = [(f.path, f.stat()) for f in found if f.is_file()]
    site = site_calibration.site_dir(path) / site_calibration.SITE_FILE
    try:
        st = site.stat()
        files += [(str(site), st)] if stat.S_ISREG(st.st_mode) else []
    except (FileNotFoundError, NotADirectoryError):  # no site calibration (what ``is_file`` said before)
        pass
    return tuple(sorted((name, st.st_mtime_ns, st.st_size) for name, st in files))


class Registry:
    def __init__(self, extra: list[str | Path] | None = None, scan_default: bool = True,
                 pubkey: str | Path | None = None):
        self.extra = [Path(p) for p in extra or []]
        self.scan_default = scan_default
        self.pubkey = Path(pubkey) if pubkey else None  # when set, only bundles signed with its key load
        self._loaded: dict[Path, tuple[tuple, object]] = {}  # path -> (files stamp, Model)
        self._meta: dict[Path, tuple[tuple, BundleMetadata]] = {}  # path -> ((mtime, size), metadata)
        self._started: dict[Path, dict] = {}  # loaded by load_all -> last good entry (listed even when broken)
        self._lock = threading.Lock()

    def _read(self, d: Path) -> BundleMetadata:
        """Typed metadata, re-read only when the file changed: bundles carry ~1 MB of OOD statistics, and
        parsing every bundle's JSON on every request cost more than the prediction itself."""
        st = (d / "metadata.json").stat()
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._meta.get(d)
        if cached and cached[0] == stamp:
            return cached[1]
        m = read_metadata(d)  # BundleError when it is not a metadata object
        self._meta[d] = (stamp, m)
        return m

    def _dirs(self) -> list[Path]:
        dirs: list[Path] = []
        if self.scan_default:
            seen: set[str] = set()  # a bundle name found earlier wins (the user's over the shipped one)
            for root in bundle_search_dirs():
                found = sorted(d for d in root.iterdir() if (d / "metadata.json").is_file() and d.name not in seen)
                seen |= {d.name for d in found}
                dirs += found
        return dirs + list(self.extra)

    def load_all(self) -> int:
        """Load and verify every bundle now (server start): raise ``BundleError`` naming the first
        bundle that cannot be served and why, instead of a 500 on every later request."""
        n = 0
        for d in self._dirs():
            try:
                if not (d / "metadata.json").is_file():
                    read_metadata(d)  # raises; its message says what is missing
                m = self._read(d.resolve())  # parsed once: the same parse the entries reuse
                entry = {"id": m.model_id or d.name, "name": d.name, "path": d, "metadata": m}
                self.model(entry)
                self._started[d.resolve()] = entry
            except (BundleError, OSError) as e:
                raise BundleError(f"bundle '{d.name}' ({d}) cannot be served: {e}") from None
            n += 1
        return n

    def entries(self) -> list[dict]:
        """Servable bundles. One loaded at start whose metadata.json went bad (or vanished) stays
        listed under its last good id with ``broken`` set: predict on it answers 503, not 404."""
        out, seen = [], set()
        for d in self._dirs() + [e["path"] for e in self._started.values()]:
            r = d.resolve()
            if r in seen:
                continue
            seen.add(r)
            try:
                m = self._read(r)
            except (BundleError, OSError) as e:
                if r in self._started:
                    out.append(dict(self._started[r], broken=f"bundle '{d.name}' has damaged metadata: {e}"))
                continue
            entry = {"id": m.model_id or d.name, "name": d.name, "path": d, "metadata": m}
            if r in self._started:
                self._started[r] = entry
            out.append(entry)
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
        available = ", ".join(f"{e['id']} ({e['name']})" for e in entries)
        raise UnknownModel(f"unknown model '{ref}'; available: {available}")

    def model(self, entry: dict):
        """The loaded model; re-verified (checksum, signature) whenever a bundle file changed on disk.
        Raises ``BundleError`` when it no longer verifies (the API answers 503)."""
        path = Path(entry["path"]).resolve()
        if entry.get("broken"):
            self._loaded.pop(path, None)
            raise BundleError(entry["broken"])
        with self._lock:
            try:
                stamp = _stamp(path)
            except OSError as e:
                self._loaded.pop(path, None)
                raise BundleError(f"bundle '{path.name}' is unreadable: {e}") from None
            cached = self._loaded.get(path)
            if cached and cached[0] == stamp:
                return cached[1]
            self._loaded.pop(path, None)  # never keep serving a bundle whose files changed unverified
            if self.pubkey:
                verify(path, self.pubkey)
            try:
                m = Model(path, local_graphs=not self.pubkey)  # signed files only: no BUNDLE.local graph
            except BundleError:
                raise
            except Exception as e:  # a damaged file surfaces as many exception types
                raise BundleError(f"bundle '{path.name}' failed to load ({type(e).__name__}: {e})") from None
            self._loaded[path] = (stamp, m)
            return m

    def site(self, entry: dict) -> dict | None:
        """The entry's site calibration (``inference.site``) for the views; None where there is none or
        it does not fit the weights (then the model itself refuses to load and says why)."""
        try:
            return site_calibration.load(Path(entry["path"]), entry["metadata"].raw)
        except BundleError:
            return None

    def runtime(self, entry: dict) -> str:
        """The backend serving ``entry``: its loaded model's, else the one it would load with."""
        cached = self._loaded.get(Path(entry["path"]).resolve())
        if cached:
            return cached[1].backend
        return expected(Path(entry["path"]), entry["metadata"].raw, local_graphs=not self.pubkey)

    def summaries(self) -> list[dict]:
        """One summary per bundle: what ``/v1/models`` and ``privmed models`` both show."""
        return [self.summary(e) for e in self.entries()]

    def summary(self, e: dict) -> dict:
        m, site = e["metadata"], self.site(e)
        p = m.ledger
        return {"id": e["id"], "name": e["name"], "task": m.task, "dataset": m.dataset,
                "classes": m.classes, "architecture": m.model.name,
                "version": m.weights_sha256, "epsilon": p.epsilon, "delta": p.delta,
                "unit_of_privacy": p.unit_of_privacy, "neighbouring_relation": p.neighbouring_relation,
                "privacy_statement": statement(m.raw), "intended_use": for_bundle(m),
                "site_calibration": site_calibration.summary(site) if site else None,
                "ood": m.ood is not None, "onnx": bool(m.onnx and m.onnx.faster),
                "runtime": self.runtime(e),
                # a bundle loaded at start whose files went bad stays listed; predict on it answers 503
                "available": not e.get("broken")}

    @property
    def loaded(self) -> int:
        return len(self._loaded)
