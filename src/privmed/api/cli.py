"""``privmed api``, ``privmed keys``, ``privmed log``, ``privmed onnx``."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def masked_url(url: str | None) -> str:
    """A database URL safe to print: the password replaced by ***."""
    if not url:
        return "default"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: print nothing of it rather than a secret
        return "(unparseable URL, not shown)"


def cmd_api(a):
    from privmed.api.server import Settings, serve

    settings = Settings.from_env(db_url=a.db_url, bundles=a.bundle or None, host=a.host)
    if a.no_auth:
        settings.auth = False  # create_app refuses unless the host is loopback
    serve(a.host, a.port, settings, log_level=a.log_level,
          banner=f"privmed API on http://{a.host}:{a.port} (auth {'on' if settings.auth else 'OFF'}, "
                 f"audit log {masked_url(settings.db_url)})")


def cmd_keys(a):
    from privmed.api.store import Store

    store = Store(a.db_url)
    if a.keys_cmd == "create":
        key_id, key = store.create_key(a.role, a.label)
        if a.json:
            print(json.dumps({"key_id": key_id, "role": a.role, "key": key}))
        else:
            print(key)
            print(f"key id {key_id}, role {a.role}: store the key now, it is not kept and cannot be shown again",
                  file=sys.stderr)
    elif a.keys_cmd == "list":
        rows = store.list_keys()
        print(json.dumps(rows, indent=2) if a.json else "\n".join(
            f"{r['key_id']}  {r['role']:10} {r['created_at']}  {'REVOKED ' + r['revoked_at'] if r['revoked_at'] else ''}"
            f"  {r['label'] or ''}" for r in rows) or "no keys")
    elif a.keys_cmd == "revoke":
        if not store.revoke_key(a.key_id):
            print(f"error: no key with id {a.key_id}", file=sys.stderr)
            return 2
        print(f"revoked {a.key_id}")
    return 0


def cmd_log(a):
    from privmed.api import translog
    from privmed.api.store import Store

    if a.log_cmd == "keygen":
        priv, pub = translog.keygen(a.out)
        print(f"private key {priv} (PRIVMED_LOG_KEY, on the API host only), public key {pub} "
              "(PRIVMED_LOG_PUBKEY, for verifiers)")
        return 0
    cfg = translog.LogConfig.from_env(sink=getattr(a, "sink", None), key=getattr(a, "key", None),
                                      pubkey=getattr(a, "pubkey", None))
    if a.log_cmd == "check-proof":
        return _check_proof(a, cfg)
    store = Store(a.db_url)
    if a.log_cmd == "verify":
        return _log_verify(a, store, cfg)
    if a.log_cmd == "checkpoint":
        print(json.dumps(translog.Checkpointer(store, cfg).write()))
    elif a.log_cmd == "prove":
        print(json.dumps(translog.prove(store, _need(cfg.sink, "--sink", "PRIVMED_LOG_SINK"), a.seq), indent=2))
    elif a.log_cmd == "show":
        for r in store.rows(a.after, a.limit):
            print(json.dumps(r))
    return 0


def _need(value, flag: str, env: str):
    if not value:
        raise ValueError(f"give {flag} or set {env}")
    return value


def _log_verify(a, store, cfg) -> int:
    from privmed.api import translog

    r = store.verify()
    if cfg.sink and cfg.pubkey:  # the chain alone cannot catch a rewrite; the signed checkpoints can
        r["sink"] = translog.verify_sink(store, cfg.sink, translog.load_public(cfg.pubkey))
        r["ok"] = r["ok"] and r["sink"]["ok"]
    if a.json:
        print(json.dumps(r, indent=2))
        return 0 if r["ok"] else 1
    if r["problem"]:
        print(f"AUDIT LOG TAMPERED: {r['problem']} (first bad row: {r['first_bad_seq']}; "
              f"{r['rows']} rows verified before it)", file=sys.stderr)
    sink = r.get("sink")
    if sink and not sink["ok"]:
        print(f"AUDIT LOG TAMPERED: signed {sink['problem']}", file=sys.stderr)
    if r["ok"]:
        print(f"audit log intact: {r['rows']} rows, last hash {r['last_hash']}" + (
            f"; {sink['checkpoints']} signed checkpoints verify, rows 1..{sink['rows_covered']} covered, "
            f"{sink['rows_uncovered']} newer rows not yet signed" if sink else
            " (hash chain only: give --sink and --pubkey to check signed checkpoints)"))
    return 0 if r["ok"] else 1


def _check_proof(a, cfg) -> int:
    from privmed.api import translog

    pub = translog.load_public(_need(cfg.pubkey, "--pubkey", "PRIVMED_LOG_PUBKEY"))
    proof = json.loads(Path(a.file).read_text())
    problem = translog.check_proof(proof, pub) if isinstance(proof, dict) else "not a JSON object"
    if problem:
        print(f"PROOF FAILS: {problem}", file=sys.stderr)
        return 1
    print(f"proof OK: row {proof['row']['seq']} is in the signed log of {proof['tree_size']} rows "
          f"(checkpoint of {proof['checkpoint']['time']})")
    return 0


def cmd_onnx(a):
    from privmed.inference.onnx_export import export
    from privmed.inference.predictor import resolve_bundle

    block = export(resolve_bundle(a.bundle))
    print(json.dumps(block, indent=2))


def cmd_quantize(a):
    from privmed.inference.predictor import resolve_bundle
    from privmed.inference.quantize import local_dir, quantize_bundle

    bundle = resolve_bundle(a.bundle)
    r = quantize_bundle(bundle, a.calib, eval_source=a.eval, calib_n=a.calib_n,
                        private_ok=a.private_calibration, data_root=a.data_root, progress=not a.json)
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    e, t = r["evaluation"], r["latency_ms_batch1"]
    print(f"int8 graph in {local_dir(bundle)} (deployment-side, never part of the bundle)")
    print(f"accuracy on {e['images']} images of {e['source']}: fp32 {e['accuracy_fp32']:.4f}, int8 "
          f"{e['accuracy_int8']:.4f} ({e['delta_points']:+.2f} points); label agreement {e['label_agreement']:.4f}")
    print(f"batch-1 forward: fp32 {t['fp32']:.2f} ms, int8 {t['int8']:.2f} ms ({t['speedup']:.2f}x)")
    print("ACCEPTED: served instead of fp32 (PRIVMED_INT8=off to disable)" if r["accepted"] else
          "REJECTED: accuracy drops more than 0.5 points; fp32 stays in use")
    return 0


def register(sub, privacy_sub) -> None:
    p = sub.add_parser("api", help="serve the REST API (FastAPI + uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--bundle", action="append", type=Path, help="serve this bundle too (repeatable)")
    p.add_argument("--db-url", help="SQLAlchemy URL of the key store and audit log (default PRIVMED_DB_URL "
                                     "or ~/.privmed/privmed.db)")
    p.add_argument("--no-auth", action="store_true", help="no API keys (localhost only, for development)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(fn=cmd_api)

    k = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True)
    kc = k.add_parser("create", help="create a key and print it once")
    kc.add_argument("--role", required=True, choices=["clinician", "auditor", "admin"])
    kc.add_argument("--label")
    kl = k.add_parser("list", help="key ids, roles, revocation (never the keys)")
    kr = k.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("key_id")
    for x in (kc, kl, kr):
        x.add_argument("--db-url")
        x.add_argument("--json", action="store_true")
        x.set_defaults(fn=cmd_keys)

    _register_log(sub)

    o = sub.add_parser("onnx", help="export a bundle to BUNDLE/model.onnx and check it against torch")
    o.add_argument("bundle")
    o.set_defaults(fn=cmd_onnx)

    q = sub.add_parser("quantize", help="int8 static quantization of BUNDLE/model.onnx into BUNDLE.local/ "
                                        "(used only within 0.5 accuracy points of fp32)")
    q.add_argument("bundle")
    q.add_argument("--calib", required=True, help="DATASET[:SPLIT] of images the bundle was NOT trained on "
                                                   "(e.g. covid19_xray for the chest bundle)")
    q.add_argument("--eval", help="DATASET[:SPLIT] for the accuracy check (default: the bundle's dataset, test)")
    q.add_argument("--calib-n", type=int, default=200)
    q.add_argument("--private-calibration", action="store_true",
                   help="allow the bundle's own train/val images (non-private statistics; local use only)")
    q.add_argument("--data-root", type=Path)
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_quantize)


def _register_log(sub) -> None:
    lg = sub.add_parser("log", help="the audit log").add_subparsers(dest="log_cmd", required=True)
    lv = lg.add_parser("verify", help="recompute the hash chain and, with a sink and public key, every signed "
                                      "checkpoint; exit 1 on tampering")
    ls = lg.add_parser("show", help="print rows as JSON lines")
    ls.add_argument("--after", type=int, default=0)
    ls.add_argument("--limit", type=int, default=100)
    lc = lg.add_parser("checkpoint", help="sign the log now and append the checkpoint to the sink")
    lp = lg.add_parser("prove", help="JSON inclusion proof of one row against the latest signed checkpoint")
    lp.add_argument("--seq", type=int, required=True)
    for x in (lv, ls, lc, lp):
        x.add_argument("--db-url")
        x.add_argument("--json", action="store_true")
        x.set_defaults(fn=cmd_log)
    for x in (lv, lc, lp):
        x.add_argument("--sink", help="append-only JSON-lines file of signed checkpoints (PRIVMED_LOG_SINK)")
    lc.add_argument("--key", help="Ed25519 private key from `privmed log keygen` (PRIVMED_LOG_KEY)")
    lv.add_argument("--pubkey", help="its public key (PRIVMED_LOG_PUBKEY)")
    lk = lg.add_parser("keygen", help="write privmed-log.key (private, 0600) and privmed-log.pub into a folder")
    lk.add_argument("--out", type=Path, required=True)
    lx = lg.add_parser("check-proof", help="verify a `log prove` file offline with the public key alone")
    lx.add_argument("file", type=Path)
    lx.add_argument("--pubkey", help="Ed25519 public key (PRIVMED_LOG_PUBKEY)")
    for x in (lk, lx):
        x.set_defaults(fn=cmd_log)
