"""The lark grammars' text (grammars/*.lark): from the repository's grammars/ in a source checkout or an editable
install, else from the wheel, which ships them inside the package. Each parser module builds its own parser."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def grammar_text(name: str) -> str:
    """grammars/`name` (e.g. "nft.lark")."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "grammars" / name, here / "grammars" / name):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    return resources.files("iptrace").joinpath("grammars", name).read_text(encoding="utf-8")
