"""Keeps secrets out of everything pgbv prints, logs or stores."""

from __future__ import annotations

from collections.abc import Iterable

MASK = "********"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in text (longest first, so overlaps go too)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
