"""A wheel install (no checkout beside it) still finds and serves the default bundles: they ship as
package data, and new bundles go to the user's data folder, not into site-packages."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from privmed.config import default_data_root

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = sorted(d.name for d in (ROOT / "bundles").iterdir() if (d / "weights.safetensors").is_file()
                  and not d.name.endswith((".run", ".local", ".partial")))


FILM = default_data_root() / "chest_xray_pneumonia" / "test" / "pneumonia" / "person100_bacteria_475.jpeg"


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp / "dist")], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"building the wheel failed: {r.stderr[-2000:]}")
    wheel = next((tmp / "dist").glob("privmed-*.whl"))
    site = tmp / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts in site-packages
    return wheel, site


def test_the_wheel_ships_each_default_bundle(wheel_install):
    wheel, _ = wheel_install
    names = set(zipfile.ZipFile(wheel).namelist())
    for d in DEFAULTS:
        assert f"privmed/bundles/{d}/metadata.json" in names
        assert f"privmed/bundles/{d}/weights.safetensors" in names


def test_a_wheel_install_loads_a_default_bundle_by_name(wheel_install, tmp_path):
    _, site = wheel_install
    code = ("import json, privmed, privmed.config as c; from privmed.inference.predictor import resolve_bundle;"
            f"p = privmed.load_model('chest_xray_pneumonia').predict({str(FILM)!r});"
            "print(json.dumps({'file': privmed.__file__, 'bundle': str(resolve_bundle('chest_xray_pneumonia')),"
            "'write_to': str(c.bundles_dir()), 'label': p.label}))")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PRIVMED_")}
    env.update(PYTHONPATH=str(site), XDG_DATA_HOME=str(tmp_path / "data"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(site))
    assert out["bundle"] == str(site / "privmed" / "bundles" / "chest_xray_pneumonia")
    assert out["write_to"] == str(tmp_path / "data" / "privmed" / "bundles")
    expected = json.loads((ROOT / "bundles" / "chest_xray_pneumonia" / "metadata.json").read_text())
    assert out["label"] in expected["classes"]
