"""A site's calibration of a bundle, applied where the site serves it (``privmed calibrate`` writes it).

``<bundle>.site/site.json`` holds DP releases from the site's labelled sample: temperature, decision
threshold, out-of-distribution reference and the site's class prior, with the site's own privacy
ledger. It lives beside the bundle, never in it (the bundle's signature and guarantee are
unchanged), and is used only with the weights it was fitted for.
"""
from __future__ import annotations

import json
from pathlib import Path

from privmed.errors import BundleError

SITE_FILE = "site.json"
APPLIED = ("calibration", "decision", "ood")


def site_dir(bundle: Path) -> Path:
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + ".site")


def load(bundle: Path, metadata: dict, folder: Path | None = None) -> dict | None:
    """The site calibration for this bundle (``folder`` or ``<bundle>.site/``), or None where there is none.
    One made for other weights is refused: its thresholds would describe another model."""
    path = Path(folder or site_dir(bundle)) / SITE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"site calibration {path} is unreadable ({e}); run `privmed calibrate` again or "
                          "remove the file") from None
    if not isinstance(doc, dict) or any(k not in doc for k in (*APPLIED, "privacy", "weights_sha256")):
        raise BundleError(f"site calibration {path} is not one `privmed calibrate` wrote; run it again")
    if doc["weights_sha256"] != metadata.get("weights_sha256"):
        raise BundleError(f"site calibration {path} was fitted for other weights than {bundle}'s: run "
                          "`privmed calibrate` again for this bundle, or remove the file")
    return doc


def summary(site: dict) -> dict:
    """What every face shows of a site calibration: whose, when, and its own privacy guarantee."""
    p = site["privacy"]
    return {"site": site.get("site"), "created": site.get("created"), "epsilon": p.get("epsilon"),
            "delta": p.get("delta"), "unit_of_privacy": p.get("unit_of_privacy"),
            "n_units_dp": p.get("n_units_site_dp"), "class_prior": site["calibration"].get("class_prior"),
            "statement": f"Calibrated at site '{site.get('site')}' on {site.get('created')}: temperature, decision "
                         f"threshold and out-of-distribution reference fitted on the site's labelled sample with "
                         f"differential privacy (epsilon = {p.get('epsilon'):g}, delta = {p.get('delta'):.1g}, "
                         f"per {p.get('unit_of_privacy')}); the bundle's own guarantee is unchanged."}
