"""The README's `privmed train` example for the chest X-ray reproduces the shipped chest bundle's recipe:
the config the CLI builds from that command line equals the `training` block the bundle recorded."""
import json
import re
import shlex
from pathlib import Path

from privmed.cli import build_parser
from privmed.training.recipe import train_config

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundles" / "chest_xray_pneumonia"


def _readme_chest_train_argv() -> list[str]:
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines()
             if re.match(r"^privmed train --dataset chest_xray_pneumonia\b", ln) and "shipped chest recipe" in ln]
    assert len(lines) == 1, f"README should show one `privmed train` line marked as the shipped chest recipe: {lines}"
    return shlex.split(lines[0].split("#", 1)[0])[1:]  # drop `privmed` and the comment


def _recipe(argv: list[str]) -> dict:
    cfg = train_config(build_parser().parse_args(argv))
    out = json.loads(cfg.model_dump_json())
    out.pop("data_root")  # where the datasets sit on one machine, not part of the recipe
    return out


def test_readme_train_example_reproduces_the_shipped_chest_recipe():
    shipped = json.loads((BUNDLE / "metadata.json").read_text())["training"]
    shipped.pop("data_root")
    assert _recipe(_readme_chest_train_argv()) == shipped


def test_the_check_can_fail_without_the_model_flag():
    shipped = json.loads((BUNDLE / "metadata.json").read_text())["training"]
    shipped.pop("data_root")
    argv = [a for a in _readme_chest_train_argv() if a not in ("--model", "effnet_lite0_multi")]
    assert _recipe(argv) != shipped  # the TrainConfig default (effnet_lite0_head) is another recipe
