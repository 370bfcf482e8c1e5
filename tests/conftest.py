"""Shared pytest fixtures and switches. Keep this small: fixtures of one area live in that area's helpers."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
SAMPLES = ROOT / "sample_dumps"
GOLDEN = Path(__file__).resolve().parent / "golden"

# bench/ (the kube-proxy synthesizer) is importable from tests as `bench.synth`.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/** from the current output instead of comparing")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"conformance corpus not found at {CORPUS} (a plain clone has no ../shared)")
    return CORPUS


def check_golden(path: Path, actual: str, update: bool) -> None:
    """Compare `actual` with the golden file (or rewrite it with --update-golden); the diff is the review."""
    if update or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        if not update:
            pytest.fail(f"golden file {path} did not exist; written now — review and commit it")
        return
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"output differs from {path} (run pytest --update-golden and review the diff)"


@pytest.fixture
def golden(update_golden: bool) -> Callable[[Path | str, str], None]:
    """`golden(path, actual)` compares with (or, with --update-golden, rewrites) a golden file."""
    return lambda path, actual: check_golden(Path(path), actual, update_golden)


@pytest.fixture
def farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Real sshd servers (tests/sshd.py) for a test, with a fresh client key, no agent and a HOME of its own (no
    ~/.ssh of the machine's); every server stopped after it."""
    from tests.sshd import SshdFarm, keygen

    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    servers = SshdFarm(tmp_path, keygen(tmp_path / "client_key"))
    try:
        yield servers
    finally:
        servers.stop_all()
