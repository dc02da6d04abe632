"""docs/faults.md: the fault runner rewrites its own tables and keeps the CeleryExecutor cases' section,
which `pytest -m scenario` measures on a real Airflow deployment (tests/airflow/test_celery_faults.py)."""

from __future__ import annotations

from pathlib import Path

from faults.run import CELERY_SECTION, DOCS, write_docs


def test_the_runner_keeps_the_celery_section_when_it_rewrites_the_file(tmp_path: Path) -> None:
    start, end = CELERY_SECTION
    section = f"{start}\n### CeleryExecutor\n\n| case | lost |\n|---|---:|\n| worker SIGKILLed | 0 |\n{end}"
    doc = tmp_path / "faults.md"
    doc.write_text(f"# old\n\nLast full run: then\n\n{section}\n\nold text\n")
    write_docs([], [], 1.0, "4 tries", path=doc)
    text = doc.read_text()
    assert section in text and "old text" not in text and "## The cases" in text
    write_docs([], [], 1.0, "4 tries", path=doc)  # and again: kept once
    assert doc.read_text().count(start) == 1


def test_the_shipped_file_has_the_celery_section() -> None:
    text = DOCS.read_text()
    assert CELERY_SECTION[0] in text and CELERY_SECTION[1] in text
