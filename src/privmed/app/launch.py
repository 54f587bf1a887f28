"""How the Streamlit app is started and where it may listen: shared by ``privmed app`` (which starts
it) and the app itself (which checks its own address again when started some other way)."""
from __future__ import annotations

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
