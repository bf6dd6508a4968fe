"""Benchmarks: each writes its table into a page of docs/."""
from __future__ import annotations

import re
from pathlib import Path


def write_between(doc: Path, start: str, end: str, block: str) -> None:
    """Put ``block`` (which begins with ``start`` and ends with ``end``) into ``doc`` in place of the
    block between those markers, so the hand-written text around it stays; appended the first time."""
    text = doc.read_text() if doc.exists() else ""
    text = (re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
            if start in text else text + ("\n" if text else "") + block + "\n")
    doc.write_text(text)
