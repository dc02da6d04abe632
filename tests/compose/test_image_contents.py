"""The Airflow image and its containers hold the product and nothing else (checked statically).

What a container of the Airflow image can run is what the Dockerfile copies (through .dockerignore),
what its pip installs bring (requirements files, followed through -r / -c), and what compose
bind-mounts into the services built from it. None of that may contain the exchange emulator,
nx-27017 or another test-only tool, the tests, the bench or the fault suite. Each check is also run
on a deliberately wrong input, so a check that cannot fail would show.
"""

from __future__ import annotations

import ast
import itertools
import re
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from test_docker_compose import DOCKERIGNORE, REPO_ROOT, compose, dockerfile_instructions, dockerignore_excludes

# Repository folders that are development tools, never product.
DEV_DIRS = ("exchange_emulator", "tests", "bench", "faults", "scripts")
# Distributions only the tests and the development tools need (requirements-dev.txt).
DEV_DISTRIBUTIONS = {"nx-27017", "neosqlite", "exchange-emulator", "pytest", "ruff", "ta-lib", "iniconfig"}
# Top-level modules whose import from a product file would pull a test tool in.
DEV_MODULES = {"exchange_emulator", "nx_27017", "neosqlite", "pytest", "faults", "bench", "scripts", "support"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def copied_sources(instructions: Iterable[tuple[str, str]]) -> list[str]:
    """Build-context paths of every COPY / ADD (without --from=stage copies, which take no context file)."""
    sources = []
    for keyword, rest in instructions:
        if keyword in {"COPY", "ADD"}:
            words = shlex.split(rest)
            if any(w.startswith("--from") for w in words):
                continue
            parts = [w for w in words if not w.startswith("--")]
            sources.extend(parts[:-1])
    return sources


def files_in_context(source: str, root: Path = REPO_ROOT, ignored=dockerignore_excludes) -> list[str]:
    """Repository files a COPY of ``source`` puts into the image (.dockerignore applied)."""
    base = (root / source).resolve()
    paths = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()]
    rel = [p.relative_to(root).as_posix() for p in paths if ".git" not in p.relative_to(root).parts]
    return [p for p in rel if not ignored(p)]


def pip_installs(instructions: Iterable[tuple[str, str]]) -> Iterator[list[str]]:
    """The arguments of every `pip install` the Dockerfile runs."""
    for keyword, rest in instructions:
        if keyword == "RUN":
            for command in re.split(r"&&|;|\|\|", rest):
                words = shlex.split(command)
                if "install" in words and any(w.endswith("pip") for w in words[:words.index("install")]):
                    yield words[words.index("install") + 1:]


def installed_requirement_files(instructions: list[tuple[str, str]]) -> list[Path]:
    """Repository requirement files a pip install reads, mapped back through the COPY that put them there."""
    copied: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword in {"COPY", "ADD"}:
            parts = [w for w in shlex.split(rest) if not w.startswith("--")]
            for source in parts[:-1]:
                target = parts[-1]
                copied[target if not target.endswith("/") else target + PurePosixPath(source).name] = source
    files = []
    for args in pip_installs(instructions):
        for flag, value in itertools.pairwise(args):
            if flag in {"-r", "--requirement", "-c", "--constraint"}:
                assert value in copied, f"pip reads {value}, which no COPY of the Dockerfile provides"
                files.append(REPO_ROOT / copied[value])
    return files


def inline_requirements(instructions: Iterable[tuple[str, str]]) -> list[str]:
    """Distributions (or -e paths) named on a pip install line itself."""
    names = []
    for args in pip_installs(instructions):
        skip = False
        for word in args:
            if skip:
                skip = False
            elif word in {"-r", "--requirement", "-c", "--constraint"}:
                skip = True
            elif word in {"-e", "--editable"} or not word.startswith("-"):
                names.append(word)
    return names


def requirement_lines(path: Path, seen: set[Path] | None = None) -> Iterator[str]:
    """Every requirement of a requirements file, following -r / -c includes."""
    seen = seen if seen is not None else set()
    if path in seen:
        return
    seen.add(path)
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        include = re.match(r"^(?:-r|--requirement|-c|--constraint)\s*=?\s*(\S+)", line)
        if include:
            yield from requirement_lines((path.parent / include.group(1)).resolve(), seen)
        else:
            yield line


def dev_requirements(lines: Iterable[str]) -> list[str]:
    """Requirements that are test tools, editable or local-path installs (the emulator's, for one)."""
    bad = []
    for line in lines:
        if line.startswith(("-e", "--editable", ".", "/", "file:")) or " @ file:" in line:
            bad.append(line)
            continue
        name = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if name and _normalize(name.group(1)) in DEV_DISTRIBUTIONS:
            bad.append(line)
    return bad


def airflow_image_services(spec: dict[str, Any]) -> list[str]:
    """Services that run the image built from the Dockerfile (the image every Airflow component uses)."""
    services = spec["services"]
    built = {s.get("image") for s in services.values() if s.get("build")}
    return [name for name, s in services.items() if s.get("build") or s.get("image") in built]


def mounted_host_paths(service: dict[str, Any], root: Path = REPO_ROOT) -> list[Path]:
    paths = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                paths.append((root / volume["source"]).resolve())
            continue
        source = volume.split(":", 1)[0]
        if source.startswith((".", "/", "~")):
            paths.append((root / source).resolve())
    return paths


def dev_files_under(host: Path, root: Path = REPO_ROOT) -> list[str]:
    """What a mount of ``host`` shows a container that is not product: a development folder, or a product
    file importing a test tool."""
    bad = []
    for dev in DEV_DIRS:
        folder = (root / dev).resolve()
        if host == folder or folder.is_relative_to(host) or host.is_relative_to(folder):
            bad.append(f"{host} holds {dev}/")
    if bad or not host.exists():
        return bad
    for py in [host] if host.is_file() else sorted(host.rglob("*.py")):
        if py.suffix != ".py" or ".local" in py.parts:
            continue
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [])
            bad.extend(f"{py.relative_to(root)} imports {n}" for n in names if n.split(".")[0] in DEV_MODULES)
    return bad


# ---- the real files --------------------------------------------------------------------------------
def test_dockerfile_copies_no_development_file() -> None:
    instructions = dockerfile_instructions()
    sources = copied_sources(instructions)
    assert sources, "the Dockerfile copies nothing: the checks below would pass vacuously"
    files = [f for source in sources for f in files_in_context(source)]
    assert files, sources
    bad = [f for f in files if PurePosixPath(f).parts[0] in DEV_DIRS or "requirements-dev" in f]
    assert not bad, f"the Airflow image would contain development files: {bad}"


def test_image_installs_no_test_tool() -> None:
    instructions = dockerfile_instructions()
    files = installed_requirement_files(instructions)
    assert {f.name for f in files} >= {"requirements.txt", "requirements-dbt.txt"}, files
    for path in files:
        lines = list(requirement_lines(path))
        assert len(lines) > 10, f"{path.name}: {len(lines)} requirements, not a full lock?"
        assert not dev_requirements(lines), f"{path.name} would install test tools: {dev_requirements(lines)}"
    inline = inline_requirements(instructions)
    assert not dev_requirements(inline), f"the Dockerfile installs test tools: {dev_requirements(inline)}"


def test_containers_of_the_image_mount_only_product_folders() -> None:
    spec = compose()
    services = airflow_image_services(spec)
    assert "airflow-scheduler" in services and "airflow-init" in services, services
    mounted = {path for name in services for path in mounted_host_paths(spec["services"][name])}
    assert REPO_ROOT / "plugins" in mounted, mounted  # the product itself is mounted, so this checks it
    bad = [problem for path in sorted(mounted) for problem in dev_files_under(path)]
    assert not bad, f"compose would show development files to the Airflow containers: {bad}"
    assert not (REPO_ROOT / "plugins" / "marketflow" / "emulator").exists(), "the emulator is back under plugins/"


# ---- each check fails on what it must catch ---------------------------------------------------------
def test_the_checks_catch_a_development_file_tool_or_mount(tmp_path: Path) -> None:
    # COPY of the whole repository (a .dockerignore that lets everything in).
    everything = copied_sources([("COPY", ". /opt/airflow/")])
    files = files_in_context(everything[0], ignored=lambda p: p.startswith((".local/", "dbt/target/")))
    assert any(f.startswith("exchange_emulator/") for f in files) and any(f.startswith("tests/") for f in files)
    assert DOCKERIGNORE.exists()

    # nx-27017 in a requirements file reached through -r; the emulator as an editable install.
    (tmp_path / "base.txt").write_text("ccxt==4.5.90\nnx-27017==0.8.1\n    # via -r x.in\n")
    (tmp_path / "top.txt").write_text("-r base.txt\npymongo==4.20.0\n")
    assert dev_requirements(requirement_lines(tmp_path / "top.txt")) == ["nx-27017==0.8.1"]
    assert dev_requirements(["-e ./exchange_emulator", "Pytest==9.2.0", "psycopg[binary]==3.3.9"]) == [
        "-e ./exchange_emulator", "Pytest==9.2.0"]
    assert inline_requirements([("RUN", "pip install --no-cache-dir apache-airflow==3.3.2 nx-27017")]) == [
        "apache-airflow==3.3.2", "nx-27017"]

    # A mount of the repository root, of the emulator, and a product file importing a test tool.
    assert dev_files_under(REPO_ROOT)
    assert dev_files_under(REPO_ROOT / "exchange_emulator")
    plugins = tmp_path / "plugins"
    (plugins / "marketflow").mkdir(parents=True)
    (plugins / "marketflow" / "fixture.py").write_text("from exchange_emulator import EmulatorProcess\n")
    assert dev_files_under(plugins, root=tmp_path) == ["plugins/marketflow/fixture.py imports exchange_emulator"]
    spec = yaml.safe_load("services:\n  a: {build: ., image: x:1.0, volumes: ['./:/opt/airflow/repo']}\n"
                          "  b: {image: x:1.0}\n  c: {image: python:3.11}\n")
    assert airflow_image_services(spec) == ["a", "b"]
    assert mounted_host_paths(spec["services"]["a"]) == [REPO_ROOT]


@pytest.mark.parametrize("dev_dir", DEV_DIRS)
def test_every_development_folder_exists(dev_dir: str) -> None:
    # A renamed folder would silently drop out of the checks above.
    assert (REPO_ROOT / dev_dir).is_dir(), f"{dev_dir}/ is gone: update DEV_DIRS"
