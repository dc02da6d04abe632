"""`make env`: write `.env` for docker-compose.yaml from `.env.example`, with freshly generated secrets.

The repository ships no usable secret: `.env.example` leaves every password and key empty, and
docker-compose.yaml refuses to start while one is empty (`${VAR:?...}`). This writes `.env` (mode
0600, git-ignored) with each of them generated from the operating system's random source:

* AIRFLOW_FERNET_KEY: 32 random bytes, url-safe base64 (exactly what cryptography's
  Fernet.generate_key() returns);
* every other secret: secrets.token_urlsafe, letters, digits, `-` and `_` only, so it can go into
  connection URIs unescaped.

An existing `.env` is never overwritten: secrets that are missing from it (added by a newer
`.env.example`) are appended; empty ones are reported, to be set by hand. Standard library only,
so it runs with any Python 3 before anything is installed.

    python3 scripts/make_env.py [--env-file .env] [--example .env.example]
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def token(nbytes: int) -> Callable[[], str]:
    return lambda: secrets.token_urlsafe(nbytes)


# Every secret docker-compose.yaml requires, and how it is generated.
GENERATED: dict[str, Callable[[], str]] = {
    "AIRFLOW_FERNET_KEY": fernet_key,
    "AIRFLOW_JWT_SECRET": token(48),
    "AIRFLOW_API_SECRET_KEY": token(48),
    "AIRFLOW_ADMIN_PASSWORD": token(18),
    "POSTGRES_PASSWORD": token(24),
    "MARKETFLOW_PG_PASSWORD": token(24),
    "MONGO_ROOT_PASSWORD": token(24),
    "MARKETFLOW_MONGO_PASSWORD": token(24),
    "MARKETFLOW_API_PG_PASSWORD": token(24),
    "MARKETFLOW_MONITOR_PG_PASSWORD": token(24),
    "MARKETFLOW_PROMETHEUS_API_TOKEN": token(32),
}
# Values that were published (the former .env.example) or that anyone would guess.
WEAK = re.compile(r"(?i)^(dev-only-.*|admin|airflow|marketflow|postgres|mongo|root|password|changeme|secret)$")
# Values docker-compose.yaml pastes into connection URIs: compose cannot percent-encode, so a
# reserved character (@ : / ? # %) would break the URI (airflow-init refuses them too).
IN_URIS = ("POSTGRES_USER", "POSTGRES_PASSWORD", "MARKETFLOW_PG_USER", "MARKETFLOW_PG_PASSWORD",
           "MARKETFLOW_MONGO_USER", "MARKETFLOW_MONGO_PASSWORD", "MARKETFLOW_API_PG_USER", "MARKETFLOW_API_PG_PASSWORD",
           "MARKETFLOW_MONITOR_PG_USER", "MARKETFLOW_MONITOR_PG_PASSWORD")
URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")
_LINE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


def parse(text: str) -> dict[str, str]:
    return {m.group("key"): m.group("value").strip() for line in text.splitlines()
            if (m := _LINE.match(line.strip()))}


def render(example: str) -> str:
    """``.env.example`` with every generated secret filled in (comments and order kept)."""
    template = parse(example)
    for key in GENERATED:
        if key not in template:
            raise SystemExit(f".env.example lacks {key}=; add it (empty) so `make env` can generate it")
        if template[key]:
            raise SystemExit(f".env.example gives {key} a value; leave it empty: a secret in the repository is "
                             "known to everyone who can read it")
    lines = []
    for line in example.splitlines():
        m = _LINE.match(line.strip())
        lines.append(f"{m.group('key')}={GENERATED[m.group('key')]()}" if m and m.group("key") in GENERATED else line)
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str, mode: str = "w") -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_EXCL), 0o600)
    with os.fdopen(fd, mode) as fh:
        fh.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-file", type=Path, default=REPO / ".env")
    parser.add_argument("--example", type=Path, default=REPO / ".env.example")
    args = parser.parse_args(argv)
    example = args.example.read_text()

    if not args.env_file.exists():
        _write_private(args.env_file, render(example))
        print(f"wrote {args.env_file} with {len(GENERATED)} generated secrets ({', '.join(GENERATED)}); "
              f"it is git-ignored, keep it that way. The Airflow UI login is admin / the AIRFLOW_ADMIN_PASSWORD in it.")
        return 0

    existing = parse(args.env_file.read_text())
    missing = [key for key in GENERATED if key not in existing]
    if missing:
        added = "".join(f"{key}={GENERATED[key]()}\n" for key in missing)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d")
        note = f"\n# added by `make env` on {stamp}: secrets a newer .env.example needs\n"
        _write_private(args.env_file, note + added, mode="a")
        print(f"{args.env_file} exists and was kept; appended generated {', '.join(missing)}")
    else:
        print(f"{args.env_file} exists and was kept (delete it and run `make env` again for all-new secrets)")
    problems = [f"{key} is empty" for key in GENERATED if key in existing and not existing[key]]
    problems += [f"{key} holds a published or guessable value" for key in GENERATED
                 if existing.get(key) and WEAK.match(existing[key])]
    problems += [f"{key} has characters that break the connection URIs (only letters, digits, - _ . ~ are safe)"
                 for key in IN_URIS if existing.get(key) and not URL_SAFE.fullmatch(existing[key])]
    if problems:
        print(f"{args.env_file}: " + "; ".join(problems) + ". Fix: set a new value there (see .env.example), or move "
              "the file away and run `make env`; changing AIRFLOW_FERNET_KEY needs `airflow rotate-fernet-key`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
