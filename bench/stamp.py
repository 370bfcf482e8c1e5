"""Names for the benchmark's cached inputs: after the content of the modules that write them, so that a changed
synthesizer makes a new input and a fresh checkout (new modification times, same code) finds the old one."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType


def stamp(*modules: ModuleType) -> str:
    """A short hash of these modules' source files."""
    digest = hashlib.blake2b(digest_size=6)
    for module in modules:
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()
