"""``python -m exchange_emulator`` (PYTHONPATH=plugins)."""

import sys

from exchange_emulator.server import main

if __name__ == "__main__":
    sys.exit(main())
