"""The search page's server-side helpers: highlighting escapes the text and marks the query's words; the
metadata box's `KEY=VALUE, ...` becomes the API's list."""

from __future__ import annotations

from embedkit.server.auth import OPEN_PATHS
from embedkit.server.page import PAGE_PATHS, highlight, meta_filters, query_terms


def test_highlight_escapes_and_marks_words():
    text = '<img src=x onerror="alert(1)"> Config files & caches; reconfigure'
    html = str(highlight(text, "where is the config file cache?"))
    assert "<img" not in html and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert "<mark>Config</mark> <mark>files</mark> &amp; <mark>caches</mark>; reconfigure" in html
    assert str(highlight("a <b>", "")) == "a &lt;b&gt;"


def test_query_terms_drop_stop_words_longest_first():
    assert query_terms("How do I store the CONFIG files?") == ["config", "files", "store"]


def test_meta_filters_split_on_commas():
    assert meta_filters(" ext=.md, title=Click ,, ") == ["ext=.md", "title=Click"]
    assert meta_filters("") == []


def test_page_paths_are_open_and_nothing_else():
    assert PAGE_PATHS <= OPEN_PATHS
    assert not any(p.startswith("/v1") for p in OPEN_PATHS)
