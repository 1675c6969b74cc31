"""`python -m edgetune.server [--bundle B] [--profile P] [--host H] [--port N] [--token T]`:
the same as `edgetune serve` (what `make run` starts)."""

from __future__ import annotations

import sys

from edgetune.server.options import main

if __name__ == "__main__":
    sys.exit(main())
