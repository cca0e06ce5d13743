"""The keys indexed files are stored under, and the paths shown for them.

A file's key is canonical: the absolute path of the folder (or file) given to `index`, its links and `..`
resolved, followed by the file's path below it as walked (a link inside the tree keeps its own name, see
`walk`). So `c1`, `./c1/`, `c1/../c1`, its absolute path, and the same folder indexed from another working
folder all give one key. Users see a key relative to their current folder when it lies below it, else as it
is; what they type (a relative path, `./x/`, an absolute path) is mapped back to the key.

Keys of documents that are not files (`index --jsonl` ids, texts posted to the server) are stored, shown and
looked up verbatim; a document row says which kind it is (`documents.is_file`)."""

from __future__ import annotations

import os
from pathlib import Path


def file_key(arg: str | os.PathLike[str]) -> str:
    """The key of a file or folder given on the command line: its resolved absolute path (POSIX form)."""
    return Path(arg).resolve().as_posix()


def child_key(root: str, rel: str) -> str:
    """The key of a file at `rel` (POSIX, relative) below the folder keyed `root`."""
    return f"{root.rstrip('/')}/{rel}"


def _cwd() -> str:
    return Path.cwd().resolve().as_posix()


def shown_path(key: str, is_file: bool = True) -> str:
    """How a key is shown: a file's relative to the current folder when below it, else absolute; any other
    document's key verbatim."""
    if not is_file or not key.startswith("/"):
        return key
    cwd = _cwd()
    if key == cwd:
        return "."
    base = cwd.rstrip("/") + "/"
    return key[len(base):] if key.startswith(base) else key


def typed_keys(spelled: str) -> list[str]:
    """The keys a path typed by a user may stand for, most literal first: as typed (a verbatim key, or a key
    stored by an earlier version), then as a path from the current folder (normalised, and with its links
    resolved when it exists)."""
    out = [spelled]
    if not spelled:
        return out
    joined = os.path.normpath(os.path.join(_cwd(), spelled))
    for key in (Path(joined).as_posix(), file_key(joined) if os.path.lexists(joined) else None):
        if key is not None and key not in out:
            out.append(key)
    return out


def legacy_keys(key: str) -> list[str]:
    """Keys earlier versions stored for the file keyed `key` when indexed from the current folder: its path
    relative to the current folder (they kept keys relative to the folder `index` ran in)."""
    shown = shown_path(key)
    return [shown] if shown != key and shown != "." else []


def legacy_file_key(stored: str) -> str:
    """The canonical key of a file document stored relative to the current folder by an earlier version (an
    absolute key is returned as it is)."""
    if stored.startswith("/"):
        return stored
    return Path(os.path.normpath(os.path.join(_cwd(), stored))).as_posix()
