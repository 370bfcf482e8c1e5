"""Child processes that a test interrupts must get SIGINT as a terminal would deliver it."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """Popen's preexec_fn: SIGINT back to its default. A test run started in the background (`cmd &` in a
    script) ignores SIGINT, every child inherits that, and Python installs no Ctrl-C handler in such a child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
