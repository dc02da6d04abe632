"""``python -m exchange_emulator`` (or the ``exchange-emulator`` command)."""

import sys

from exchange_emulator.server import main

if __name__ == "__main__":
    sys.exit(main())
