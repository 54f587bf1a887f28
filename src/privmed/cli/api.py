"""``privmed api``, ``privmed keys``, ``privmed log``, ``privmed onnx``, ``privmed quantize``: registered by
``privmed.cli``. FastAPI, SQLAlchemy and ONNX Runtime are imported only when a command runs."""
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
    """Key management on the server's shell; create, rotate and revoke each append an audit row (method
    CLI, status = exit code, the OS user in detail, key ids and role in output; never a key)."""
    import time

    from privmed.api.store import Store

    store, t0 = Store(a.db_url), time.perf_counter()
    if a.keys_cmd == "list":
        rows = store.list_keys()
        print(json.dumps(rows, indent=2) if a.json else "\n".join(map(_key_line, rows)) or "no keys")
        return 0
    if a.keys_cmd == "revoke":
        done = store.revoke_key(a.key_id)
        _audit_cli(store, "keys revoke", 0 if done else 2, {"revoked_key_id": a.key_id}, t0)
        if not done:
            print(f"error: no key with id {a.key_id}; see `privmed keys list`", file=sys.stderr)
            return 2
        print(f"revoked {a.key_id}")
        return 0
    if a.keys_cmd == "create":
        key_id, key = store.create_key(a.role, a.label, None if a.never_expires else a.expires_days)
        out = {"created_key_id": key_id, "role": a.role}
    else:
        key_id, key = _rotate(store, a, t0)
        out = {"rotated_key_id": a.key_id, "created_key_id": key_id, "role": store.key_info(key_id)["role"]}
    _audit_cli(store, f"keys {a.keys_cmd}", 0, out, t0)
    _print_new_key(store, key_id, key, a)
    return 0


def _rotate(store, a, t0) -> tuple[str, str]:
    from privmed.api.store import RevokedKey, UnknownKey

    try:
        return store.rotate_key(a.key_id, a.grace_hours, None if a.never_expires else a.expires_days)
    except (UnknownKey, RevokedKey) as e:
        _audit_cli(store, "keys rotate", 2, {"rotated_key_id": a.key_id, "refused": str(e)[:200]}, t0)
        raise


def _audit_cli(store, action: str, status: int, output: dict, t0: float) -> None:
    import getpass
    import time

    store.append(method="CLI", path=action, status=status, latency_ms=(time.perf_counter() - t0) * 1000,
                 output=output, detail=f"privmed {action} on the server's shell by OS user {getpass.getuser()}")


def _key_line(r: dict) -> str:
    if r["revoked_at"]:
        state = f"REVOKED {r['revoked_at']}"
    elif r["expired"]:
        state = f"EXPIRED {r['expires_at']}"
    else:
        state = f"expires {r['expires_at']}" if r["expires_at"] else "never expires"
    return f"{r['key_id']}  {r['role']:10} {r['created_at']}  {state:37} {r['label'] or ''}".rstrip()


def _print_new_key(store, key_id: str, key: str, a) -> None:
    info = store.key_info(key_id)
    if a.json:
        print(json.dumps({"key_id": key_id, "role": info["role"], "key": key, "expires_at": info["expires_at"]}))
        return
    print(key)
    print(f"key id {key_id}, role {info['role']}, expires {info['expires_at'] or 'never'}: store the key now, "
          "it is not kept and cannot be shown again", file=sys.stderr)
    if a.keys_cmd == "rotate":
        print(f"the old key {a.key_id} stops working at {store.key_info(a.key_id)['expires_at']}", file=sys.stderr)


def cmd_log(a):
    from privmed.api import translog
    from privmed.api.store import Store

    if a.log_cmd == "keygen":
        priv, pub = translog.keygen(a.out)
        print(f"private key {priv} (PRIVMED_LOG_KEY, on the API host only), public key {pub} "
              "(PRIVMED_LOG_PUBKEY, for verifiers)")
        return 0
    if a.log_cmd == "witness":
        return _witness(a)
    cfg = translog.LogConfig.from_env(**{k: getattr(a, f, None) for k, f in LOG_FLAGS.items()})
    if a.log_cmd == "check-proof":
        return _check_proof(a, cfg)
    store = Store(a.db_url, readonly=a.log_cmd in ("verify", "show", "prove"))  # auditors: read-only
    if a.log_cmd == "verify":
        return _log_verify(a, store, cfg)
    if a.log_cmd == "checkpoint":
        print(json.dumps(translog.Checkpointer(store, cfg).write()))
    elif a.log_cmd == "prove":
        sink = _need(cfg.sink, "--sink", "PRIVMED_LOG_SINK")
        proof = translog.prove(store, sink, a.seq) if a.seq else translog.prove_consistency(store, sink, a.first)
        print(json.dumps(proof, indent=2))
    elif a.log_cmd == "show":
        for r in store.rows(a.after, a.limit):
            print(json.dumps(r))
    return 0


# LogConfig field -> argparse destination of its flag
LOG_FLAGS = {"sink": "sink", "key": "key", "pubkey": "pubkey", "witness_url": "witness",
             "witness_pubkey": "witness_pubkey", "tsa_url": "tsa", "tsa_cert": "tsa_cert", "tsa_roots": "tsa_roots"}


def _witness(a) -> int:
    from privmed.api import witness

    if a.witness_cmd == "init":
        pub = witness.init(a.state, a.log_pubkey)
        print(f"witness state in {a.state}; give its public key {pub} to auditors (PRIVMED_LOG_WITNESS_PUBKEY)")
        return 0
    srv = witness.server(a.state, a.host, a.port)
    print(f"witness of the log signed by {a.state / 'log.pub'} on http://{a.host}:{srv.server_port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


def _need(value, flag: str, env: str):
    if not value:
        raise ValueError(f"give {flag} or set {env}")
    return value


def _log_verify(a, store, cfg) -> int:
    r = store.verify()
    _verify_signed(r, store, cfg)
    if a.json:
        print(json.dumps(r, indent=2))
        return 0 if r["ok"] else 1
    if r["problem"]:
        print(f"AUDIT LOG TAMPERED: {r['problem']} (first bad row: {r['first_bad_seq']}; "
              f"{r['rows']} rows verified before it)", file=sys.stderr)
    for part, what in (("sink", "signed"), ("witness", "against the witness:")):
        if r.get(part) and not r[part]["ok"]:
            print(f"AUDIT LOG TAMPERED: {what} {r[part]['problem']}", file=sys.stderr)
    if r["ok"]:
        print(_intact(r))
    return 0 if r["ok"] else 1


def _verify_signed(r: dict, store, cfg) -> None:
    """Add the signed checks to ``r``: the chain alone cannot catch a rewrite; checkpoints can, and the
    witness's copy can even when the sink was rewritten with the log's key. One pass over the rows."""
    from privmed.api import merkle, translog

    wpub = _witness_pub(cfg)
    if cfg.witness_url and not (cfg.pubkey and wpub):
        raise ValueError("checking against a witness needs --pubkey and --witness-pubkey")
    if not (cfg.pubkey and (cfg.sink or cfg.witness_url)):
        return
    pub, leaves = merkle.load_public(cfg.pubkey), translog.chain_leaves(store)[0]
    if cfg.sink:
        tsa = (cfg.tsa_cert, cfg.tsa_roots) if cfg.tsa_cert else None
        r["sink"] = translog.verify_sink(store, cfg.sink, pub, wpub, tsa, leaves)
    if cfg.witness_url:
        r["witness"] = translog.verify_witness(store, cfg.witness_url, pub, wpub, leaves)
    r["ok"] = r["ok"] and all(r[p]["ok"] for p in ("sink", "witness") if p in r)


def _witness_pub(cfg):
    from privmed.api import merkle

    return merkle.load_public(cfg.witness_pubkey, "witness public key") if cfg.witness_pubkey else None


def _intact(r: dict) -> str:
    sink, w = r.get("sink"), r.get("witness")
    text = f"audit log intact: {r['rows']} rows, last hash {r['last_hash']}"
    if sink:
        text += (f"; {sink['checkpoints']} signed checkpoints verify, rows 1..{sink['rows_covered']} covered, "
                 f"{sink['rows_uncovered']} newer rows not yet signed")
    if w:
        text += f"; the witness's checkpoint of {w['tree_size']} rows ({w['time']}) reproduces"
    if not (sink or w):
        text += " (hash chain only: give --sink and --pubkey to check signed checkpoints)"
    return text


def _check_proof(a, cfg) -> int:
    from privmed.api import merkle, translog

    pub = merkle.load_public(_need(cfg.pubkey, "--pubkey", "PRIVMED_LOG_PUBKEY"))
    wpub = _witness_pub(cfg)
    proof = json.loads(Path(a.file).read_text())
    problem = translog.check_proof(proof, pub, wpub) if isinstance(proof, dict) else "not a JSON object"
    if problem:
        print(f"PROOF FAILS: {problem}", file=sys.stderr)
        return 1
    if proof.get("kind") == "consistency":
        first, second = proof["first"], proof["second"]
        print(f"proof OK: the signed log of {second['tree_size']} rows ({second['time']}) extends the one of "
              f"{first['tree_size']} rows ({first['time']}) unchanged")
        return 0
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
    kl = k.add_parser("list", help="key ids, roles, expiry, revocation (never the keys)")
    kr = k.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("key_id")
    kt = k.add_parser("rotate", help="a new key with the same role and label, printed once; the old key "
                                     "keeps working for --grace-hours so that its clients can switch")
    kt.add_argument("key_id")
    kt.add_argument("--grace-hours", type=float, default=24.0,
                    help="hours the old key keeps working, never past its own expiry (default 24; 0: stop now)")
    for x in (kc, kt):
        e = x.add_mutually_exclusive_group()
        e.add_argument("--expires-days", type=int, default=90, help="days until the new key expires (default 90)")
        e.add_argument("--never-expires", action="store_true",
                       help="the new key never expires (not recommended: rotate keys instead)")
    for x in (kc, kl, kr, kt):
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
                                                   "(e.g. chest_xray_pneumonia:test, the public test split, "
                                                   "for the chest bundle; not covid19_xray: it holds Kermany copies)")
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
                                      "checkpoint (with --witness, the witness's copy too); exit 1 on tampering")
    ls = lg.add_parser("show", help="print rows as JSON lines")
    ls.add_argument("--after", type=int, default=0)
    ls.add_argument("--limit", type=int, default=100)
    lc = lg.add_parser("checkpoint", help="sign the log now and append the checkpoint to the sink")
    lp = lg.add_parser("prove", help="JSON proof against the latest signed checkpoint: that one row is in it "
                                     "(--seq), or that it extends an earlier checkpoint (--from)")
    which = lp.add_mutually_exclusive_group(required=True)
    which.add_argument("--seq", type=int, help="inclusion proof of this row")
    which.add_argument("--from", dest="first", type=int, metavar="SIZE",
                       help="consistency proof from the sink's checkpoint of SIZE rows")
    for x in (lv, ls, lc, lp):
        x.add_argument("--db-url")
        x.add_argument("--json", action="store_true")
        x.set_defaults(fn=cmd_log)
    for x in (lv, lc, lp):
        x.add_argument("--sink", help="append-only JSON-lines file of signed checkpoints (PRIVMED_LOG_SINK)")
    lc.add_argument("--key", help="Ed25519 private key from `privmed log keygen` (PRIVMED_LOG_KEY)")
    for x in (lv, lc):
        x.add_argument("--witness", help="URL of a `privmed log witness serve` (PRIVMED_LOG_WITNESS_URL): "
                                         "checkpoint asks it to co-sign, verify checks the rows against its copy")
    lc.add_argument("--tsa", help="URL of an RFC 3161 timestamp authority (PRIVMED_LOG_TSA_URL)")
    lv.add_argument("--tsa-cert", help="require every checkpoint stamped by this authority (PEM certificate; "
                                       "PRIVMED_LOG_TSA_CERT)")
    lv.add_argument("--tsa-roots", help="the CA certificate(s) the authority's certificate chains to (PEM; "
                                        "PRIVMED_LOG_TSA_ROOTS)")
    lk = lg.add_parser("keygen", help="write privmed-log.key (private, 0600) and privmed-log.pub into a folder")
    lk.add_argument("--out", type=Path, required=True)
    lx = lg.add_parser("check-proof", help="verify a `log prove` file offline with the public key alone")
    lx.add_argument("file", type=Path)
    for x in (lv, lx):
        x.add_argument("--pubkey", help="the log's Ed25519 public key (PRIVMED_LOG_PUBKEY)")
        x.add_argument("--witness-pubkey", help="require the witness's cosignature (PRIVMED_LOG_WITNESS_PUBKEY)")
    for x in (lk, lx):
        x.set_defaults(fn=cmd_log)
    _register_witness(lg)


def _register_witness(lg) -> None:
    w = lg.add_parser("witness", help="an independent process that co-signs checkpoints and refuses forks")
    ws = w.add_subparsers(dest="witness_cmd", required=True)
    wi = ws.add_parser("init", help="create a witness state folder (its key pair, the log's public key)")
    wi.add_argument("--log-pubkey", type=Path, required=True, help="the witnessed log's privmed-log.pub")
    wv = ws.add_parser("serve", help="serve POST /add-checkpoint and GET /checkpoint")
    wv.add_argument("--host", default="127.0.0.1")
    wv.add_argument("--port", type=int, default=8790)
    for x in (wi, wv):
        x.add_argument("--state", type=Path, required=True,
                       help="the witness's own folder (keep it off the log's host)")
        x.set_defaults(fn=cmd_log)
