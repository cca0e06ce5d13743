"""The search page: `/` serves a plain HTML page whose script calls the search API from the browser, and
`/search` and `/doc` render the same page with results on the server, for browsers without JavaScript.

The page's paths (PAGE_PATHS) need no API key to load. The API calls its script makes send the key the user
typed; the server-rendered routes check a key sent in a POST form body (never in the address)."""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from markupsafe import Markup, escape
from pydantic import ValidationError

from embedkit.errors import EmbedkitError
from embedkit.server.errors import APIError, from_embedkit
from embedkit.server.state import ServerState, server_state

HERE = Path(__file__).parent
STATIC_FILES = {"search.js": "text/javascript", "search.css": "text/css"}
PAGE_PATHS = frozenset({"/", "/search", "/doc"} | {f"/static/{name}" for name in STATIC_FILES})

# Words not worth highlighting in a result; the page's script gets the same list from the HTML.
STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i if in is it its my of on or so that the this to was "
    "what when where which who why will with you your".split()
)
# The page's own files and nothing else; inline scripts, styles and handlers are refused, so text that slipped
# into the page as markup still could not run.
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'"
MAX_FORM_BYTES = 64 * 1024

router = APIRouter(include_in_schema=False)
_templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)


def query_terms(query: str) -> list[str]:
    """The query's words worth highlighting, lowercased, longest first (so a longer word wins an overlap)."""
    words = {w for w in re.findall(r"\w+", query.lower()) if len(w) > 1 and w not in STOPWORDS}
    return sorted(words, key=lambda w: (-len(w), w))


def highlight(text: str, query: str) -> Markup:
    """`text`, HTML-escaped, with the query's words wrapped in <mark> (also with up to 3 more letters, as in
    plurals: "file" marks "files")."""
    terms = query_terms(query)
    if not terms:
        return escape(text)
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in terms) + r")\w{0,3}(?!\w)", re.IGNORECASE)
    out, last = [], 0
    for m in pattern.finditer(text):
        out.append(escape(text[last:m.start()]))
        out.append(Markup("<mark>") + escape(m.group(0)) + Markup("</mark>"))
        last = m.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


_templates.filters["highlight"] = highlight


def meta_filters(text: str) -> list[str]:
    """The metadata filter box's `KEY=VALUE, KEY=VALUE` as the API's list of `KEY=VALUE` strings."""
    return [part.strip() for part in text.split(",") if part.strip()]


async def _form(request: Request) -> dict[str, str]:
    """The query string, and for a POST the url-encoded form body too (the body wins), last value of each."""
    fields = {k: v[-1] for k, v in parse_qs(request.url.query, keep_blank_values=True).items()}
    if request.method == "POST":
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise APIError(413, f"the form is larger than {MAX_FORM_BYTES} bytes", "request_too_large")
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        fields.update({k: v[-1] for k, v in parsed.items()})
    return fields


def _key_problem(state: ServerState, fields: dict[str, str]) -> str | None:
    """Why a server-rendered answer cannot show results (no key or a wrong one), or None."""
    want = state.config.api_key
    if not want:
        return None
    given = fields.get("api_key", "")
    if not given:
        return "This server needs its API key: type it in the API key box and search again."
    if not hmac.compare_digest(given.encode(), want.encode()):
        return "The API key is not valid: check it and search again."
    return None


def _error_text(e: Exception) -> str:
    if isinstance(e, APIError):
        return e.message
    if isinstance(e, EmbedkitError):
        return from_embedkit(e).message
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', 'invalid value')}" if where else str(first.get("msg"))
    raise e


async def _collections(state: ServerState) -> list[dict[str, Any]]:
    from embedkit.server.routes_search import collections_route

    try:
        return (await collections_route(state))["collections"]
    except (APIError, EmbedkitError):
        return []


def _page(state: ServerState, fields: dict[str, str], *, collections: list[dict[str, Any]],
          results: list[dict[str, Any]] | None = None, document: dict[str, Any] | None = None,
          error: str | None = None, notice: str | None = None) -> HTMLResponse:
    keyed = bool(state.config.api_key)
    collection = fields.get("collection") or "default"
    names = [c["name"] for c in collections]
    if collection not in names:
        collections = [{"name": collection, "searchable": True}, *collections]
    html = _templates.get_template("page.html").render(
        q=fields.get("q", ""), collection=collection, collections=collections,
        hybrid=fields.get("hybrid") in ("on", "true", "1"), path=fields.get("path", ""), meta=fields.get("meta", ""),
        k=fields.get("k", "10"), keyed=keyed, api_key=fields.get("api_key", "") if notice is None else "",
        results=results, document=document, error=error, notice=notice, stopwords=" ".join(sorted(STOPWORDS)),
        doc_query=lambda **kw: urlencode({k: v for k, v in kw.items() if v is not None}),
    )
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


@router.get("/")
async def page_route(request: Request) -> HTMLResponse:
    """The search page (its script does the searching)."""
    state = await server_state(request)
    fields = await _form(request)
    collections = [] if state.config.api_key else await _collections(state)
    return _page(state, fields, collections=collections)


@router.api_route("/search", methods=["GET", "POST"])
async def search_page_route(request: Request) -> HTMLResponse:
    """The page with the results of `q` rendered on the server (the form's target without JavaScript)."""
    from embedkit.server.routes_search import SearchRequest, search_route

    state = await server_state(request)
    fields = await _form(request)
    notice = _key_problem(state, fields)
    if notice is not None:
        return _page(state, fields, collections=[], notice=notice)
    collections = await _collections(state)
    query = fields.get("q", "")
    if not query.strip():
        return _page(state, fields, collections=collections)
    try:
        req = SearchRequest(query=query, collection=fields.get("collection") or "default",
                            k=fields.get("k") or 10, hybrid=fields.get("hybrid") in ("on", "true", "1"),
                            path=fields.get("path") or None, meta=meta_filters(fields.get("meta", "")) or None)
        results = (await search_route(req, state))["results"]
    except (APIError, EmbedkitError, ValidationError) as e:
        return _page(state, fields, collections=collections, error=_error_text(e))
    return _page(state, fields, collections=collections, results=results)


@router.api_route("/doc", methods=["GET", "POST"])
async def document_page_route(request: Request) -> HTMLResponse:
    """One document's chunks in order (`?collection=&key=&chunk=`), the hit chunk marked and linked as #chunk-ID."""
    from embedkit.server.routes_search import documents_route

    state = await server_state(request)
    fields = await _form(request)
    notice = _key_problem(state, fields)
    if notice is not None:
        return _page(state, fields, collections=[], notice=notice)
    collections = await _collections(state)
    try:
        doc = await documents_route(fields.get("collection") or "default", state, key=fields.get("key", ""),
                                    document_id=None, limit=1, offset=0)
    except (APIError, EmbedkitError) as e:
        return _page(state, fields, collections=collections, error=_error_text(e))
    hit = fields.get("chunk", "")
    doc["hit"] = int(hit) if hit.isdigit() else None
    return _page(state, fields, collections=collections, document=doc)


@router.get("/static/{name}")
async def static_route(name: str) -> FileResponse:
    """The page's script and style sheet."""
    if name not in STATIC_FILES:
        raise APIError(404, f"no static file {name!r}", "unknown_url")
    return FileResponse(HERE / "static" / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})
