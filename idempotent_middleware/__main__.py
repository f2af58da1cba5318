"""``python -m idempotent_middleware``: the operator command line."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
