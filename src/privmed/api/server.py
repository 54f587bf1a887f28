"""The REST API (FastAPI): predict, models, site calibration, health, metrics, audit log, keys.

Auth is on by default: ``Authorization: Bearer <key>`` (or ``X-API-Key``). Roles: clinician
(predict, models), auditor (audit log, models, per-label metrics), admin (keys, models, site
calibration, per-label metrics); see ``auth.py``. Auth off is only allowed when the server binds
loopback, and then only loopback clients are answered. Every request under ``/v1`` is written to
the hash-chained audit log by ``audit_log.py``'s middleware; anonymous refusals are rate-limited into
aggregated rows (``refusals.py``). Errors become statuses in ``status.py``. The routes, by role, are
in ``routers/``. Bundles are loaded and verified at start.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from fastapi import FastAPI

import privmed.config as config
from privmed.api import audit_log, status
from privmed.api.audit_log import append_held, is_loopback
from privmed.api.auth import require
from privmed.api.metrics import Metrics
from privmed.api.refusals import RefusalLimiter
from privmed.api.routers import audit, health, keys, models, predictions
from privmed.api.site_upload import router as site_router
from privmed.api.store import Store
from privmed.api.translog import Checkpointer, LogConfig
from privmed.data.read import MAX_BYTES
from privmed.errors import PrivmedError
from privmed.inference.registry import Registry
from privmed.inference.service import Workers

__all__ = ["Settings", "create_app", "is_loopback", "serve"]
log = logging.getLogger("privmed.api")


@dataclass
class Settings:
    db_url: str | None = None
    auth: bool = True
    bundles: list = field(default_factory=list)
    scan_default_bundles: bool = True
    max_file_bytes: int = MAX_BYTES
    max_request_bytes: int = MAX_BYTES + 2 * 2**20
    max_files: int = 16
    max_site_bytes: int = 512 * 2**20  # a site calibration's zip; it may unpack to 4x this
    host: str | None = None  # the bind address; auth off requires a loopback one
    bundle_pubkey: str | None = None  # Ed25519 public key: serve only bundles signed with it
    refusal_burst: int = 20  # anonymous refusals logged one by one per interval; the rest aggregated
    refusal_interval_s: float = 60.0
    translog: LogConfig | None = None  # signed checkpoints of the audit log (off when None or unset)

    @classmethod
    def from_env(cls, **over) -> "Settings":
        env = config.settings()
        s = cls(db_url=env.db_url.get_secret_value() if env.db_url else None, auth=env.api_auth,
                bundle_pubkey=env.bundle_pubkey, translog=LogConfig.from_env())
        if env.max_upload_mb:
            s.max_file_bytes = int(env.max_upload_mb * 2**20)
            s.max_request_bytes = s.max_file_bytes + 2 * 2**20
        for k, v in over.items():
            if v is not None:
                setattr(s, k, v)
        return s


def create_app(settings: Settings | None = None) -> FastAPI:
    """Raises ``PrivmedError`` (auth off on a non-loopback bind) or ``BundleError`` (a bundle that does
    not load or verify, named with the reason): better not to start than to 500 on every request."""
    settings = settings or Settings.from_env()
    if not settings.auth and not is_loopback(settings.host):
        raise PrivmedError(f"refusing to serve without authentication on host {settings.host or '(not given)'}: "
                           "auth off (PRIVMED_API_AUTH=off / --no-auth) is only allowed when binding 127.0.0.1, "
                           "::1 or localhost")
    store = Store(settings.db_url)
    checkpointer = Checkpointer.from_config(store, settings.translog)  # refuses a half-configured sink
    registry = Registry(settings.bundles, settings.scan_default_bundles, settings.bundle_pubkey)
    registry.load_all()
    refusals = RefusalLimiter(settings.refusal_burst, settings.refusal_interval_s)

    env = config.settings()
    workers = Workers(env.batch_workers or 1, env.batch_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        workers.close()
        held = refusals.drain()  # counts not yet written when the server stops
        if held:
            append_held(store, held)

    app = FastAPI(lifespan=lifespan, title="privmed API", version="1", description="Differentially private "
                  "medical image classification. Research use only; not a medical device.")
    app.state.store, app.state.registry, app.state.settings = store, registry, settings
    app.state.metrics, app.state.refusals = Metrics(lambda: registry.loaded), refusals
    app.state.checkpointer, app.state.workers = checkpointer, workers
    audit_log.install(app)
    status.install(app)
    for r in (health.router, models.router, site_router(registry, settings.max_site_bytes, require("calibrate")),
              predictions.router, audit.router, keys.router):
        app.include_router(r)
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None, log_level: str = "info",
          banner: str | None = None):
    import uvicorn

    threads = config.settings().torch_threads
    if threads:  # on shared CPUs one intra-op thread often serves better
        import torch

        torch.set_num_threads(threads)
    config.parallel_forwards()
    settings = settings or Settings.from_env()
    settings.host = host
    app = create_app(settings)  # refuses (auth off off-loopback, bad bundle) before anything is announced
    if banner:
        import sys

        print(banner, file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
