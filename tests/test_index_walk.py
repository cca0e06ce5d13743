"""Walker (include/exclude globs, .embedkitignore, hidden and VCS folders, stored keys) and extraction
(binary, encoding, HTML, content hash)."""

from __future__ import annotations

import hashlib
import os

import pytest

from embedkit.errors import InputError
from embedkit.index.extract import SkipFile, extract, html_to_text
from embedkit.index.keys import file_key, shown_path, typed_keys
from embedkit.index.walk import walk_paths


def _tree(root):
    files = {
        "a.md": "# A\n\ntext",
        "b.txt": "bee",
        "sub/c.py": "print(1)",
        "sub/deep/d.md": "dee",
        "drafts/e.md": "draft",
        ".hidden/f.md": "hidden",
        ".git/config": "vcs",
        "sub/.secret.md": "hidden file",
        "sub/skip.log": "log",
        "sub/.embedkitignore": "*.log\ndeep/\n",
        ".embedkitignore": "drafts/\n",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_walk_skips_hidden_vcs_and_ignored(tmp_path, monkeypatch):
    _tree(tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    keys = [shown_path(f.key) for f in walk_paths(["docs"])]
    assert keys == ["docs/a.md", "docs/b.txt", "docs/sub/c.py"]


def test_include_exclude(tmp_path, monkeypatch):
    _tree(tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    assert [shown_path(f.key) for f in walk_paths(["docs"], include=["*.md"])] == ["docs/a.md"]
    assert [shown_path(f.key) for f in walk_paths(["docs/"], exclude=["sub/"])] == ["docs/a.md", "docs/b.txt"]


def test_explicit_file_and_keys(tmp_path, monkeypatch):
    _tree(tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    # an explicitly named file is taken even if an .embedkitignore would skip it
    real = tmp_path.resolve().as_posix()
    assert [f.key for f in walk_paths(["docs/sub/skip.log"])] == [f"{real}/docs/sub/skip.log"]
    # one key however the folder is spelled and wherever `index` runs: its resolved absolute path (issue #22
    # item 9), shown relative to the current folder when below it
    docs = f"{real}/docs"
    assert file_key(str(tmp_path / "docs")) == file_key(str(tmp_path / "docs") + "/") == file_key("./docs/") == docs
    assert file_key("docs/../docs") == docs and shown_path(docs) == "docs"
    with pytest.raises(InputError, match="nope"):
        walk_paths(["nope"])
    monkeypatch.chdir(tmp_path / "docs" / "sub")
    assert file_key("../a.md") == f"{docs}/a.md" and shown_path(f"{docs}/a.md") == f"{docs}/a.md"
    assert shown_path(f"{docs}/sub/c.py") == "c.py" and shown_path(f"{docs}/sub/c.py", is_file=False) != "c.py"
    assert typed_keys("../a.md") == ["../a.md", f"{docs}/a.md"]


def test_extract_text_binary_encoding(tmp_path):
    p = tmp_path / "x.md"
    data = "# Title\r\n\r\nBody é\r\n".encode()
    ex = extract(p, data, 1.0)
    assert ex.text == "# Title\n\nBody é\n"
    assert ex.sha256 == hashlib.sha256(data).hexdigest()
    assert ex.metadata == {"ext": ".md", "title": "Title"}
    with pytest.raises(SkipFile, match="binary"):
        extract(tmp_path / "x.bin", b"\x89PNG\x00\x00data", 1.0)
    with pytest.raises(SkipFile, match="UTF-8"):
        extract(tmp_path / "x.txt", "café".encode("latin-1"), 1.0)
    with pytest.raises(SkipFile, match="empty"):
        extract(tmp_path / "x.txt", b"  \n\n", 1.0)


def test_html_to_text():
    html = ("<html><head><title>The  Page</title><style>p{}</style></head><body><h1>Head</h1>"
            "<p>One &amp; two</p><script>var x;</script><p>Three</p></body></html>")
    text, title = html_to_text(html)
    assert title == "The Page"
    assert text == "Head\n\nOne & two\n\nThree"


def test_bad_globs_and_ignore_files_name_the_pattern(tmp_path):
    """An invalid --include/--exclude glob or .embedkitignore line ended in 'internal error (error: bad
    character range ...)' from the regex pathspec builds."""
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(InputError, match=r"^--exclude: invalid gitignore-style pattern '\[z-a\]' \(bad character"):
        walk_paths([tmp_path], exclude=["*.md", "[z-a]"])
    with pytest.raises(InputError, match=r"^--include: invalid gitignore-style pattern '!'"):
        walk_paths([tmp_path], include=["!"])
    (tmp_path / ".embedkitignore").write_text("*.log\n[z-a]\n")
    with pytest.raises(InputError, match=r"\.embedkitignore: invalid gitignore-style pattern '\[z-a\]'"):
        walk_paths([tmp_path])


def test_special_files_and_broken_links_are_named(tmp_path):
    """A FIFO given as PATH was silently taken for an empty folder; a FIFO named .embedkitignore hung the walk
    (read_text blocks on it); broken links and link loops were reported as 'no such file or folder'."""
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match=r"pipe: is a named pipe \(FIFO\); expected a file or a folder"):
        walk_paths([tmp_path / "pipe"])
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(InputError, match=r"dangling: broken symbolic link \(to .*gone\)"):
        walk_paths([tmp_path / "dangling"])
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    with pytest.raises(InputError, match=r"loop1: symbolic link loop"):
        walk_paths([tmp_path / "loop1"])
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "x.txt").write_text("x")
    os.mkfifo(sub / ".embedkitignore")
    assert [f.path.name for f in walk_paths([sub])] == ["x.txt"]


def test_read_file_never_blocks_on_a_special_file(tmp_path):
    """A file swapped for a named pipe between the walk and the read would block the read forever: read_file
    opens without blocking and refuses what is not a regular file."""
    from embedkit.index.extract import SkipFile, read_file

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(SkipFile, match="not a regular file"):
        read_file(tmp_path / "pipe")
    with pytest.raises(SkipFile, match="not a regular file"):
        read_file(type(tmp_path)("/dev/zero"))
    (tmp_path / "ok.txt").write_bytes(b"fine")
    assert read_file(tmp_path / "ok.txt")[0] == b"fine"
