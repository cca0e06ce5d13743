"""A real Chromium for the browser tests: Debian's `chromium` package driven by Playwright (which cannot
download its own browsers here), with the flags that keep it from reaching anything but the test's server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> Path | None:
    """The system's Chromium (EMBEDKIT_CHROMIUM, else `chromium` on PATH, else /usr/bin/chromium), or None."""
    for candidate in (os.environ.get("EMBEDKIT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def launch_chromium(playwright):
    """A headless Chromium browser from the system's package (raises FileNotFoundError when there is none)."""
    path = chromium_path()
    if path is None:
        raise FileNotFoundError("no Chromium found: install Debian's package (apt-get install -y chromium) "
                                "or set EMBEDKIT_CHROMIUM to a Chromium binary")
    return playwright.chromium.launch(executable_path=str(path), args=CHROMIUM_ARGS)
