"""The ``fedp13n`` command line."""

from __future__ import annotations

import sys


def entry() -> None:
    """The ``fedp13n`` console script: the command, and a Ctrl-C while it starts (loading
    torch takes a second or more, before any handler of the command exists) as one line
    and exit code 130 instead of a traceback of the import it stopped."""
    try:
        from fedp13n.cli.main import app
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while fedp13n was starting; nothing was run.\n")
        raise SystemExit(130) from None
    app()
