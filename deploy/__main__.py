"""``python -m deploy up|down|status``: the local stack (see :mod:`deploy.localstack`)."""

from __future__ import annotations

import sys

from deploy.localstack import main

if __name__ == "__main__":
    sys.exit(main())
