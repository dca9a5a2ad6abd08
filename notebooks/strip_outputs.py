"""Strip outputs from notebooks before they are committed (notebooks are stored without outputs).

    python notebooks/strip_outputs.py                  # every notebook in notebooks/
    python notebooks/strip_outputs.py path/to/a.ipynb  # only these
    python notebooks/strip_outputs.py --check          # exit 1 listing the notebooks with outputs

Stripping removes every code cell's outputs and execution count, and the per-cell execution
metadata Jupyter records (``execution``, ``collapsed``, ``scrolled``); tags (``parameters``)
and the notebook's kernelspec stay. A stripped notebook is left untouched, so the command is
safe to run again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbformat import NotebookNode

NOTEBOOK_DIR = Path(__file__).resolve().parent
CELL_METADATA_DROPPED = ("execution", "collapsed", "scrolled")
"""Cell metadata Jupyter writes while running a notebook; none of it belongs in the repository."""


def is_stripped(notebook: NotebookNode) -> bool:
    """No code cell has outputs, an execution count or execution metadata."""
    return all(
        not cell.get("outputs") and cell.get("execution_count") is None
        and not any(key in cell.get("metadata", {}) for key in CELL_METADATA_DROPPED)
        for cell in notebook.cells if cell.cell_type == "code"
    )


def strip(notebook: NotebookNode) -> NotebookNode:
    """The notebook without outputs (changed in place, and returned)."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = []
        cell.execution_count = None
        for key in CELL_METADATA_DROPPED:
            cell.metadata.pop(key, None)
    return notebook


def strip_file(path: Path) -> bool:
    """Strip one notebook file; returns whether it had anything to strip."""
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    if is_stripped(notebook):
        return False
    nbformat.write(strip(notebook), path)
    return True


def notebooks(paths: Sequence[str]) -> list[Path]:
    """The notebooks named, or every notebook in notebooks/ when none is."""
    found = [Path(p) for p in paths] or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    missing = [str(p) for p in found if not p.is_file()]
    if missing:
        raise SystemExit(f"no such notebook: {', '.join(missing)}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="notebooks (default: every one in notebooks/)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a notebook has outputs")
    args = parser.parse_args(argv)
    paths = notebooks(args.paths)
    if args.check:
        dirty = [p for p in paths if not is_stripped(nbformat.read(p, as_version=4))]
        for path in dirty:
            print(f"{path}: has outputs; run python notebooks/strip_outputs.py {path}")
        return 1 if dirty else 0
    for path in paths:
        if strip_file(path):
            print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
