"""The local stack and the demo (``python -m scripts.demo``, ``python -m scripts.stack``), run from the
repository root; the tests, the fault suite and the bench import them the same way. Not installed: the
Airflow image never contains them."""
