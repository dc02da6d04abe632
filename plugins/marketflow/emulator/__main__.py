"""``python -m marketflow.emulator`` (PYTHONPATH=plugins)."""

import sys

from marketflow.emulator.server import main

if __name__ == "__main__":
    sys.exit(main())
