"""``python -m localstack up|down|status``: the local stack (see :mod:`localstack.stack`)."""

from __future__ import annotations

import sys

from localstack.stack import main

if __name__ == "__main__":
    sys.exit(main())
