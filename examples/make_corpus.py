"""Rebuild the example corpus in examples/corpus/ from text that ships with Python and with packages in
the development environment (see README.md for sources and licences).

    python examples/make_corpus.py
"""

from __future__ import annotations

import email
from importlib import metadata
from pathlib import Path
from pydoc_data.topics import topics  # the Python Language Reference text used by help() (PSF-2.0)

OUT = Path(__file__).resolve().parent / "corpus"

PYTHON_TOPICS = {
    "with": "with-statement",
    "try": "try-statement",
    "raise": "raise-statement",
    "lambda": "lambda-expressions",
    "import": "import-statement",
    "for": "for-statement",
    "yield": "yield-expressions",
    "async": "coroutines-async",
    "truth": "truth-value-testing",
    "context-managers": "context-managers",
    "nonlocal": "nonlocal-statement",
    "slicings": "slicings",
    "typesmapping": "mapping-types-dict",
}

# distribution -> (file name, licence); the long description is the project's README
READMES = {
    "click": ("click.md", "BSD-3-Clause"),
    "jinja2": ("jinja2.md", "BSD-3-Clause"),
    "markupsafe": ("markupsafe.md", "BSD-3-Clause"),
    "sqlalchemy": ("sqlalchemy.rst", "MIT"),
    "alembic": ("alembic.rst", "MIT"),
    "platformdirs": ("platformdirs.md", "MIT"),
    "pgvector": ("pgvector-python.md", "MIT"),
    "fasteners": ("fasteners.md", "Apache-2.0"),
}


def main() -> None:
    (OUT / "python").mkdir(parents=True, exist_ok=True)
    (OUT / "readmes").mkdir(parents=True, exist_ok=True)
    for key, name in PYTHON_TOPICS.items():
        (OUT / "python" / f"{name}.txt").write_text(topics[key].strip() + "\n", encoding="utf-8")
    for dist, (name, _licence) in READMES.items():
        msg = email.message_from_string(metadata.distribution(dist).read_text("METADATA"))
        body = msg.get_payload() or ""
        (OUT / "readmes" / name).write_text(body.strip() + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
