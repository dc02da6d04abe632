"""Static validation of the local Docker stack.

There is no Docker engine in CI/dev sandboxes (and `docker compose` is not installed as a CLI
plugin there), so docker-compose.yaml, Dockerfile, .dockerignore and .env.example are checked by
parsing them. Compose-style ``${VAR}`` interpolation is re-implemented here and fed with the .env
that `make env` (scripts/make_env.py) writes from .env.example, i.e. the checks run against what
`make env && docker compose up` uses. .env.example itself holds no secret, so with it alone
compose refuses to start.

Airflow's own metadata is read from the installed ``airflow`` package *without importing it*
(importing Airflow initialises config and creates $AIRFLOW_HOME); only the connection-URI test
runs Airflow, in a subprocess with a throw-away AIRFLOW_HOME.
"""

from __future__ import annotations

import ast
import configparser
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from cryptography.fernet import Fernet

from scripts import topology

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
REQUIREMENTS = REPO_ROOT / "requirements.txt"
REQUIREMENTS_DBT = REPO_ROOT / "requirements-dbt.txt"
MAKE_ENV = REPO_ROOT / "scripts" / "make_env.py"
MAKEFILE = REPO_ROOT / "Makefile"

# The one definition the local Celery stack runs too (scripts/topology.py; test_celery_topology.py).
AIRFLOW_COMPONENTS = {service: " ".join(command) for service, command in topology.AIRFLOW_SERVICES.items()}
INIT_SERVICE = "airflow-init"
BACKING_SERVICES = {"postgres", "mongo", "redis"}
MONITORING_SERVICES = {"marketflow-api", "prometheus"}
EMULATOR_SERVICE = "emulator"
CONN_IDS = {"marketflow_postgres", "marketflow_mongo"}
# Directories that are bind-mounted in development and must therefore not be baked into the image.
MOUNTED_PROJECT_DIRS = {"dags", "plugins", "include", "dbt"}
# Settings that must be identical in every Airflow container for the cluster to work at all.
SHARED_AIRFLOW_SETTINGS = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW_CONN_MARKETFLOW_POSTGRES",
    "AIRFLOW_CONN_MARKETFLOW_MONGO",
    "AIRFLOW_CONN_MARKETFLOW_AIRFLOW_DB",
)
SECRET_SETTINGS = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY")
# Variables holding a credential, by name: no value in the repository, no default in compose.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$")
# A run of 32+ base64/url-safe characters mixing upper case, lower case and digits: a key or a token.
SECRET_LOOKING = re.compile(r"[A-Za-z0-9+/_=-]{32,}")


# --------------------------------------------------------------------------------------------------
# Compose-style interpolation (https://docs.docker.com/reference/compose-file/interpolation/)
# --------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.DOTALL)


class InterpolationError(ValueError):
    pass


def _interpolate_str(value: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("named"):
            return env.get(match.group("named"), "")
        braced = _BRACED.match(match.group("braced"))
        if braced is None:
            raise InterpolationError(f"invalid interpolation {match.group(0)!r} in {value!r}")
        name, op, arg = braced.group("name", "op", "arg")
        current = env.get(name)
        unset_or_empty = current is None or (op is not None and op.startswith(":") and current == "")
        if op is None:
            return current or ""
        if op.endswith("-"):
            return arg if unset_or_empty else current
        if op.endswith("?"):
            if unset_or_empty:
                raise InterpolationError(f"required variable {name} is missing: {arg}")
            return current
        return "" if unset_or_empty else arg  # ":+" / "+"

    return _TOKEN.sub(replace, value)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value (not keys), like Compose does after parsing the YAML."""
    if isinstance(node, str):
        return _interpolate_str(node, env)
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    return node


def referenced_variables(node: Any) -> Iterator[tuple[str, str | None]]:
    """Yield (variable, operator) for every interpolation in string values."""
    if isinstance(node, str):
        for match in _TOKEN.finditer(node):
            if match.group("named"):
                yield match.group("named"), None
            elif match.group("braced") is not None:
                braced = _BRACED.match(match.group("braced"))
                assert braced is not None, f"invalid interpolation {match.group(0)!r}"
                yield braced.group("name"), braced.group("op")
    elif isinstance(node, dict):
        for value in node.values():
            yield from referenced_variables(value)
    elif isinstance(node, list):
        for value in node:
            yield from referenced_variables(value)


def parse_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        assert sep, f"{path.name}:{lineno}: not KEY=VALUE: {line!r}"
        key = key.removeprefix("export ").strip()
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}:{lineno}: bad key {key!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        assert key not in env, f"{path.name}:{lineno}: {key} defined twice"
        env[key] = value
    return env


# --------------------------------------------------------------------------------------------------
# Loaded artefacts
# --------------------------------------------------------------------------------------------------
@cache
def raw_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yaml must be a mapping"
    return data


@cache
def env_example() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


def run_make_env(env_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MAKE_ENV), "--env-file", str(env_file), "--example", str(ENV_EXAMPLE)],
                          capture_output=True, text=True, timeout=60, check=False)


@cache
def generated_env() -> dict[str, str]:
    """The .env `make env` writes (into a throw-away directory, never the repo's .env)."""
    directory = Path(tempfile.mkdtemp(prefix="marketflow-env-"))
    try:
        res = run_make_env(directory / ".env")
        assert res.returncode == 0, f"scripts/make_env.py failed:\n{res.stdout}{res.stderr}"
        return parse_env_file(directory / ".env")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def secret_variables() -> set[str]:
    return {name for name in env_example() if SECRET_NAME.search(name)}


@cache
def compose() -> dict[str, Any]:
    return interpolate(raw_compose(), generated_env())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def service_env(name: str, *, raw: bool = False) -> dict[str, str]:
    source = raw_compose() if raw else compose()
    env = source["services"][name].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_list(name: str) -> list[str]:
    command = services()[name].get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def depends_on(name: str) -> dict[str, str]:
    deps = services()[name].get("depends_on") or {}
    if isinstance(deps, list):
        return {dep: "service_started" for dep in deps}
    return {dep: (spec or {}).get("condition", "service_started") for dep, spec in deps.items()}


def one_shot_services() -> set[str]:
    return {
        dep
        for name in services()
        for dep, condition in depends_on(name).items()
        if condition == "service_completed_successfully"
    }


def bind_mounts(name: str) -> list[tuple[str, str]]:
    """(host path as written, container path) for every bind mount of a service."""
    mounts = []
    for volume in services()[name].get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, _, rest = volume.partition(":")
        if source.startswith((".", "/", "~")):
            mounts.append((source, rest.split(":")[0]))
    return mounts


def named_volume_mounts(name: str) -> list[tuple[str, str]]:
    mounts = []
    for volume in services()[name].get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, _, rest = volume.partition(":")
        if rest and not source.startswith((".", "/", "~")):
            mounts.append((source, rest.split(":")[0]))
    return mounts


def host_path_for(service: str, container_path: str) -> Path | None:
    """Repo path backing ``container_path`` through the service's bind mounts (longest prefix)."""
    target = PurePosixPath(container_path)
    best: tuple[int, Path] | None = None
    for source, mount_point in bind_mounts(service):
        mount = PurePosixPath(mount_point)
        if target == mount or mount in target.parents:
            host = (REPO_ROOT / source).resolve() / target.relative_to(mount)
            if best is None or len(mount.parts) > best[0]:
                best = (len(mount.parts), host)
    return None if best is None else best[1]


def init_script() -> str:
    command = command_list(INIT_SERVICE)
    assert command[:2] == ["bash", "-c"], f"{INIT_SERVICE} should run `bash -c <script>`: {command[:2]}"
    return command[2]


# --------------------------------------------------------------------------------------------------
# Installed Airflow metadata (read from files, Airflow is not imported)
# --------------------------------------------------------------------------------------------------
@cache
def airflow_package_dir() -> Path:
    spec = importlib.util.find_spec("airflow")  # top-level find_spec does not execute the package
    assert spec is not None and spec.submodule_search_locations, "apache-airflow is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def _provider_config_sections() -> dict[str, set[str]]:
    """[section] -> options declared by installed providers (get_provider_info()['config'])."""
    sections: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        for entry_point in dist.entry_points:
            if entry_point.group != "apache_airflow_provider":
                continue
            module_file = dist.locate_file(entry_point.module.replace(".", "/") + ".py")
            tree = ast.parse(Path(str(module_file)).read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef) and node.name == entry_point.attr:
                    returns = [n for n in ast.walk(node) if isinstance(n, ast.Return) and n.value]
                    # Only the dict *keys* are needed, so values such as `[__version__]` are fine.
                    config = _dict_node_get(returns[0].value, "config")
                    for section, body in _dict_node_items(config):
                        options = _dict_node_get(body, "options")
                        sections.setdefault(section, set()).update(
                            key for key, _ in _dict_node_items(options)
                        )
    return sections


def _dict_node_items(node: ast.AST | None) -> list[tuple[str, ast.AST]]:
    if not isinstance(node, ast.Dict):
        return []
    return [
        (key.value, value)
        for key, value in zip(node.keys, node.values, strict=True)
        if isinstance(key, ast.Constant) and isinstance(key.value, str)
    ]


def _dict_node_get(node: ast.AST | None, wanted: str) -> ast.AST | None:
    return next((value for key, value in _dict_node_items(node) if key == wanted), None)


@cache
def airflow_config_options() -> dict[str, set[str]]:
    """Every option the installed Airflow knows: core config.yml, provider fallback defaults (the
    [celery] defaults ship with core even when the Celery provider is not installed locally) and the
    config of every installed provider."""
    templates = airflow_package_dir() / "config_templates"
    options: dict[str, set[str]] = {}
    core = yaml.safe_load((templates / "config.yml").read_text())
    for section, body in core.items():
        options.setdefault(section, set()).update(body.get("options", {}))
    fallback = configparser.ConfigParser(interpolation=None)
    fallback.read(templates / "provider_config_fallback_defaults.cfg")
    for section in fallback.sections():
        options.setdefault(section, set()).update(fallback.options(section))
    for section, names in _provider_config_sections().items():
        options.setdefault(section, set()).update(names)
    return options


# --------------------------------------------------------------------------------------------------
# Dockerfile parsing
# --------------------------------------------------------------------------------------------------
@cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined, comments dropped and ARG defaults
    (global and stage-local) substituted."""
    logical: list[str] = []
    buffer = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    assert not buffer, "Dockerfile ends with a dangling line continuation"

    args: dict[str, str] = {}
    global_args: dict[str, str] = {}
    seen_from = False
    instructions = []

    def substitute(text: str) -> str:
        return re.sub(
            r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)",
            lambda m: args.get(m.group(1) or m.group(2), m.group(0)),
            text,
        )

    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG":
            name, sep, default = rest.partition("=")
            if sep:
                args[name] = substitute(default.strip().strip('"'))
            elif name in global_args:  # re-declared after FROM: inherits the global default
                args[name] = global_args[name]
            if not seen_from:
                global_args[name] = args.get(name, "")
        elif keyword == "FROM":
            rest = substitute(rest)
            seen_from = True
            args = {}  # global ARGs are not visible inside a stage unless re-declared
        else:
            rest = substitute(rest)
        instructions.append((keyword, rest))
    return instructions


def dockerfile_base_image() -> str:
    froms = [rest.split()[0] for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) == 1, f"expected a single-stage Dockerfile, got FROM {froms}"
    return froms[0]


def dockerfile_run_text() -> str:
    return "\n".join(rest for keyword, rest in dockerfile_instructions() if keyword == "RUN")


def image_tag(image: str) -> str | None:
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def requirement_pin(path: Path, distribution: str) -> str:
    assert path.exists(), f"{path.name} is missing (expected at {path})"
    normalized = distribution.lower().replace("_", "-")
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        if match and match.group(1).lower().replace("_", "-") == normalized:
            return match.group(3)
    raise AssertionError(f"{path.name} has no `{distribution}==<version>` pin")


def dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore semantics, simplified: patterns in order, last match wins, `!` re-includes."""
    excluded = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [path, *(str(parent) for parent in PurePosixPath(path).parents if str(parent) != ".")]
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            excluded = not negate
    return excluded


# ==================================================================================================
# Tests: compose structure
# ==================================================================================================
def test_compose_parses_with_services_and_no_version_key() -> None:
    data = raw_compose()
    assert "version" not in data, "the Compose spec dropped the top-level `version:` key"
    assert isinstance(data.get("services"), dict) and data["services"], "no services defined"
    assert "x-airflow-common" in data, "the shared x-airflow-common anchor is missing"


def test_expected_services_exist() -> None:
    expected = set(AIRFLOW_COMPONENTS) | BACKING_SERVICES | MONITORING_SERVICES | {INIT_SERVICE, EMULATOR_SERVICE}
    missing = expected - set(services())
    assert not missing, f"missing services: {sorted(missing)}"


def test_every_interpolated_variable_is_documented_in_env_example() -> None:
    referenced = {name for name, _ in referenced_variables(raw_compose())}
    undocumented = referenced - set(env_example())
    assert not undocumented, f"variables used in docker-compose.yaml but not in .env.example: {undocumented}"


def test_compose_interpolates_with_the_generated_env() -> None:
    try:
        interpolate(raw_compose(), generated_env())
    except InterpolationError as exc:
        pytest.fail(f"`make env && docker compose config` would fail: {exc}")


def test_compose_refuses_to_start_without_the_generated_secrets() -> None:
    with pytest.raises(InterpolationError, match="make env"):
        interpolate(raw_compose(), env_example())  # `cp .env.example .env` is not enough any more
    for name in sorted(secret_variables()):
        env = {**generated_env(), name: ""}
        with pytest.raises(InterpolationError, match=rf"required variable {name} is missing: run make env"):
            interpolate(raw_compose(), env)


def test_secrets_are_required_from_env_and_not_hardcoded() -> None:
    for name in SECRET_SETTINGS:
        raw = service_env("airflow-scheduler", raw=True)[name]
        refs = list(referenced_variables(raw))
        assert len(refs) == 1 and refs[0][1] in (":?", "?") and raw.startswith("${") and raw.endswith("}"), (
            f"{name} must be exactly ${{VAR:?message}} (no default, nothing hard-coded), got {raw!r}"
        )
        variable = refs[0][0]
        assert variable in env_example() and not env_example()[variable], f".env.example must leave {variable} empty"
        assert generated_env().get(variable), f"`make env` must generate {variable}"
    Fernet(service_env("airflow-scheduler")["AIRFLOW__CORE__FERNET_KEY"].encode())  # raises if malformed


def test_every_credential_is_required_and_never_has_a_default() -> None:
    from scripts import make_env

    assert secret_variables() == set(make_env.GENERATED), "`make env` must generate exactly the secrets compose needs"
    uses = [(name, op) for name, op in referenced_variables(raw_compose()) if SECRET_NAME.search(name)]
    assert {name for name, _ in uses} == secret_variables()
    defaulted = sorted({name for name, op in uses if op != ":?"})
    assert not defaulted, f"credentials with a default or optional in docker-compose.yaml: {defaulted}"


def test_no_usable_secret_in_the_repository() -> None:
    for name in sorted(secret_variables()):
        assert env_example()[name] == "", f".env.example gives {name} a value: everyone who reads the repo has it"
    for path in (ENV_EXAMPLE, COMPOSE_FILE, DOCKERFILE, REPO_ROOT / "dbt" / "profiles.yml",
                 *sorted((REPO_ROOT / "include" / "config").glob("*.yml"))):
        for token in SECRET_LOOKING.findall(path.read_text()):
            mixed = all(re.search(cls, token) for cls in ("[a-z]", "[A-Z]", "[0-9]"))
            assert not mixed, f"{path.name}: {token!r} looks like a key or token"
    # no Fernet key anywhere in the tracked files (the former .env.example shipped a working one)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.split("\0")
    for name in filter(None, tracked):
        path = REPO_ROOT / name
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        text = path.read_bytes().decode("utf-8", "ignore")
        for candidate in re.findall(r"(?<![A-Za-z0-9_=-])[A-Za-z0-9_-]{43}=(?![A-Za-z0-9_=-])", text):
            with pytest.raises(ValueError):
                Fernet(candidate.encode())
                raise AssertionError(f"{name}: {candidate!r} is a usable Fernet key")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT, check=False)
    assert ignored.returncode == 0, ".env must be git-ignored"


def test_make_env_generates_strong_distinct_secrets(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / ".env", tmp_path / "b" / ".env"
    for path in (first, second):
        path.parent.mkdir()
        res = run_make_env(path)
        assert res.returncode == 0 and "wrote" in res.stdout, res.stderr
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    a, b = parse_env_file(first), parse_env_file(second)
    assert set(a) == set(env_example()) == set(b)
    for name, value in env_example().items():
        if name in secret_variables():
            assert len(a[name]) >= 24 and re.fullmatch(r"[A-Za-z0-9_-]+=?", a[name]), (name, a[name])
            assert a[name] != b[name], f"{name}: two runs generated the same value"
        else:
            assert a[name] == value, f"{name}: make env changed a setting that is not a secret"
    assert len({a[name] for name in secret_variables()}) == len(secret_variables()), "a value used twice"
    Fernet(a["AIRFLOW_FERNET_KEY"].encode())


def test_make_env_never_overwrites_an_existing_env(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    assert run_make_env(path).returncode == 0
    mine = {**parse_env_file(path), "POSTGRES_PASSWORD": "kept-as-I-set-it-9f3Q"}
    del mine["MONGO_ROOT_PASSWORD"]  # as if the .env predates MongoDB auth
    path.write_text("".join(f"{k}={v}\n" for k, v in mine.items()))
    res = run_make_env(path)
    assert res.returncode == 0 and "appended generated MONGO_ROOT_PASSWORD" in res.stdout, res.stderr
    after = parse_env_file(path)
    assert {k: v for k, v in after.items() if k != "MONGO_ROOT_PASSWORD"} == mine
    assert len(after["MONGO_ROOT_PASSWORD"]) >= 24
    # a guessable value is reported, not replaced
    path.write_text(path.read_text().replace(f"AIRFLOW_ADMIN_PASSWORD={mine['AIRFLOW_ADMIN_PASSWORD']}",
                                             "AIRFLOW_ADMIN_PASSWORD=admin"))
    before = path.read_text()
    res = run_make_env(path)
    assert res.returncode == 1 and "AIRFLOW_ADMIN_PASSWORD holds a published or guessable value" in res.stderr
    assert path.read_text() == before


def test_make_env_reports_a_value_that_would_break_a_connection_uri(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    assert run_make_env(path).returncode == 0
    text = path.read_text()
    good = parse_env_file(path)["MARKETFLOW_PG_PASSWORD"]
    path.write_text(text.replace(f"MARKETFLOW_PG_PASSWORD={good}", "MARKETFLOW_PG_PASSWORD=p@ss/word"))
    res = run_make_env(path)
    assert res.returncode == 1, res.stdout
    assert "MARKETFLOW_PG_PASSWORD has characters that break the connection URIs" in res.stderr, res.stderr
    path.write_text(text)  # the generated values pass
    assert run_make_env(path).returncode == 0


def test_airflow_init_refuses_credentials_that_would_break_a_connection_uri(tmp_path: Path) -> None:
    """The init's first step, run as written in the compose file: a reserved character in a value
    compose pastes into a URI stops the init (and with it every Airflow service) with a message."""
    snippets = re.findall(r"python3? - <<'(\w+)'\n(.*?)\n\1$", init_script(), re.DOTALL | re.MULTILINE)
    check = next(code for _, code in snippets if "URI" in code and "sys.exit" in code)
    generated = tmp_path / ".env"
    assert run_make_env(generated).returncode == 0
    env = {**os.environ, **parse_env_file(generated)}

    def run(**override: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", check], env={**env, **override}, capture_output=True,
                              text=True, check=False)

    assert run().returncode == 0
    for name, value in (("MARKETFLOW_PG_PASSWORD", "a@b"), ("POSTGRES_PASSWORD", "x/y?z"),
                        ("MARKETFLOW_MONGO_USER", "me:you"), ("MARKETFLOW_MONGO_PASSWORD", "100%")):
        res = run(**{name: value})
        assert res.returncode == 1 and name in res.stderr and "Fix:" in res.stderr, (name, res.stderr)


def test_make_env_target_runs_the_generator() -> None:
    # Under CI's own make (MAKELEVEL set) a sub-make prints "Entering directory" lines: not ours.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    dry = subprocess.run(["make", "--no-print-directory", "-n", "env"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, check=False)
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"python3? scripts/make_env\.py\s*$", dry.stdout.strip()), dry.stdout
    assert re.search(r"^\.PHONY:.*\benv\b", MAKEFILE.read_text(), re.MULTILINE), "env must be .PHONY"


def test_mongo_runs_with_auth_and_every_client_logs_in_as_the_pipeline_user() -> None:
    env = generated_env()
    mongo = service_env("mongo")
    assert mongo["MONGO_INITDB_ROOT_USERNAME"] == env["MONGO_ROOT_USERNAME"]
    assert mongo["MONGO_INITDB_ROOT_PASSWORD"] == env["MONGO_ROOT_PASSWORD"]
    user, password = env["MARKETFLOW_MONGO_USER"], env["MARKETFLOW_MONGO_PASSWORD"]
    assert user != env["MONGO_ROOT_USERNAME"], "the pipeline must not log in as root"
    clients = 0
    for name in services():
        for key, value in service_env(name).items():
            if key in ("MONGO_URI", "AIRFLOW_CONN_MARKETFLOW_MONGO") or value.startswith(("mongodb://", "mongo://")):
                url = urlsplit(value)
                assert (unquote(url.username or ""), unquote(url.password or "")) == (user, password), (name, key)
                assert parse_qs(url.query).get("authSource") == ["admin"], f"{name}: {key} lacks authSource=admin"
                assert (url.hostname, url.port, url.path) == ("mongo", 27017, "/marketflow"), (name, key)
                clients += 1
            # the root password reaches only the mongo server and the one-shot init
            if name not in ("mongo", INIT_SERVICE):
                assert env["MONGO_ROOT_PASSWORD"] not in value, f"{name}: {key} carries the MongoDB root password"
    assert clients >= 2 * len(AIRFLOW_COMPONENTS)
    # airflow-init creates (or re-passwords) that user, with the root credentials the server was given
    init = service_env(INIT_SERVICE)
    assert (init["MONGO_ROOT_USERNAME"], init["MONGO_ROOT_PASSWORD"]) == (mongo["MONGO_INITDB_ROOT_USERNAME"],
                                                                          mongo["MONGO_INITDB_ROOT_PASSWORD"])
    assert (init["MARKETFLOW_MONGO_USER"], init["MARKETFLOW_MONGO_PASSWORD"]) == (user, password)
    script = init_script()
    assert re.search(r'"updateUser" if .* else "createUser"', script), "init must create or update the user"
    assert 'pwd=env["MARKETFLOW_MONGO_PASSWORD"]' in script
    assert script.index("createUser") < script.index("python -m marketflow.cli apply-ddl")


def test_no_admin_admin_login() -> None:
    init = service_env(INIT_SERVICE)
    assert init["AIRFLOW_ADMIN_PASSWORD"] == generated_env()["AIRFLOW_ADMIN_PASSWORD"]
    assert init["AIRFLOW_ADMIN_PASSWORD"] not in {"admin", init["AIRFLOW_ADMIN_USERNAME"]}
    raw = service_env(INIT_SERVICE, raw=True)["AIRFLOW_ADMIN_PASSWORD"]
    assert [op for _, op in referenced_variables(raw)] == [":?"], raw


def test_depends_on_targets_exist_and_conditions_are_valid() -> None:
    all_services = services()
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name in all_services:
        for dep, condition in depends_on(name).items():
            assert dep in all_services, f"{name} depends on unknown service {dep!r}"
            assert condition in valid, f"{name} -> {dep}: invalid condition {condition!r}"
            if condition == "service_healthy":
                assert "healthcheck" in all_services[dep], f"{name} waits for {dep} healthy, no healthcheck"
            if not all_services[name].get("profiles"):
                assert not all_services[dep].get("profiles"), (
                    f"{name} (always on) depends on {dep}, which only exists in profiles "
                    f"{all_services[dep]['profiles']}"
                )


def test_images_are_pinned() -> None:
    images = {name: spec.get("image") for name, spec in services().items()}
    images["Dockerfile FROM"] = dockerfile_base_image()
    for name, image in images.items():
        assert image, f"{name} has no image"
        tag = image_tag(image)
        assert tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and "latest" not in tag.split("-"), f"{name}: image {image!r} uses latest"
        assert re.search(r"\d+\.\d+", tag), f"{name}: tag of {image!r} is not a major.minor version"


def test_long_running_services_have_healthchecks() -> None:
    one_shot = one_shot_services()
    assert INIT_SERVICE in one_shot
    for name, spec in services().items():
        if name in one_shot:
            assert spec.get("restart") in (None, "no"), f"one-shot {name} must not restart"
            continue
        healthcheck = spec.get("healthcheck") or {}
        test = healthcheck.get("test")
        assert test and not healthcheck.get("disable"), f"{name} has no healthcheck"
        assert (test if isinstance(test, str) else test[0]) != "NONE", f"{name} disables its healthcheck"


def test_bind_mounted_host_paths_exist_in_repo() -> None:
    missing = set()
    for name in services():
        for source, _ in bind_mounts(name):
            host = (REPO_ROOT / source).resolve()
            assert REPO_ROOT in (host, *host.parents), f"{name} mounts {source}, outside the repo"
            if not host.exists():
                missing.add(source)
    assert not missing, f"bind-mounted paths missing from the repo: {sorted(missing)}"


def test_named_volumes_are_declared_and_hold_database_data() -> None:
    declared = set(raw_compose().get("volumes") or {})
    for name in services():
        for volume, _ in named_volume_mounts(name):
            assert volume in declared, f"{name} uses undeclared volume {volume!r}"
    data_dirs = {"postgres": "/var/lib/postgresql/data", "mongo": "/data/db"}
    for name, data_dir in data_dirs.items():
        assert data_dir in {target for _, target in named_volume_mounts(name)}, (
            f"{name} must keep {data_dir} on a named volume"
        )


# ==================================================================================================
# Tests: Airflow configuration
# ==================================================================================================
def test_airflow_env_vars_name_real_config_options() -> None:
    known = airflow_config_options()
    unknown = set()
    for name in services():
        for key in service_env(name):
            match = re.fullmatch(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", key)
            if key.startswith("AIRFLOW__"):
                assert match, f"{name}: malformed Airflow config variable {key}"
            if not match:
                continue
            section, option = match.group(1).lower(), match.group(2).lower()
            for suffix in ("_cmd", "_secret"):  # AIRFLOW__X__Y_CMD / _SECRET variants
                if option not in known.get(section, set()) and option.endswith(suffix):
                    option = option.removesuffix(suffix)
            if option not in known.get(section, set()):
                unknown.add(f"{name}: {key} -> [{section}] {option}")
    assert not unknown, "not options of the installed Airflow:\n" + "\n".join(sorted(unknown))


def test_airflow_components_share_the_critical_settings() -> None:
    components = [*AIRFLOW_COMPONENTS, INIT_SERVICE]
    reference = service_env(components[0])
    for name in components:
        env = service_env(name)
        for key in SHARED_AIRFLOW_SETTINGS:
            assert env.get(key), f"{name} lacks {key}"
            assert env[key] == reference[key], f"{name}: {key} differs from {components[0]}"
        assert services()[name]["image"] == services()[components[0]]["image"], f"{name} uses another image"


def test_core_airflow_settings() -> None:
    env = service_env("airflow-scheduler")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    assert 1 <= int(env["AIRFLOW__CORE__PARALLELISM"]) <= 16, "keep parallelism small for a laptop stack"
    # ... but enough for every pool of the shipped markets file at once: else history tasks can hold
    # every slot while a minute ingest waits (MarketflowConfig.required_parallelism)
    from marketflow.config import load_config

    needed = load_config(REPO_ROOT / "include" / "config" / "markets.yml", env={}).required_parallelism()
    assert int(env["AIRFLOW__CORE__PARALLELISM"]) >= needed
    concurrency = service_env("airflow-worker").get("AIRFLOW__CELERY__WORKER_CONCURRENCY")
    assert int(concurrency or env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]) >= needed
    assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == "postgres"
    assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).path == "/airflow"
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"

    url = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    # The api-server listens on [api] port (default 8080) inside its container.
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "http",
        "airflow-apiserver",
        8080,
        "/execution/",
    )

    auth_manager = env["AIRFLOW__CORE__AUTH_MANAGER"]
    module, _, cls = auth_manager.rpartition(".")
    module_file = airflow_package_dir().parent.joinpath(*module.split(".")).with_suffix(".py")
    assert module_file.exists(), f"auth manager module {module} not in the installed Airflow"
    assert re.search(rf"^class {cls}\b", module_file.read_text(), re.MULTILINE), f"{cls} not in {module}"
    if cls == "SimpleAuthManager":
        users = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")
        assert any(user.split(":")[1] == "admin" for user in users), "no admin user configured"
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"], "passwords file must be shared"


def test_airflow_component_commands_and_startup_order() -> None:
    for name, command in AIRFLOW_COMPONENTS.items():
        actual = command_list(name)
        if name == topology.WORKER_SERVICE:  # then its --queues (tests/compose/test_celery_topology.py)
            actual = actual[:len(command.split())]
        assert actual == command.split(), f"{name} should run `airflow {command}`"
        deps = depends_on(name)
        assert deps.get(INIT_SERVICE) == "service_completed_successfully", f"{name} must wait for init"
        assert {"postgres", "redis"} <= {dep for dep, cond in deps.items() if cond == "service_healthy"}
    apiserver = services()["airflow-apiserver"]
    probe = " ".join(apiserver["healthcheck"]["test"])
    assert re.search(r"localhost:8080/api/v2/(version|monitor/health)\b", probe), probe
    assert any(str(port).endswith(":8080") for port in apiserver.get("ports", [])), "api-server not published"


def test_airflow_connections_are_wired_to_the_contract_conn_ids() -> None:
    env = service_env("airflow-worker")
    conn_ids = {key.removeprefix("AIRFLOW_CONN_").lower() for key in env if key.startswith("AIRFLOW_CONN_")}
    assert conn_ids >= CONN_IDS, f"missing connections: {CONN_IDS - conn_ids}"

    pg = urlsplit(env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"])
    assert pg.scheme in {"postgres", "postgresql"}, pg.scheme
    assert pg.hostname == "postgres" and (pg.port or 5432) == 5432
    assert pg.path == "/marketflow", "marketflow_postgres must point at the `marketflow` warehouse DB"
    assert unquote(pg.username or "") == env["MARKETFLOW_PG_USER"]
    assert unquote(pg.password or "") == env["MARKETFLOW_PG_PASSWORD"]

    mongo = urlsplit(env["AIRFLOW_CONN_MARKETFLOW_MONGO"])
    assert mongo.scheme == "mongo", "the Mongo provider's conn_type is `mongo`"
    assert mongo.hostname == "mongo" and (mongo.port or 27017) == 27017 and mongo.path == "/marketflow"

    mongo_uri = urlsplit(env["MONGO_URI"])
    assert mongo_uri.scheme == "mongodb"
    assert (mongo_uri.hostname, mongo_uri.port, mongo_uri.path) == (mongo.hostname, mongo.port, mongo.path)

    for url in (pg, mongo, mongo_uri):
        assert url.hostname in services(), f"{url.hostname} is not a compose service"


def test_airflow_parses_the_connection_uris(tmp_path: Path) -> None:
    """Let the installed Airflow parse the URIs (isolated AIRFLOW_HOME, so nothing leaks)."""
    env = service_env("airflow-worker")
    script = (
        "import json, os\n"
        "from airflow.models.connection import Connection\n"
        "out = {}\n"
        "for conn_id in ('marketflow_postgres', 'marketflow_mongo', 'marketflow_airflow_db'):\n"
        "    c = Connection(conn_id=conn_id, uri=os.environ['URI_' + conn_id.upper()])\n"
        "    out[conn_id] = [c.conn_type, c.host, c.port, c.schema, c.login, c.password, c.extra_dejson]\n"
        "from airflow.providers.mongo.hooks.mongo import MongoHook\n"
        "from pymongo import MongoClient\n"
        "os.environ['AIRFLOW_CONN_MARKETFLOW_MONGO'] = os.environ['URI_MARKETFLOW_MONGO']\n"
        "hook = MongoHook(mongo_conn_id='marketflow_mongo')\n"
        "creds = MongoClient(hook.uri, connect=False, **hook.extras).options.pool_options._credentials\n"
        "out['client'] = [creds.username, creds.password, creds.source]\n"
        "print('RESULT=' + json.dumps(out))\n"
    )
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    child_env.update(
        AIRFLOW_HOME=str(tmp_path),
        URI_MARKETFLOW_POSTGRES=env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"],
        URI_MARKETFLOW_MONGO=env["AIRFLOW_CONN_MARKETFLOW_MONGO"],
        URI_MARKETFLOW_AIRFLOW_DB=env["AIRFLOW_CONN_MARKETFLOW_AIRFLOW_DB"],
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT="))
    parsed = json.loads(line.removeprefix("RESULT="))
    assert parsed["marketflow_postgres"][:6] == [
        "postgres",
        "postgres",
        5432,
        "marketflow",
        env["MARKETFLOW_PG_USER"],
        env["MARKETFLOW_PG_PASSWORD"],
    ]
    generated = generated_env()
    assert parsed["marketflow_mongo"] == ["mongo", "mongo", 27017, "marketflow", generated["MARKETFLOW_MONGO_USER"],
                                          generated["MARKETFLOW_MONGO_PASSWORD"], {"authSource": "admin"}]
    # what the Mongo provider's hook hands to pymongo: the pipeline user, authenticated against `admin`
    assert parsed["client"] == [generated["MARKETFLOW_MONGO_USER"], generated["MARKETFLOW_MONGO_PASSWORD"], "admin"]
    # the maintenance DAG's `airflow db clean` reaches the metadata DB the components use
    meta = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert parsed["marketflow_airflow_db"][:6] == ["postgres", meta.hostname, meta.port, meta.path.lstrip("/"),
                                                   unquote(meta.username), unquote(meta.password)]


def test_marketflow_paths_map_to_repo_files() -> None:
    env = service_env("airflow-worker")
    for variable, expected in {
        "MARKETFLOW_CONFIG": "include/config/markets.yml",
        "MARKETFLOW_DBT_PROJECT_DIR": "dbt",
    }.items():
        host = host_path_for("airflow-worker", env[variable])
        assert host == REPO_ROOT / expected, f"{variable}={env[variable]} is not backed by ./{expected}"
        assert host.exists(), f"{variable}: ./{expected} does not exist in the repo"
    assert (REPO_ROOT / "dbt" / "dbt_project.yml").exists(), "dbt/dbt_project.yml missing"

    pythonpath = env["PYTHONPATH"].split(":")
    backed = [host_path_for("airflow-worker", entry) for entry in pythonpath]
    assert REPO_ROOT / "plugins" in backed, "PYTHONPATH must contain the mounted ./plugins"
    assert (REPO_ROOT / "plugins" / "marketflow" / "__init__.py").exists(), "plugins/marketflow missing"

    env_pg = {k: v for k, v in env.items() if k.startswith("MARKETFLOW_PG_")}
    assert env_pg["MARKETFLOW_PG_HOST"] == "postgres" and env_pg["MARKETFLOW_PG_PORT"] == "5432"
    assert env_pg["MARKETFLOW_PG_DATABASE"] == "marketflow"
    assert set(env_pg) == {
        f"MARKETFLOW_PG_{part}" for part in ("HOST", "PORT", "USER", "PASSWORD", "DATABASE")
    }


def test_markets_config_variables_are_passed_to_the_containers() -> None:
    """include/config/*.yml use ${VAR} / ${VAR:default}; every VAR without a default must be in the
    environment of every Airflow container, or loading that markets file fails there."""
    files = sorted((REPO_ROOT / "include" / "config").glob("*.y*ml"))
    assert files, "include/config/ has no markets files"
    for path in files:
        required = {
            name
            for value in _string_values(yaml.safe_load(path.read_text()))
            for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value)
        }
        for name in [*AIRFLOW_COMPONENTS, INIT_SERVICE]:
            missing = required - set(service_env(name))
            assert not missing, f"{path.name} needs {sorted(missing)}, not set in {name}"


def _string_values(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _string_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from _string_values(value)


# ==================================================================================================
# Tests: airflow-init
# ==================================================================================================
def test_init_runs_the_setup_steps_in_order() -> None:
    script = init_script()
    steps = [
        "CREATE DATABASE",
        "airflow db migrate",
        "python -m marketflow.cli apply-ddl",
        "python -m marketflow.cli pools --format json > /tmp/pools.json",
        "airflow pools import /tmp/pools.json",
    ]
    positions = []
    for step in steps:
        assert step in script, f"{INIT_SERVICE} does not run `{step}`"
        positions.append(script.index(step))
    assert positions == sorted(positions), f"{INIT_SERVICE} steps out of order: {steps}"
    # cosmos reads dbt/target/manifest.json while the DAGs are parsed: produce it before they are.
    assert re.search(r'\$\{?MARKETFLOW_DBT_EXECUTABLE\}?"? parse\b', script), "init must run `dbt parse`"
    assert "set -euo pipefail" in script, "init must stop at the first failing step"
    assert services()[INIT_SERVICE].get("user") == "0:0" or "chown" not in script


def test_init_script_is_valid_bash_and_python() -> None:
    script = init_script()
    bash = shutil.which("bash")
    assert bash, "bash is required to syntax-check the init script"
    proc = subprocess.run([bash, "-n", "-c", script], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    snippets = re.findall(r"python3? - <<'(\w+)'\n(.*?)\n\1$", script, re.DOTALL | re.MULTILINE)
    assert snippets, "expected inline `python - <<'PY'` snippets (warehouse DB bootstrap)"
    init_env = service_env(INIT_SERVICE)
    for _, code in snippets:
        tree = ast.parse(code)  # raises SyntaxError with the offending line
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                target = ast.unparse(node.value)
                if target in {"env", "os.environ"} and isinstance(node.slice.value, str):
                    assert node.slice.value in init_env, f"init snippet reads unset env {node.slice.value}"


# ==================================================================================================
# Tests: emulator
# ==================================================================================================
def test_emulator_is_optional_and_follows_the_contract() -> None:
    emulator = services()[EMULATOR_SERVICE]
    assert emulator.get("profiles") == ["offline"]
    assert command_list(EMULATOR_SERVICE) == [
        "python", "-m", "exchange_emulator",
        "--data-dir", "/opt/emulator/sample_data",
        "--port", "8765", "--host", "0.0.0.0",
    ]  # fmt: skip
    data_dir = host_path_for(EMULATOR_SERVICE, "/opt/emulator/sample_data")
    assert data_dir == REPO_ROOT / "include" / "sample_data" and data_dir.is_dir(), data_dir
    # `python -m` finds the package in the working directory, where its mount is.
    package = host_path_for(EMULATOR_SERVICE, f"{emulator['working_dir']}/exchange_emulator")
    assert package == REPO_ROOT / "exchange_emulator" and (package / "__main__.py").exists(), package
    # A test tool on a plain Python image: neither the Airflow image nor the product's mounts.
    assert "build" not in emulator and emulator["image"] != services()[INIT_SERVICE]["image"]
    assert host_path_for(EMULATOR_SERVICE, "/opt/airflow/plugins") is None


# ==================================================================================================
# Tests: Dockerfile / .dockerignore
# ==================================================================================================
def test_dockerfile_base_image_matches_airflow_pin() -> None:
    base = dockerfile_base_image()
    assert base.startswith("apache/airflow:"), base
    match = re.fullmatch(r"(\d+\.\d+\.\d+)-python(\d+\.\d+)", image_tag(base) or "")
    assert match, f"base image tag should be <airflow version>-python<X.Y>: {base}"
    assert match.group(1) == requirement_pin(REQUIREMENTS, "apache-airflow"), (
        f"Dockerfile base {base} != apache-airflow pin in requirements.txt"
    )
    assert match.group(2) == "3.11", "the project targets Python 3.11"


def test_dockerfile_dbt_venv_matches_dbt_executable() -> None:
    venvs = re.findall(r"python3? -m venv\s+\"?([^\s\"]+)", dockerfile_run_text())
    assert len(venvs) == 1, f"expected exactly one virtualenv in the Dockerfile, got {venvs}"
    venv = venvs[0]
    executable = service_env("airflow-worker")["MARKETFLOW_DBT_EXECUTABLE"]
    assert executable == f"{venv}/bin/dbt", f"MARKETFLOW_DBT_EXECUTABLE={executable}, dbt venv is {venv}"
    installs_dbt = rf"{re.escape(venv)}/bin/pip\"? install [^\n]*-r \S*requirements-dbt\.txt"
    assert re.search(installs_dbt, dockerfile_run_text()), "requirements-dbt.txt must go into the dbt venv"
    env_lines = [rest for keyword, rest in dockerfile_instructions() if keyword == "ENV"]
    assert any(f"MARKETFLOW_DBT_EXECUTABLE={executable}" in line for line in env_lines), (
        "the image should default MARKETFLOW_DBT_EXECUTABLE to the same path"
    )
    requirement_pin(REQUIREMENTS_DBT, "dbt-core")
    requirement_pin(REQUIREMENTS_DBT, "dbt-postgres")


def test_dockerfile_copies_only_unmounted_existing_files() -> None:
    sources = []
    for keyword, rest in dockerfile_instructions():
        if keyword in {"COPY", "ADD"}:
            parts = [part for part in shlex.split(rest) if not part.startswith("--")]
            sources.extend(parts[:-1])
    assert sources, "Dockerfile copies nothing (requirements files expected)"
    assert "requirements.txt" in sources and "requirements-dbt.txt" in sources
    for source in sources:
        parts = PurePosixPath(source).parts
        assert parts and parts[0] not in MOUNTED_PROJECT_DIRS, f"{source} is bind-mounted; do not bake it in"
        assert (REPO_ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repo"
        assert not dockerignore_excludes(source), f".dockerignore excludes {source}, which the build copies"
    for secret in (".env", ".local", ".git"):
        assert dockerignore_excludes(secret), f".dockerignore must keep {secret} out of the build context"


def test_airflow_image_is_built_from_this_dockerfile() -> None:
    for name in [*AIRFLOW_COMPONENTS, INIT_SERVICE]:
        build = services()[name].get("build")
        assert build, f"{name} must build ./Dockerfile (it needs the requirements and the dbt venv)"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (REPO_ROOT / context / dockerfile).resolve() == DOCKERFILE, f"{name} builds another Dockerfile"


# ==================================================================================================
# Tests: the standalone market-data API and Prometheus
# ==================================================================================================
API_SERVICE = "marketflow-api"
PROMETHEUS_SERVICE = "prometheus"
PROMETHEUS_CONFIG = "/etc/prometheus/marketflow/prometheus.yml"


def prometheus_config() -> dict[str, Any]:
    command = command_list(PROMETHEUS_SERVICE)
    assert f"--config.file={PROMETHEUS_CONFIG}" in command, command
    path = host_path_for(PROMETHEUS_SERVICE, PROMETHEUS_CONFIG)
    assert path == REPO_ROOT / "include" / "prometheus" / "prometheus.yml" and path.is_file(), path
    return yaml.safe_load(path.read_text())


def test_api_runs_standalone_with_token_auth_and_its_own_database_role() -> None:
    api = services()[API_SERVICE]
    command = command_list(API_SERVICE)
    assert command[:5] == ["python", "-m", "uvicorn", "--factory", "marketflow.api.app:standalone_app"], command
    assert command[command.index("--port") + 1] == "8000" and command[command.index("--host") + 1] == "0.0.0.0"
    assert "--no-access-log" in command  # the app logs its own access event (with duration and caller)
    # the product's image, not Airflow's services: no Airflow secret, no Airflow command
    assert api["image"] == services()["airflow-apiserver"]["image"] and "build" not in api
    env = service_env(API_SERVICE)
    assert not {name for name in env if name.startswith("AIRFLOW")}, env
    assert env["CONNECTION_CHECK_MAX_COUNT"] == "0"  # the image's entrypoint must not wait for Airflow's DB
    assert host_path_for(API_SERVICE, "/opt/airflow/plugins/marketflow/api/app.py") == \
        REPO_ROOT / "plugins" / "marketflow" / "api" / "app.py"
    assert env["PYTHONPATH"] == "/opt/airflow/plugins"
    # its own login role, never the pipeline's owner: a member of marketflow_api, created by init
    generated = generated_env()
    marts, metrics = urlsplit(env["MARKETFLOW_API_DATABASE"]), urlsplit(env["MARKETFLOW_API_METRICS_DATABASE"])
    owner = generated["MARKETFLOW_PG_USER"]
    assert (marts.username, unquote(marts.password)) == (generated["MARKETFLOW_API_PG_USER"],
                                                         generated["MARKETFLOW_API_PG_PASSWORD"])
    assert (metrics.username, unquote(metrics.password)) == (generated["MARKETFLOW_MONITOR_PG_USER"],
                                                             generated["MARKETFLOW_MONITOR_PG_PASSWORD"])
    assert owner not in {marts.username, metrics.username} and marts.username != metrics.username
    for url in (marts, metrics):
        assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/marketflow"), url
    script = init_script()
    for step in ('GRANT marketflow_api TO {}', "GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}",
                 "INSERT INTO ops.api_tokens (name, token_sha256) VALUES ('prometheus', %s)"):
        assert step in script, step
    # the roles are made after the DDL created marketflow_api
    assert script.index("python -m marketflow.cli apply-ddl") < script.index("GRANT marketflow_api TO")
    assert depends_on(API_SERVICE) == {"postgres": "service_healthy", "mongo": "service_healthy",
                                       INIT_SERVICE: "service_completed_successfully"}
    assert api["ports"] == [f"127.0.0.1:{generated['MARKETFLOW_API_HOST_PORT']}:8000"]
    # healthy = it refuses an anonymous /health with 401 (nothing is open without a token)
    health = api["healthcheck"]["test"]
    assert health[:3] == ["CMD", "python", "-c"] and "http://127.0.0.1:8000/health" in health[3]
    ast.parse(health[3])
    assert "x.code != 401" in health[3]


def test_prometheus_scrapes_the_api_with_a_token_and_loads_the_alert_rules() -> None:
    prom = services()[PROMETHEUS_SERVICE]
    config = prometheus_config()
    rules = [host_path_for(PROMETHEUS_SERVICE, str(PurePosixPath(PROMETHEUS_CONFIG).parent / f))
             for f in config["rule_files"]]
    assert rules == [REPO_ROOT / "include" / "prometheus" / "marketflow-alerts.yml"], rules
    assert all(mount.endswith(":ro") for mount in prom["volumes"] if mount.startswith("./")), prom["volumes"]
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    [target] = [t for static in job["static_configs"] for t in static["targets"]]
    host, port = target.split(":")
    api_command = command_list(API_SERVICE)
    assert host == API_SERVICE and port == api_command[api_command.index("--port") + 1], target
    # the token: a compose secret from the generated .env, registered by init under the name prometheus
    auth = job["authorization"]
    assert auth["type"] == "Bearer" and auth["credentials_file"] == "/run/secrets/prometheus_api_token"
    assert prom["secrets"] == ["prometheus_api_token"]
    secret = raw_compose()["secrets"]["prometheus_api_token"]
    assert secret == {"environment": "MARKETFLOW_PROMETHEUS_API_TOKEN"}
    assert generated_env()["MARKETFLOW_PROMETHEUS_API_TOKEN"], "make env must generate the token"
    assert "MARKETFLOW_PROMETHEUS_API_TOKEN" in service_env(INIT_SERVICE)
    assert depends_on(PROMETHEUS_SERVICE) == {API_SERVICE: "service_healthy"}
    assert prom["ports"] == [f"127.0.0.1:{generated_env()['PROMETHEUS_HOST_PORT']}:9090"]
    assert "/-/ready" in " ".join(prom["healthcheck"]["test"])
    assert "prometheus-data" in raw_compose()["volumes"]


def test_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    """`promtool check config` as the container reads it: the config beside its rules, the token file
    where compose puts the secret (Debian's promtool, installed by `make install`)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make install` installs Debian's prometheus package"
    source = REPO_ROOT / "include" / "prometheus"
    for name in ("prometheus.yml", "marketflow-alerts.yml"):
        text = (source / name).read_text()
        (tmp_path / name).write_text(text.replace("/run/secrets/", f"{tmp_path}/"))
    (tmp_path / "prometheus_api_token").write_text("not-a-real-token\n")
    res = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr and "rules found" in res.stdout + res.stderr
