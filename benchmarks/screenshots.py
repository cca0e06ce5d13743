"""Screenshot of the search page for the README (docs/search-page.png), taken in the system's Chromium.

It opens the page of a running `embedkit serve` (--url), or starts one itself on a free port with this
environment's store (EMBEDKIT_HOME / EMBEDKIT_DATABASE_URL), types a query, opens "more like this" on a result and
marks one as a good match, so the side panels show, and saves the window (made smaller with pngquant when it is
installed).

Prepare the store first with `embedkit index examples/` (from the repository root).

Usage: python benchmarks/screenshots.py [--url http://127.0.0.1:8080] [--collection default]
       [--query "..."] [--out docs/search-page.png] [--width 1200] [--height 760]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the browser and server helpers the page's tests use

from browser_fixtures import launch_chromium  # noqa: E402
from server_fixtures import start_server, stop_server  # noqa: E402

QUERY = "where should my app store its config and cache files?"


def shoot(url: str, collection: str, query: str, out: Path, width: int, height: int) -> None:
    """Drive the page at `url` and save one PNG to `out`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            # bypass_csp: Playwright's wait_for_function evaluates strings, which the page's policy refuses
            page = browser.new_page(viewport={"width": width, "height": height}, bypass_csp=True)
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=yes]")
            page.select_option("#collection", collection)
            page.fill("#q", query)
            page.wait_for_function("window.embedkitIdle() && document.querySelector('#results .result')")
            results = page.locator("#results .result")
            results.nth(0).locator("button.good").click()
            paths = page.eval_on_selector_all("#results .result", "els => els.map(e => e.dataset.path)")
            other = next((i for i, p in enumerate(paths) if p != paths[0]), 1)
            results.nth(other).get_by_role("button", name="More like").click()
            page.wait_for_function("window.embedkitIdle()")
            page.locator("#q").focus()
            page.evaluate("window.scrollTo(0, 0)")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        finally:
            browser.close()
    if shutil.which("pngquant"):  # a palette PNG: a third of the size, same look (apt-get install pngquant)
        subprocess.run(["pngquant", "--quality=70-90", "--strip", "--force", "--output", str(out), str(out)],
                       check=True)
    print(f"saved {out} ({out.stat().st_size // 1024} KiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running embedkit serve (default: start one on a free port)")
    ap.add_argument("--collection", default="default")
    ap.add_argument("--query", default=QUERY)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "search-page.png")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=760)
    args = ap.parse_args()
    if args.url:
        shoot(args.url.rstrip("/"), args.collection, args.query, args.out, args.width, args.height)
        return
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("EMBEDKIT_API_KEY", None)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(env, Path(tmp) / "server.log")
        try:
            shoot(server.url, args.collection, args.query, args.out, args.width, args.height)
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
