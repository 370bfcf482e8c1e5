"""`python -m iptrace …`: the command line (click names it `python -m iptrace` in its help)."""

from iptrace.cli import run

run()
