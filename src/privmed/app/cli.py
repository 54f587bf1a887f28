"""``privmed app``: start the Streamlit clinician app (localhost only unless a password is set)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from privmed.config import settings
from privmed.errors import PrivmedError

APP_FILE = Path(__file__).with_name("streamlit_app.py")
LOCAL = ("127.0.0.1", "localhost", "::1")


def streamlit_command(port: int, address: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP_FILE), "--server.port", str(port),
            "--server.address", address, "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal"]


def check_address(address: str, env: dict | None = None) -> None:
    """``env``: the variables to judge instead of this process's settings (a child's environment)."""
    password = settings().app_password if env is None else env.get("PRIVMED_APP_PASSWORD")
    if address not in LOCAL and not address.startswith("unix://") and not password:
        raise PrivmedError(f"refusing to listen on {address}: the app would be reachable from other machines "
                           "without a login; set PRIVMED_APP_PASSWORD (the app then asks for it) or use 127.0.0.1")


def cmd_app(a) -> int:
    check_address(a.address)
    env = dict(os.environ)
    if a.bundle:
        env["PRIVMED_APP_BUNDLES"] = os.pathsep.join(str(Path(b).resolve()) for b in a.bundle)
    if a.api_url:
        env["PRIVMED_API_URL"] = a.api_url
    cmd = streamlit_command(a.port, a.address)
    print(f"privmed app on http://{a.address}:{a.port} ({'REST API ' + env['PRIVMED_API_URL'] if env.get('PRIVMED_API_URL') else 'in-process'})",
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
