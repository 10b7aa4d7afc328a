"""PaddleNLP's cache folder ($PPNLP_HOME), checked before PaddleNLP is first imported: the import
itself raises a RuntimeError for a PPNLP_HOME that is a file (paddlenlp/utils/env.py, _get_ppnlp_home)
and creates models/, datasets/ and packages/ in it (_get_sub_home), so a read-only or mistyped cache
otherwise ends in a traceback, or leaves folders behind."""

from __future__ import annotations

import os
from pathlib import Path

from job.errors import UserError

SUBFOLDERS = ("models", "datasets", "packages")  # what importing PaddleNLP creates in the cache
FIX = "point PPNLP_HOME at a writable folder (the images use the volume at /cache)"


def cache_home() -> Path:
    """Where PaddleNLP keeps its downloads: $PPNLP_HOME, else ~/.paddlenlp."""
    return Path(os.environ["PPNLP_HOME"]) if os.environ.get("PPNLP_HOME") else Path.home() / ".paddlenlp"


def cache_problem() -> str | None:
    """What stops PaddleNLP from using the cache, or None. Missing is fine when the nearest folder that
    exists above it is writable (the first run creates it)."""
    home = cache_home()
    if home.is_symlink() and not home.exists():
        return f"PPNLP_HOME {home} is a symbolic link to nothing"
    if home.exists() and not home.is_dir():
        return f"PPNLP_HOME {home} is a file, not a folder"
    existing = home
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        missing = [name for name in SUBFOLDERS if not (home / name).is_dir()]
        if existing == home and not missing:
            return None  # a read-only cache that holds what it needs (prefetched, mounted :ro) is usable
        return f"PPNLP_HOME {home} is read-only" + (f" (its folder {existing} is)" if existing != home else "")
    return None


def check_cache_home() -> None:
    """UserError (exit 2) with the fix when PaddleNLP could not use its cache; before its first import."""
    problem = cache_problem()
    if problem:
        raise UserError(f"{problem}: {FIX}")
