"""The search page at `/` in a real Chromium (Playwright), against a real `embedkit serve` subprocess on the
embedded PostgreSQL with examples/ indexed by the CLI with the real MiniLM model.

Checks: typing a query shows the API's results in the API's order (known document first); Enter searches at
once; the hybrid toggle, path and metadata filters give what /v1/search gives; "more like this" and the good/bad
examples give /v1/similar and /v1/recommend's lists; keys `/`, arrows and Enter; the document view with the hit
in view; result text is shown as text, never as markup; the page without JavaScript (server-rendered /search and
/doc); the API-key prompt (wrong key, right key, kept for the tab); axe-core finds nothing serious; the browser
console stays free of errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from browser_fixtures import chromium_path, launch_chromium
from server_fixtures import REPO, server_env, start_server, stop_server
from store_fixtures import *  # noqa: F403

pytestmark = pytest.mark.slow

COLLECTION = "page"
KEY = "page-key-0123456789"
AXE = REPO / "tests" / "data" / "axe-core" / "axe.min.js"
QUERY = "where should my app store its config and cache files?"
QUERY_DOC = "examples/corpus/readmes/platformdirs.md"
SIDE_K = 5  # documents in the page's "more like this" and "recommended" lists


@pytest.fixture(scope="module")
def env(pg_home, minilm_gguf_path):
    return server_env(pg_home, Path(minilm_gguf_path).parent)


@pytest.fixture(scope="module")
def corpus(env, tmp_path_factory) -> Path:
    """examples/ indexed by the CLI into the collection `page` (shown as 'examples/...' from this folder)."""
    work = tmp_path_factory.mktemp("page")
    shutil.copytree(REPO / "examples", work / "examples")
    p = subprocess.run([sys.executable, "-m", "embedkit.cli.main", "index", "examples/", "-c", COLLECTION, "-q"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    return work


@pytest.fixture(scope="module")
def server(env, corpus, tmp_path_factory):
    srv = start_server(env, tmp_path_factory.mktemp("page-log") / "server.log", cwd=corpus)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def keyed_server(env, corpus, tmp_path_factory):
    srv = start_server(env, tmp_path_factory.mktemp("page-key-log") / "server.log", key=KEY, cwd=corpus)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def api(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def browser():
    if chromium_path() is None:
        pytest.skip("no Chromium on this machine (apt-get install -y chromium; .ci/run installs it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch_chromium(pw)
        yield b
        b.close()


class Tab:
    """A page in its own browser context, recording console errors and uncaught exceptions."""

    def __init__(self, browser, **context_options) -> None:
        # bypass_csp: only so that the test may inject axe-core; the page itself never needs it
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True,
                                           **context_options)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.allowed: tuple[str, ...] = ()  # console errors a test causes on purpose (the API's 4xx answers)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]


@pytest.fixture()
def tab(browser):
    t = Tab(browser)
    yield t
    errors = t.unexpected_errors()
    t.context.close()
    assert not errors, f"errors in the browser console: {errors}"


def open_page(page, url: str, collection: str = COLLECTION) -> None:
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=yes]")
    page.select_option("#collection", collection)
    wait_idle(page)


def wait_idle(page) -> None:
    page.wait_for_function("window.embedkitIdle()")


def shown(page) -> list[tuple[str, int, str]]:
    """(path, chunk id, score text) of each result on the page, in order."""
    rows = page.eval_on_selector_all(
        "#results .result",
        "els => els.map(e => [e.dataset.path, Number(e.dataset.chunk), e.querySelector('.score').textContent])")
    return [tuple(r) for r in rows]


def api_search(api, query: str, **kw) -> list[tuple[str, int, str]]:
    r = api.post("/v1/search", json={"query": query, "collection": COLLECTION, **kw})
    assert r.status_code == 200, r.text
    return [(h["path"], h["chunk_id"], f"score {h['score']:.3f}") for h in r.json()["results"]]


def doc_list(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector + " li[data-path]", "els => els.map(e => e.dataset.path)")


def serious_accessibility_findings(page) -> list[str]:
    """axe-core's violations of impact serious or critical on the page as it is now (labels, contrast, ...)."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    return page.evaluate("async () => (await axe.run(document)).violations"
                         ".filter(v => v.impact === 'serious' || v.impact === 'critical')"
                         ".map(v => v.id + ': ' + v.help + ' (' + v.nodes.length + ' elements)')")


def test_typing_shows_the_api_results_in_order(tab, server, api):
    page = tab.page
    open_page(page, server.url)
    searches = []
    page.on("request", lambda r: searches.append(r) if r.url.endswith("/v1/search") else None)
    page.type("#q", QUERY, delay=15)  # keystrokes: searches as you type, debounced
    wait_idle(page)
    assert 1 <= len(searches) <= 3, f"{len(searches)} searches for {len(QUERY)} keystrokes"
    got = shown(page)
    assert got == api_search(api, QUERY)
    assert got[0][0] == QUERY_DOC
    marks = {m.lower() for m in page.locator("#results mark").all_inner_texts()}
    words = ("app", "store", "config", "cache", "files", "should")  # the query's words less the stop words
    assert marks and all(any(m.startswith(w) and len(m) <= len(w) + 3 for w in words) for m in marks), marks
    assert parse_qs(urlparse(page.url).query)["q"] == [QUERY]

    # Enter searches at once, without waiting for the debounce
    other = "lock a file so that two processes do not run at once"
    page.fill("#q", other)
    page.press("#q", "Enter")
    page.wait_for_function("document.querySelector('#results .result')?.dataset.path.endsWith('fasteners.md')",
                           timeout=5000)
    wait_idle(page)
    assert shown(page) == api_search(api, other)


def test_hybrid_and_filters_give_the_api_results(tab, server, api):
    page = tab.page
    query = "handle errors with except and finally clauses"
    open_page(page, server.url)
    page.fill("#q", query)
    wait_idle(page)
    vector = shown(page)
    assert vector == api_search(api, query)

    page.check("#hybrid")
    wait_idle(page)
    hybrid = api_search(api, query, hybrid=True)
    assert shown(page) == hybrid
    assert hybrid != vector

    page.fill("#path", "examples/corpus/readmes/")
    wait_idle(page)
    filtered = api_search(api, query, hybrid=True, path="examples/corpus/readmes/")
    assert shown(page) == filtered
    assert filtered and all(p.startswith("examples/corpus/readmes/") for p, _, _ in filtered)

    page.uncheck("#hybrid")
    page.fill("#path", "")
    page.fill("#meta", "ext=.rst")
    wait_idle(page)
    by_meta = api_search(api, query, meta=["ext=.rst"])
    assert shown(page) == by_meta
    assert by_meta and all(p.endswith(".rst") for p, _, _ in by_meta)

    tab.allowed = ("status of 400",)
    page.fill("#meta", "ext")  # not KEY=VALUE: the API's error, in words
    wait_idle(page)
    assert "expected KEY=VALUE" in page.inner_text("#error")


def test_more_like_this_and_examples_give_similar_and_recommend(tab, server, api):
    page = tab.page
    open_page(page, server.url)
    page.fill("#q", "build a command line interface with decorators")
    wait_idle(page)
    results = shown(page)
    first = results[0][0]
    other = next(p for p, _, _ in results if p != first)

    page.locator("#results .result").first.get_by_role("button", name="More like").click()
    wait_idle(page)
    similar = api.post("/v1/similar", json={"collection": COLLECTION, "target": {"document": first},
                                            "k": SIDE_K}).json()
    assert doc_list(page, "#similar") == [r["path"] for r in similar["results"]]
    assert page.inner_text("#similar-target") == first

    page.locator(f'#results .result[data-path="{first}"] button.good').first.click()
    wait_idle(page)
    rec = api.post("/v1/recommend", json={"collection": COLLECTION, "positive": [{"document": first}],
                                          "k": SIDE_K}).json()
    assert doc_list(page, "#recommended") == [r["path"] for r in rec["results"]]

    page.locator(f'#results .result[data-path="{other}"] button.bad').first.click()
    wait_idle(page)
    rec = api.post("/v1/recommend", json={"collection": COLLECTION, "positive": [{"document": first}],
                                          "negative": [{"document": other}], "k": SIDE_K}).json()
    assert doc_list(page, "#recommended") == [r["path"] for r in rec["results"]]
    assert doc_list(page, "#examples") == [first, other]
    pressed = page.locator(f'#results .result[data-path="{other}"] button.bad').first.get_attribute("aria-pressed")
    assert pressed == "true"

    page.get_by_role("button", name=f"Remove example {first}").click()  # only a bad example: no recommendations
    wait_idle(page)
    assert doc_list(page, "#recommended") == []
    assert "at least one" in page.inner_text("#rec-hint")


def test_keyboard_and_document_view(tab, server, api):
    page = tab.page
    open_page(page, server.url)
    page.locator("h1").click()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("approximate nearest neighbour search in Postgres with an HNSW index")
    wait_idle(page)
    results = shown(page)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    focused = page.evaluate("[document.activeElement.dataset.path, Number(document.activeElement.dataset.chunk)]")
    assert focused == [results[1][0], results[1][1]]
    page.keyboard.press("ArrowUp")
    assert page.evaluate("Number(document.activeElement.dataset.chunk)") == results[0][1]
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    page.wait_for_selector("#doc-dialog[open] .chunk")
    wait_idle(page)

    path, chunk = results[1][0], results[1][1]
    doc = api.get(f"/v1/collections/{COLLECTION}/documents", params={"key": path}).json()
    ids = page.eval_on_selector_all("#doc-body .chunk", "els => els.map(e => e.id)")
    assert ids == [f"doc-chunk-{c['chunk_id']}" for c in doc["chunks"]]  # the whole document, in order
    assert page.inner_text("#doc-title") == path
    hit = page.locator(f"#doc-chunk-{chunk}")
    assert "hit" in hit.get_attribute("class")
    in_view = page.evaluate(
        """id => { const r = document.getElementById(id).getBoundingClientRect();
                   const b = document.getElementById('doc-body').getBoundingClientRect();
                   return r.top < b.bottom && r.bottom > b.top && r.top >= 0 && r.top < innerHeight; }""",
        f"doc-chunk-{chunk}")
    assert in_view

    page.keyboard.press("Escape")
    page.wait_for_selector("#doc-dialog:not([open])", state="attached")
    assert page.evaluate("Number(document.activeElement.dataset.chunk)") == chunk


def test_result_text_is_shown_as_text(tab, server, api):
    evil = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script> hostile markup in a document"
    r = api.post("/v1/collections/page_markup/documents", json={"key": "notes/<b>bold</b>.html", "text": evil})
    assert r.status_code in (200, 201), r.text
    page = tab.page
    open_page(page, server.url, collection="page_markup")
    page.fill("#q", "hostile markup")
    wait_idle(page)
    assert page.locator("#results .snippet").first.text_content() == evil
    assert page.locator("#results .doc-link").first.text_content() == "notes/<b>bold</b>.html"
    assert page.locator("#results img, #results script, #results b").count() == 0
    assert page.evaluate("window.pwned") is None

    html = httpx.get(server.url + "/search", params={"q": "hostile markup", "collection": "page_markup"}).text
    assert "&lt;img src=x" in html and "<img src=x" not in html and "&lt;b&gt;bold" in html


def test_without_javascript_the_form_searches_on_the_server(browser, server, api):
    t = Tab(browser, java_script_enabled=False)
    page = t.page
    page.goto(server.url + "/")
    page.select_option("#collection", COLLECTION)
    page.fill("#q", QUERY)
    page.click("button[type=submit]")
    page.wait_for_url("**/search?**")
    assert shown(page) == api_search(api, QUERY)
    hit = shown(page)[0][1]
    page.locator("#results .doc-link").first.click()
    page.wait_for_url("**/doc?**")
    assert urlparse(page.url).fragment == f"chunk-{hit}"
    assert "hit" in page.locator(f"#chunk-{hit}").get_attribute("class")
    doc = api.get(f"/v1/collections/{COLLECTION}/documents", params={"key": QUERY_DOC}).json()
    ids = page.eval_on_selector_all("#server-doc .chunk", "els => els.map(e => e.id)")
    assert ids == [f"chunk-{c['chunk_id']}" for c in doc["chunks"]]
    t.context.close()


def test_api_key_prompt(browser, keyed_server):
    t = Tab(browser)
    page = t.page
    page.goto(keyed_server.url + "/")
    page.wait_for_selector("#key-dialog[open]")
    assert serious_accessibility_findings(page) == []
    page.fill("#key-input", "not-the-key")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("document.getElementById('key-message').textContent.includes('not valid')")
    assert page.locator("#key-dialog[open]").count() == 1
    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("body[data-ready=yes]")
    page.select_option("#collection", COLLECTION)
    page.fill("#q", QUERY)
    wait_idle(page)
    with keyed_server.client() as api:
        assert shown(page) == api_search(api, QUERY)
    page.reload()  # kept for the tab: no second prompt
    page.wait_for_selector("body[data-ready=yes]")
    assert page.locator("#key-dialog[open]").count() == 0
    t.allowed = ("status of 401",)  # the wrong key's answer
    assert t.unexpected_errors() == []
    assert page.evaluate("Object.keys(localStorage)") == []  # never stored beyond the tab
    t.context.close()

    # without JavaScript: the key goes in the form's body
    t = Tab(browser, java_script_enabled=False)
    page = t.page
    page.goto(keyed_server.url + "/")
    page.fill("#q", QUERY)
    page.click("button[type=submit]")
    assert "needs its API key" in page.inner_text("#error")
    page.fill("input[name=api_key]", "not-the-key")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text("#error")
    page.fill("input[name=api_key]", KEY)
    page.click("button[type=submit]")  # with the key, the collections are listed
    page.select_option("#collection", COLLECTION)
    page.click("button[type=submit]")
    assert KEY not in page.url
    with keyed_server.client() as api:
        assert shown(page) == api_search(api, QUERY)
        hit = shown(page)[0][1]
        page.locator("#results .doc-link").first.click()  # a small form posting the key, for each document
        page.wait_for_url("**/doc?**")
        assert KEY not in page.url
        doc = api.get(f"/v1/collections/{COLLECTION}/documents", params={"key": QUERY_DOC}).json()
    ids = page.eval_on_selector_all("#server-doc .chunk", "els => els.map(e => e.id)")
    assert ids == [f"chunk-{c['chunk_id']}" for c in doc["chunks"]]
    assert "hit" in page.locator(f"#chunk-{hit}").get_attribute("class")
    t.context.close()


def test_accessibility_no_serious_findings(tab, server):
    page = tab.page
    open_page(page, server.url)
    page.fill("#q", QUERY)
    wait_idle(page)
    page.locator("#results .result").first.get_by_role("button", name="More like").click()
    page.locator("#results .result button.good").first.click()
    wait_idle(page)
    assert serious_accessibility_findings(page) == []
    page.locator("#results .result").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#doc-dialog[open] .chunk")
    wait_idle(page)
    assert serious_accessibility_findings(page) == []
