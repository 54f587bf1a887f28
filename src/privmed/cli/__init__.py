"""``privmed``: one entry point, subcommands mirroring the layers.

The core commands (``core``) and each face (``evaluation``, ``federated``, ``api``, ``app``,
``hospital``) register their subcommands here, by direct import. Every face imports its optional
dependencies (Flower, FastAPI, Streamlit, ONNX Runtime) only inside its commands, so ``privmed --help``
and every other face work in an install without those extras. Nothing inside privmed imports this
package; it sits on top.
"""
from __future__ import annotations

import argparse

from privmed.cli import api, app, core, evaluation, federated, hospital
from privmed.cli.common import run

FACES = (evaluation, federated, api, app, hospital)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privmed", description="Privacy-aware medical image analysis")
    sub = p.add_subparsers(dest="cmd", required=True)
    privacy_sub = core.register(sub)
    for face in FACES:
        face.register(sub, privacy_sub)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


__all__ = ["build_parser", "main"]
