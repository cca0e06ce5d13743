"""Finding the files to index: folders walked in sorted order, hidden and VCS folders skipped,
`--include/--exclude` globs and `.embedkitignore` files (gitignore syntax, each applying below its folder).

Symbolic links are handled as ripgrep and git do: a link to a file inside the folders being indexed is indexed
under its own path, one that leaves them is skipped (with the reason) unless `follow_symlinks`, which also
descends into linked folders (each real folder once). Only regular files are taken: never a named pipe,
socket or device, directly or through a link."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pathspec

from embedkit.errors import InputError
from embedkit.index.keys import child_key, file_key

IGNORE_FILE = ".embedkitignore"
SKIPPED_DIRS = frozenset({"CVS", "__pycache__", "node_modules", "_darcs"})


@dataclass(frozen=True)
class FoundFile:
    """A file to index: where it is on disk and its key in the collection (see `keys`); `skip` is the reason
    a file found is not indexed (a link leaving the indexed folders)."""

    path: Path
    key: str
    skip: str | None = None


def _spec(patterns: Sequence[str], origin: str) -> pathspec.PathSpec | None:
    """The gitignore-style spec of `patterns`; an InputError naming `origin` and the pattern if one is invalid."""
    if not patterns:
        return None
    try:
        return pathspec.GitIgnoreSpec.from_lines(patterns)
    except (re.error, ValueError):
        pass
    for pat in patterns:  # find the culprit to name it
        try:
            pathspec.GitIgnoreSpec.from_lines([pat])
        except (re.error, ValueError) as e:
            raise InputError(f"{origin}: invalid gitignore-style pattern {pat!r} ({getattr(e, 'msg', e)})") from None
    raise InputError(f"{origin}: invalid gitignore-style patterns")


def _not_found(arg: str | os.PathLike[str]) -> InputError:
    """Why `arg` (which does not exist as far as Path.exists() can tell) cannot be indexed."""
    p = Path(arg)
    if p.is_symlink():
        try:
            os.stat(p)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return InputError(f"{arg}: symbolic link loop")
        return InputError(f"{arg}: broken symbolic link (to {os.readlink(p)})")
    return InputError(f"{arg}: no such file or folder")


def _special_kind(p: Path) -> str | None:
    """'a named pipe (FIFO)' etc. for what is neither a regular file nor a folder, else None."""
    mode = p.stat().st_mode
    for test, kind in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return None


def walk_paths(
    paths: Sequence[str | os.PathLike[str]],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    follow_symlinks: bool = False,
) -> list[FoundFile]:
    """Every file under `paths` that passes the filters, sorted by key, each once.

    `include`/`exclude` are gitignore-style globs matched against the path relative to the folder given
    (`*.md` matches at any depth, `drafts/` a folder). A file named explicitly is taken even if an
    `.embedkitignore` would skip it, but still obeys `include`/`exclude`. Links: see the module docstring.
    """
    inc, exc = _spec(include, "--include"), _spec(exclude, "--exclude")
    found: dict[str, FoundFile] = {}
    roots = [Path(arg).resolve() for arg in paths if Path(arg).exists()]

    def wanted(rel: str) -> bool:
        if inc is not None and not inc.match_file(rel):
            return False
        return exc is None or not exc.match_file(rel)

    for arg in paths:
        p = Path(arg)
        if not p.exists():
            raise _not_found(arg)
        kind = _special_kind(p)
        if kind is not None:  # os.walk would find nothing in it and reading it could block
            raise InputError(f"{arg}: is {kind}; expected a file or a folder")
        key = file_key(arg)
        if p.is_file():
            if wanted(p.name):
                found.setdefault(key, FoundFile(p, key))
            continue
        for f in _walk_dir(p, follow_symlinks):
            rel = f.relative_to(p).as_posix()
            if wanted(rel):
                k = child_key(key, rel)
                found.setdefault(k, FoundFile(f, k, None if follow_symlinks else _leaves(f, roots)))
    return [found[k] for k in sorted(found)]


def _leaves(f: Path, roots: Sequence[Path]) -> str | None:
    """Why `f` is not followed: it is a link whose target lies outside every root; else None."""
    if not f.is_symlink():
        return None
    target = f.resolve()
    if any(target == r or r in target.parents for r in roots):
        return None
    return f"symbolic link to {target}, outside the folders being indexed (--follow-symlinks to index it)"


def _walk_dir(root: Path, follow_symlinks: bool = False) -> list[Path]:
    out: list[Path] = []
    seen = {root.resolve()}  # real folders walked, so linked folders never loop
    # (folder relative to root, spec) for every .embedkitignore seen above the current folder
    ignores: list[tuple[str, pathspec.PathSpec]] = []

    def ignored(rel: str, is_dir: bool) -> bool:
        for base, spec in ignores:
            if base and not rel.startswith(base + "/"):
                continue
            sub = rel[len(base) + 1 :] if base else rel
            if spec.match_file(sub + "/" if is_dir else sub):
                return True
        return False

    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        ignores = [(b, s) for b, s in ignores if not b or rel_dir == b or rel_dir.startswith(b + "/")]
        if IGNORE_FILE in filenames and (here / IGNORE_FILE).is_file():  # not a FIFO: reading it would block
            ignore_file = here / IGNORE_FILE
            lines = ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()
            ignores.append((rel_dir, _spec(lines, str(ignore_file)) or pathspec.GitIgnoreSpec.from_lines([])))

        prefix = f"{rel_dir}/" if rel_dir else ""
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and d not in SKIPPED_DIRS and _descend(here / d, follow_symlinks, seen)
            and not ignored(prefix + d, True)
        )
        for name in sorted(filenames):
            if name.startswith(".") or ignored(prefix + name, False):
                continue
            f = here / name
            if f.is_file():  # a regular file (through a link too): never a pipe, socket or device
                out.append(f)
    return out


def _descend(d: Path, follow_symlinks: bool, seen: set[Path]) -> bool:
    """Whether to walk into folder `d`: not a link unless following links, and each real folder once."""
    if d.is_symlink() and not follow_symlinks:
        return False
    real = d.resolve()
    if real in seen:
        return False
    seen.add(real)
    return True
