"""Reading a file as text: content hash, binary and encoding checks, HTML to text, optional PDF."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 20 * 1024 * 1024
_BLOCK_TAGS = frozenset(
    "p div br li ul ol h1 h2 h3 h4 h5 h6 tr table section article header footer pre blockquote dt dd".split()
)
_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "head"})


class SkipFile(Exception):
    """A file that is not indexed; the message is the reason shown in the summary."""


@dataclass
class Extracted:
    """A file's text, the sha256 of its bytes, and metadata stored with the document."""

    text: str
    sha256: str
    size: int
    mtime: float
    metadata: dict[str, Any] = field(default_factory=dict)


def content_sha256(data: bytes) -> str:
    """The content hash that decides whether a file changed."""
    return hashlib.sha256(data).hexdigest()


def read_file(path: Path) -> tuple[bytes, float]:
    """The bytes and mtime of a regular file, or SkipFile if it is too large, unreadable, or (by now) a named
    pipe, socket or device: opened without blocking and checked on the open descriptor, so a file swapped
    for a pipe after the walk can never hang the read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SkipFile(f"unreadable: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SkipFile("not a regular file (a named pipe, socket or device)")
        if st.st_size > MAX_FILE_BYTES:
            raise SkipFile(f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(MAX_FILE_BYTES + 1), st.st_mtime
    except OSError as exc:
        raise SkipFile(f"unreadable: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def extract(path: Path, data: bytes, mtime: float) -> Extracted:
    """Text of a file: .html/.htm as text, .pdf with the optional pypdf package, anything else that is
    UTF-8 text as is (Markdown, reStructuredText, source code, JSON, CSV, ...). Raises SkipFile."""
    ext = path.suffix.lower()
    sha = content_sha256(data)
    meta: dict[str, Any] = {"ext": ext or None}
    if ext == ".pdf":
        text = _pdf_text(path)
    else:
        if b"\x00" in data[:8192]:
            raise SkipFile("binary file")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SkipFile("not UTF-8 text") from None
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if ext in (".html", ".htm", ".xhtml"):
            text, title = html_to_text(text)
            if title:
                meta["title"] = title
    text = text.replace("\x00", "")
    if not text.strip():
        raise SkipFile("empty")
    if "title" not in meta:
        m = re.search(r"^#\s+(.+)$|^(\S.*)\n[=]{3,}\s*$", text[:4000], re.M)
        if m:
            meta["title"] = (m.group(1) or m.group(2)).strip()
    return Extracted(text=text, sha256=sha, size=len(data), mtime=mtime, metadata=meta)


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag not in ("br", "li", "tr", "dt", "dd") else "\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self._in_title:
            self.title.append(data)
        elif not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str | None]:
    """Visible text of an HTML page (paragraphs kept apart by blank lines) and its <title>."""
    p = _HTMLText()
    p.feed(html)
    p.close()
    text = "".join(p.parts)
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    title = " ".join("".join(p.title).split()) or None
    return text, title


def _pdf_text(path: Path) -> str:
    try:
        import pypdf  # optional
    except ImportError:
        raise SkipFile("PDF needs the optional pypdf package (pip install pypdf)") from None
    try:
        reader = pypdf.PdfReader(str(path))
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except Exception as exc:
        raise SkipFile(f"unreadable PDF: {exc}") from None
