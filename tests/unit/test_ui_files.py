"""The Markets page's files as the API serves them: the built page, nothing outside it, and a clear
answer when it was never built (the browser test covers the served page and its login)."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketflow.api.app import ApiError, ui_file


@pytest.fixture
def built(tmp_path: Path) -> Path:
    root = tmp_path / "ui_dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>Markets</title>")
    (root / "assets" / "index-abc123.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("outside the page")
    return root


def test_the_page_and_its_assets(built: Path) -> None:
    page = ui_file("", built)
    assert Path(page.path) == built / "index.html" and page.headers["cache-control"] == "no-cache"
    asset = ui_file("assets/index-abc123.js", built)
    assert Path(asset.path) == built / "assets" / "index-abc123.js"
    assert "immutable" in asset.headers["cache-control"]


@pytest.mark.parametrize("path", ["../secret.txt", "assets/../../secret.txt", "missing.js", "assets"])
def test_nothing_outside_the_built_page(built: Path, path: str) -> None:
    with pytest.raises(ApiError) as refused:
        ui_file(path, built)
    assert refused.value.status == 404 and refused.value.parameter == "path"


def test_a_page_never_built_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(ApiError) as missing:
        ui_file("", tmp_path / "ui_dist")
    assert missing.value.status == 503 and "make ui" in missing.value.fix
