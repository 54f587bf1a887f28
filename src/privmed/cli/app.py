"""``privmed app``: start the Streamlit clinician app (localhost only unless a password is set)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cmd_app(a) -> int:
    from privmed.app.launch import check_address, streamlit_command  # loads the settings: not at `privmed --help`

    check_address(a.address)
    env = dict(os.environ)
    if a.bundle:
        env["PRIVMED_APP_BUNDLES"] = os.pathsep.join(str(Path(b).resolve()) for b in a.bundle)
    if a.api_url:
        env["PRIVMED_API_URL"] = a.api_url
    cmd = streamlit_command(a.port, a.address)
    via = "REST API " + env["PRIVMED_API_URL"] if env.get("PRIVMED_API_URL") else "in-process"
    print(f"privmed app on http://{a.address}:{a.port} ({via})",
          file=sys.stderr)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def register(sub, privacy_sub) -> None:
    p = sub.add_parser("app", help="start the clinician web app (Streamlit)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1",
                   help="listen address; anything but localhost needs PRIVMED_APP_PASSWORD")
    p.add_argument("--bundle", action="append", type=Path, help="offer this bundle too (repeatable)")
    p.add_argument("--api-url", help="use a privmed REST API instead of in-process models "
                                     "(key from PRIVMED_API_KEY)")
    p.set_defaults(fn=cmd_app)
