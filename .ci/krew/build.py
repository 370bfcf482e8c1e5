"""Build the krew archive of iptrace and its manifest.

    python3 .ci/krew/build.py --uri https://example.org/kubectl-iptrace-v0.1.0.tar.gz --out dist/

The archive holds the shim (kubectl-iptrace, krew's `bin`) and iptrace's source under src/ (the package, its
grammars, pyproject.toml and README.md). It is reproducible: the same source gives the same bytes (sorted
members, no timestamps or owners), so its sha256 can be checked by anyone who builds it again. The manifest
is .ci/krew/iptrace.yaml with the archive's URL and sha256 filled in.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import tarfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SHIM = HERE / "kubectl-iptrace"
TEMPLATE = HERE / "iptrace.yaml"


def version() -> str:
    return "v" + tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def sources() -> list[tuple[str, Path]]:
    """(name in the archive, file) for everything pip needs to install iptrace from src/. The grammars go in
    twice: grammars/ for a source run, and iptrace/grammars/ (a symlink to ../grammars in the repository,
    which a tar member must not be) for the package data of an installed copy."""
    files = [ROOT / "pyproject.toml", ROOT / "README.md",
             *sorted(p for p in (ROOT / "iptrace").rglob("*.py") if "__pycache__" not in p.parts)]
    out = [(f"src/{p.relative_to(ROOT).as_posix()}", p) for p in files]
    for grammar in sorted((ROOT / "grammars").glob("*.lark")):
        out += [(f"src/grammars/{grammar.name}", grammar), (f"src/iptrace/grammars/{grammar.name}", grammar)]
    return out


def build_archive() -> bytes:
    members = [("kubectl-iptrace", SHIM, 0o755), *((name, path, 0o644) for name, path in sources())]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path, mode in sorted(members):
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def manifest(uri: str, sha256: str) -> str:
    text = TEMPLATE.read_text()
    if "@URI@" not in text or "@SHA256@" not in text:
        raise SystemExit(f"{TEMPLATE}: the @URI@ and @SHA256@ placeholders are missing")
    return text.replace("@URI@", uri).replace("@SHA256@", sha256)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--uri", required=True, help="where the archive will be downloaded from (https://…)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="directory to write into (default dist/)")
    args = parser.parse_args(argv)
    archive = build_archive()
    sha256 = hashlib.sha256(archive).hexdigest()
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"kubectl-iptrace-{version()}.tar.gz"
    (args.out / name).write_bytes(archive)
    (args.out / "iptrace.yaml").write_text(manifest(args.uri, sha256))
    print(f"{args.out / name}  sha256 {sha256}\n{args.out / 'iptrace.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
