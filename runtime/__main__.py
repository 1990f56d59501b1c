"""`python -m runtime` runs the broker (same as `ojs-server`)."""

from __future__ import annotations

import sys

from runtime.cli import server_main

sys.exit(server_main())
