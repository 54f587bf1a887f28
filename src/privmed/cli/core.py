"""The core subcommands: ``data``, ``cache``, ``bundle``, ``train``, ``evaluate``, ``predict``,
``calibrate``, ``models``, ``privacy account|budget``. Each command imports what it runs when it runs,
so that ``privmed --help`` starts without loading torch."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from privmed.cli.common import print_result
from privmed.errors import ImageReadError, PrivmedError
from privmed.training.recipe import ACCOUNTANTS, add_device_argument, add_train_arguments, train_config


def cmd_train(a):
    from privmed.pipeline import train_bundle

    cfg = train_config(a)
    out = train_bundle(cfg, a.out, progress=not a.quiet)
    from privmed.bundle.format import read_metadata, read_run_log, run_dir

    meta, run = read_metadata(out), read_run_log(out)
    summary = {"bundle": str(out), "run_log": str(run_dir(out)), "model_id": meta.model_id,
               "privacy": meta.ledger.dump(), "validation_accuracy": run["validation"]["accuracy"],
               "training_seconds": run["training_seconds"]}
    print_result(summary, a.json, f"bundle written to {out}\n" + json.dumps(summary["privacy"], indent=2))


def cmd_evaluate(a):
    from privmed.evaluation.evaluate import evaluate

    if a.record and a.split != "test":  # the bundle is released: train/val metrics are private statistics
        raise PrivmedError(f"--record writes into the released bundle: only the public test split may be recorded, "
                           f"not '{a.split}'")
    r = evaluate(a.bundle, a.dataset, a.split, a.data_root, exclude_leaked=not a.keep_leaked, progress=not a.json,
                 patient_disjoint=a.patient_disjoint)
    if a.record:
        _record(a, r)
    private = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in r["private"].items())
    text = "\n".join([f"{r['model_id']} on {r['dataset']}/{r['split']} (n={r['n']}; private, not for release: "
                      f"{private})"] +
                     [f"  {k}: {r[k]:.4f}" for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro",
                                                    "auc", "ece", "sensitivity", "specificity") if k in r] +
                     [f"  confusion matrix (rows true, cols predicted): {r['confusion_matrix']}"])
    print_result(r, a.json, text)


def _record(a, r: dict) -> None:
    """Into the bundle: metrics of the whole official test split, a public benchmark. Which test images
    have copies in the training folder (or share a patient id with it) is a function of the private
    training images, so the leak-free metrics and their counts go to the private run log only."""
    from privmed.bundle.format import record_metrics, run_dir
    from privmed.evaluation.evaluate import evaluate

    whole = r
    if not a.keep_leaked or a.patient_disjoint:
        whole = evaluate(a.bundle, a.dataset, "test", a.data_root, exclude_leaked=False, progress=not a.json)
    public = {k: v for k, v in whole.items() if k not in ("bundle", "privacy", "private")}
    public["test_images"] = "the whole official test split (no image dropped for copies in the training folder)"
    subset = {k: v for k, v in r.items() if k not in ("bundle", "privacy")}
    if record_metrics(a.bundle, f"{whole['dataset']}/test", public, subset) is None:
        print(f"note: no private run log at {run_dir(a.bundle)}; recorded the whole-split metrics only",
              file=sys.stderr)


def cmd_predict(a):
    from privmed.inference import load_model

    model = load_model(a.bundle)
    if not a.json:  # --json carries both in each result's "model"
        from privmed.inference.intended_use import describe

        if model.site:
            print(model.info["site_calibration"]["statement"])
        print(f"{model.info['id']}: intended use: {describe(model.intended)}")
    results, failed = [], 0
    for f in a.files:
        try:
            p = model.predict(f, window=a.window, frame=a.frame, source=a.source)
            results.append({"file": f, **p.to_dict()})
        except ImageReadError as e:
            failed += 1
            results.append({"file": f, "error": str(e)})
    if a.json:
        print_result(results, True)
    else:
        for r in results:
            if "error" in r:
                print(f"{r['file']}: error: {r['error']}")
                continue
            probs = ", ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
            flag = "  ABSTAIN: " + "; ".join(r["abstain_reasons"]) if r["abstain"] else ""
            w = (r.get("dicom") or {}).get("window") or {}
            win = f" [window {w['name']} {w['center']:g}/{w['width']:g}, {w['source']}]" \
                if w.get("center") is not None else ""
            print(f"{r['file']}: {r['label']} ({probs}){win}{flag}")
    return 1 if failed == len(a.files) else 0


def cmd_calibrate(a):
    from privmed.bundle.format import read_metadata
    from privmed.calibrate import calibrate_site, site_records
    from privmed.inference.predictor import resolve_bundle
    from privmed.inference.site import summary

    bundle = resolve_bundle(a.bundle)
    records = site_records(a.site, read_metadata(bundle).classes)
    path = calibrate_site(bundle, records, name=a.name, epsilon=a.epsilon, delta=a.delta, unit=a.unit, out=a.out,
                          progress=not a.json)
    doc = json.loads(path.read_text())
    if a.json:
        print_result({"site_calibration": str(path), **summary(doc)}, True)
        return 0
    print(f"wrote {path} (every face loading {bundle} now uses it; remove the folder to stop)")
    print(summary(doc)["statement"])
    return 0


def cmd_models(a):
    from privmed.inference.registry import Registry

    if a.dir:  # every bundle under DIR, instead of the default folders
        root = Path(a.dir)
        found = sorted(d for d in root.glob("*") if (d / "metadata.json").is_file()) if root.is_dir() else []
        registry = Registry(found, scan_default=False)
    else:
        registry = Registry()
    rows = [dict(registry.summary(e), path=str(e["path"])) for e in registry.entries()]
    print_result(rows, a.json, "\n".join(f"{r['name']:24} {r['task']:12} eps={r['epsilon']}  {r['runtime']:12} "
                                         f"{r['classes']}" for r in rows) or "no bundles found (set PRIVMED_BUNDLES "
                                         "or pass --dir)")


def cmd_data_inspect(a):
    from privmed.data.datasets import open_dataset
    from privmed.data.inspect import format_report, inspect_dataset
    from privmed.data.patients import shared_patient_evidence

    ds = open_dataset(a.dataset, a.data_root)
    report = inspect_dataset(ds, near_duplicates=not a.exact_only, show_paths=a.show_paths)
    if a.patient_evidence and report["patients"]["available"] and {"train", "test"} <= set(ds.splits):
        report["patients"]["shared_id_evidence"] = shared_patient_evidence(ds.records("train"), ds.records("test"))
    print_result(report, a.json, format_report(report))


def cmd_cache(a):
    import privmed.cache as cache

    if a.cache_cmd == "clear":
        n = cache.clear()
        print(f"removed {n} cached file(s) from {cache.cache_dir()}")
        return 0
    r = cache.info()
    size = f"{r['bytes'] / 2**20:.1f} MiB of {r['max_bytes'] / 2**20:.0f} MiB cap"
    print_result(r, a.json, f"{r['path']}: {r['files']} file(s), {size}, mode {r['mode']}; holds {r['holds']}"
                            + (f"\nan old cache is inside the checkout at {r['legacy_in_checkout']}: "
                               "`privmed cache clear` deletes it" if r["legacy_in_checkout"] else ""))
    return 0


def cmd_bundle(a):
    from privmed.bundle import signing

    if a.bundle_cmd == "keygen":
        priv, pub = signing.keygen(a.out)
        print(f"private key {priv} (keep it off the servers), public key {pub} (PRIVMED_BUNDLE_PUBKEY)")
    elif a.bundle_cmd == "sign":
        print(f"signed: {signing.sign(a.bundle, a.key)}")
    else:
        signing.verify(a.bundle, a.pubkey)
        print(f"signature OK: {a.bundle}")
    return 0


def cmd_privacy_account(a):
    from privmed.privacy.accounting import epsilon_for

    eps = epsilon_for(a.sigma, a.sample_rate, a.steps, a.delta, a.accountant)
    r = {"epsilon": eps, "delta": a.delta, "noise_multiplier": a.sigma, "sample_rate": a.sample_rate,
         "steps": a.steps, "accountant": a.accountant}
    print_result(r, a.json, f"epsilon = {eps:.4f} at delta = {a.delta:g} (sigma={a.sigma}, q={a.sample_rate}, "
                            f"steps={a.steps}, accountant={a.accountant})")


def cmd_privacy_budget(a):
    from privmed.privacy.budget import Registry, format_summary, key_for_dataset

    if (a.key is None) == (a.dataset is None):
        raise PrivmedError("name a DATASET or pass --key KEY (one of the two)")
    if a.limit is not None and a.delta is None:
        raise PrivmedError("--limit needs --delta: the data owner's limit is an (epsilon, delta) pair")
    key = a.key or key_for_dataset(a.dataset, a.data_root)
    reg = Registry()
    if a.limit is not None:
        reg.set_limit(key, a.limit, a.delta)
    s = reg.summary(key, a.delta, a.accountant)
    print_result(s, a.json, format_summary(s))


def _calibrate_parser(sub) -> None:
    c = sub.add_parser("calibrate", help="fit a bundle to a site with DP on the site's labelled sample "
                                         "(temperature, decision threshold, OOD reference, class prior)")
    c.add_argument("bundle")
    c.add_argument("--site", type=Path, required=True,
                   help="labelled sample: SITE/<class>/<image>, the bundle's classes")
    c.add_argument("--name", required=True, help="the site's name, shown by every face that uses the calibration")
    c.add_argument("--epsilon", type=float, default=2.0, help="the site sample's privacy budget (default 2)")
    c.add_argument("--delta", type=float, default=1e-5)
    c.add_argument("--unit", default="auto", choices=["auto", "patient", "image"],
                   help="unit of privacy (auto: the patient where file names or DICOM carry one)")
    c.add_argument("--out", type=Path, help="write here instead of BUNDLE.site/")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_calibrate)


def register(sub) -> object:
    """Add the core subcommands to ``sub``; returns the ``privacy`` subparsers, which faces extend."""
    _tool_parsers(sub)
    _model_parsers(sub)
    _calibrate_parser(sub)

    m = sub.add_parser("models", help="list known bundles")
    m.add_argument("--dir")
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_models)

    pv = sub.add_parser("privacy", help="privacy accounting and audits").add_subparsers(dest="privacy_cmd",
                                                                                        required=True)
    _privacy_parsers(pv)
    return pv


def _tool_parsers(sub) -> None:
    """``privmed data inspect``, ``privmed cache info|clear``, ``privmed bundle keygen|sign|verify``."""
    d = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_cmd", required=True)
    di = d.add_parser("inspect", help="counts, sizes, unreadable files, duplicates and leakage")
    di.add_argument("dataset")
    di.add_argument("--data-root", type=Path)
    di.add_argument("--exact-only", action="store_true", help="skip near-duplicate search")
    di.add_argument("--patient-evidence", action="store_true",
                    help="compare same-id train/test image pairs with random pairs (is the id numbering shared?)")
    di.add_argument("--show-paths", action="store_true", help="print file names (they can carry patient ids); "
                                                              "by default they are replaced by per-run salted ids")
    di.add_argument("--json", action="store_true")
    di.set_defaults(fn=cmd_data_inspect)

    c = sub.add_parser("cache", help="the pixel/feature cache (patient data)").add_subparsers(dest="cache_cmd",
                                                                                         required=True)
    ci = c.add_parser("info", help="where the cache is, its size and cap")
    ci.add_argument("--json", action="store_true")
    c.add_parser("clear", help="delete every cached file")
    for x in c.choices.values():
        x.set_defaults(fn=cmd_cache)

    b = sub.add_parser("bundle", help="sign and verify bundles (Ed25519)").add_subparsers(dest="bundle_cmd",
                                                                                       required=True)
    bk = b.add_parser("keygen", help="write privmed-bundle.key (private) and privmed-bundle.pub into a folder")
    bk.add_argument("--out", type=Path, required=True)
    bs = b.add_parser("sign", help="write BUNDLE/signature.ed25519")
    bs.add_argument("bundle", type=Path)
    bs.add_argument("--key", type=Path, required=True)
    bv = b.add_parser("verify", help="check BUNDLE/signature.ed25519; exit 2 when bad or missing")
    bv.add_argument("bundle", type=Path)
    bv.add_argument("--pubkey", type=Path, required=True)
    for x in (bk, bs, bv):
        x.set_defaults(fn=cmd_bundle)


def _model_parsers(sub) -> None:
    """``privmed train``, ``privmed evaluate``, ``privmed predict``."""
    t = sub.add_parser("train", help="train a model and write a bundle (DP-SGD unless --no-dp)")
    add_train_arguments(t)
    add_device_argument(t)
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="metrics of a bundle on a dataset split")
    e.add_argument("bundle")
    e.add_argument("--dataset")
    e.add_argument("--split", default="test")
    e.add_argument("--data-root", type=Path)
    e.add_argument("--keep-leaked", action="store_true", help="keep test images that also appear in train")
    e.add_argument("--patient-disjoint", action="store_true",
                   help="drop test images whose patient id also occurs in the training split")
    e.add_argument("--record", action="store_true",
                   help="store the metrics of the whole official test split in the bundle's metadata (the "
                        "leak-free subset and its counts, functions of the training images, go to the private run log)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_evaluate)

    pr = sub.add_parser("predict", help="label and per-class probabilities for image files")
    pr.add_argument("bundle")
    pr.add_argument("files", nargs="+")
    pr.add_argument("--window", choices=["file", "lung", "mediastinal"],
                    help="CT DICOM window (default: the file's, else the model's task default)")
    pr.add_argument("--frame", type=int, help="frame index (from 0) of a multi-frame DICOM")
    pr.add_argument("--source", default="file", choices=["file", "camera"],  # inference.predictor.SOURCES
                    help="camera: a phone photo of a film or monitor, found and straightened first (as the API's "
                         "?source=camera)")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(fn=cmd_predict)


def _privacy_parsers(pv) -> None:
    """``privmed privacy account`` and ``privmed privacy budget`` (``privmed privacy audit`` comes from
    ``cli/evaluation.py``)."""
    pa = pv.add_parser("account", help="epsilon from noise multiplier, sample rate, steps and delta")
    pa.add_argument("--sigma", type=float, required=True)
    pa.add_argument("--sample-rate", type=float, required=True)
    pa.add_argument("--steps", type=int, required=True)
    pa.add_argument("--delta", type=float, required=True)
    pa.add_argument("--accountant", default="prv", choices=ACCOUNTANTS)
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(fn=cmd_privacy_account)
    pb = pv.add_parser("budget", help="privacy spent and remaining on a dataset, over every run and trial")
    pb.add_argument("dataset", nargs="?", help="dataset name, folder or .npz (its key is computed from its content)")
    pb.add_argument("--key", help="the dataset key (64 hex digits) instead of opening the dataset")
    pb.add_argument("--data-root", type=Path)
    pb.add_argument("--limit", type=float, metavar="EPS", help="set the data owner's epsilon limit (needs --delta)")
    pb.add_argument("--delta", type=float, help="delta of the limit; without a limit, the delta to compose at")
    pb.add_argument("--accountant", default="prv", choices=ACCOUNTANTS)
    pb.add_argument("--json", action="store_true")
    pb.set_defaults(fn=cmd_privacy_budget)
