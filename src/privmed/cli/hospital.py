"""``privmed deid``, ``privmed label``, ``privmed pacs``: registered by ``privmed.cli``.
Every message and JSON report is counts, output names and UIDs: no patient value."""
from __future__ import annotations

import json
from pathlib import Path


def _out(obj, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else text)


def _options(a):
    from privmed.deid.header import Options

    return Options(dates=a.dates, clean_descriptors=a.clean_descriptors)


def cmd_deid(a):
    from privmed.deid.files import deid_path
    from privmed.deid.header import load_secret

    secret = load_secret(a.secret_file, a.out)
    r = deid_path(a.input, a.out, secret, _options(a), a.pixels)
    _out(r, a.json, f"{r['written']} of {r['files']} file(s) de-identified into {a.out}: "
                    f"{r['header_elements_changed']} header element(s) changed, {r['boxes_redacted']} burned-in "
                    f"text box(es) redacted" + "".join(f"\n  input {f['input_index']}: {f['error']}"
                                                        for f in r["failures"]))
    return 0 if r["failed"] == 0 else 1


def cmd_label(a):
    from privmed.deid.labelling import apply, propose
    from privmed.errors import PrivmedError

    if a.target and a.target[0] == "apply":
        if len(a.target) != 2 or not a.images or not a.out:
            raise PrivmedError("usage: privmed label apply CSV --images FOLDER --out DATASET_DIR")
        r = apply(Path(a.target[1]), a.images, a.out, a.split, a.include_review)
        _out(r, a.json, f"{r['copied']} image(s) laid out in {r['dataset']}/{a.split}/<label>/ "
                        f"({r['skipped']} skipped: no label or still marked for review)")
        return 0
    if len(a.target) != 1 or not a.from_ocr:
        raise PrivmedError("usage: privmed label FOLDER --from-ocr --classes A,B [--out labels.csv]")
    if not a.classes:
        raise PrivmedError("give the class names to look for: --classes NORMAL,PNEUMONIA")
    out = a.out or Path("labels.csv")
    r = propose(Path(a.target[0]), a.classes.split(","), out, a.threshold, a.lang)
    _out(r, a.json, f"{r['images']} image(s): proposals {r['proposed']}; {r['to_review']} to review; "
                    f"edit {r['csv']}, then `privmed label apply {r['csv']} --images {a.target[0]} --out DIR`")
    return 0


def cmd_pacs(a):
    from privmed.hospital import flows

    if a.pacs_cmd == "pull":
        from privmed.deid.header import load_secret

        secret = None if a.keep_identifiers else load_secret(a.secret_file, a.out)
        r = flows.pull(a.url, a.study, a.out, secret, _options(a), a.pixels, a.keep_identifiers)
        _out(r, a.json, f"{r['written']} of {r['instances']} instance(s) written to {r['out']} "
                        f"({'de-identified' if r['deidentified'] else 'WITH patient identifiers'})")
    elif a.pacs_cmd == "push":
        r = flows.push(a.url, a.files)
        _out(r, a.json, f"{r['stored']} instance(s) stored")
    else:
        r = flows.predict_study(a.url, a.study, a.bundle, push=a.push, window=a.window)
        lines = [f"{p['sop_instance']}: {p['label']}" + (" (abstained)" if p["abstain"] else "")
                 for p in r["predictions"]]
        if r["sr_stored"]:
            lines.append(f"structured report {r['sr_stored']} stored in the study (not for diagnostic use)")
        _out(r, a.json, "\n".join(lines))
    return 0


def _deid_flags(p) -> None:
    p.add_argument("--secret-file", type=Path,
                   help="site secret for pseudonyms and UIDs (created if missing; must not be inside OUT); "
                        "or PRIVMED_DEID_SECRET")
    p.add_argument("--dates", choices=["remove", "shift"], default="remove",
                   help="remove dates (basic profile) or shift them per patient (modified dates option)")
    p.add_argument("--clean-descriptors", action="store_true",
                   help="keep study/series descriptions and comments with identifying values cut out")
    p.add_argument("--pixels", choices=["ocr", "skip"], default="ocr",
                   help="find burned-in text by OCR and black it out (default), or leave pixels as they are")
    p.add_argument("--json", action="store_true")


def register(sub, privacy_sub) -> None:
    d = sub.add_parser("deid", help="de-identify DICOM (PS3.15 basic profile) and PNG/JPEG (burned-in text)")
    d.add_argument("input", type=Path)
    d.add_argument("out", type=Path)
    _deid_flags(d)
    d.set_defaults(fn=cmd_deid)

    lb = sub.add_parser("label", help="propose labels read by OCR (privmed label FOLDER --from-ocr --classes A,B); "
                                      "privmed label apply CSV --images FOLDER --out DIR")
    lb.add_argument("target", nargs="+", metavar="FOLDER | apply CSV")
    lb.add_argument("--from-ocr", action="store_true")
    lb.add_argument("--classes", help="comma-separated class names to look for")
    lb.add_argument("--out", type=Path, help="CSV to write (propose) or dataset folder (apply)")
    lb.add_argument("--images", type=Path, help="apply: the folder the CSV's image paths are relative to")
    lb.add_argument("--split", default="train")
    lb.add_argument("--include-review", action="store_true", help="apply: also take rows still marked for review")
    lb.add_argument("--threshold", type=float, default=0.7, help="confidence under which a row is sent to review")
    lb.add_argument("--lang", default="eng", help="Tesseract language(s), e.g. eng+deu")
    lb.add_argument("--json", action="store_true")
    lb.set_defaults(fn=cmd_label)

    pc = sub.add_parser("pacs", help="a PACS over DICOMweb: pull, predict, push").add_subparsers(
        dest="pacs_cmd", required=True)
    pl = pc.add_parser("pull", help="retrieve a study, de-identify it, write it to a folder")
    pl.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    pl.add_argument("--study", required=True, help="StudyInstanceUID")
    pl.add_argument("--out", type=Path, required=True)
    pl.add_argument("--keep-identifiers", action="store_true", help="write the originals, identifiers and all")
    _deid_flags(pl)
    ps = pc.add_parser("push", help="store DICOM files (or folders of .dcm) in the PACS")
    ps.add_argument("--url", required=True)
    ps.add_argument("files", nargs="+", type=Path)
    ps.add_argument("--json", action="store_true")
    pp = pc.add_parser("predict", help="predict a study's images; --push stores a Structured Report in it")
    pp.add_argument("--url", required=True)
    pp.add_argument("--study", required=True)
    pp.add_argument("--bundle", required=True)
    pp.add_argument("--push", action="store_true")
    pp.add_argument("--window", choices=["file", "lung", "mediastinal"])
    pp.add_argument("--json", action="store_true")
    for x in (pl, ps, pp):
        x.set_defaults(fn=cmd_pacs)
