"""marketflow's fault-injection suite: every fault a run can meet, and proof that the data survives it.

``python -m faults`` (``make faults``) runs every case in faults/cases.py against a dedicated exchange
emulator, a real PostgreSQL and a real MongoDB (or nx-27017), prints the results table and rewrites
docs/faults.md. tests/faults/test_fault_suite.py runs every case inside ``make test``.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
