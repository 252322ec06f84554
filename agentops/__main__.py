import sys

from agentops.cli import main

sys.exit(main())
