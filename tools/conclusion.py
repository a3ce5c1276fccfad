"""Print what an executed notebook concluded: the text output of its last cell (``make reproduce`` calls it)."""
from __future__ import annotations

import sys

import nbformat


def main(path: str) -> int:
    last = nbformat.read(path, as_version=4).cells[-1]
    print("".join(o.get("text", "") for o in last.get("outputs", [])).rstrip() or "(no conclusion printed)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
