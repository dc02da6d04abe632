#!/usr/bin/env bash
# Debian packages the tests and the local stack run for real (not from PyPI or npm): each command below is
# installed from its package when it is missing. Run by `make install`; needs root (or sudo) once.
set -euo pipefail

declare -A PACKAGE_OF=(
    [promtool]=prometheus     # `promtool test rules` on the alert rules
    [prometheus]=prometheus   # the scrape-and-alert integration test
    [chromium]=chromium       # the Markets page's browser tests (Playwright drives it; no browser download)
    [node]=nodejs             # builds the Markets page (vite)
    [npm]=npm                 # installs the page's pinned packages (npm ci)
    [curl]=curl               # the demo's API example (tests/integration/test_api.py runs it)
    [redis-server]=redis-server  # the Celery broker of `make demo EXECUTOR=celery` and its test
    [pgbouncer]=pgbouncer     # the warehouse's connection pooler on the Celery path
)

missing=()
for command in "${!PACKAGE_OF[@]}"; do
    command -v "$command" >/dev/null 2>&1 || missing+=("${PACKAGE_OF[$command]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "error: the Debian packages ${packages[*]} are needed (for ${!PACKAGE_OF[*]}) and this user cannot" \
         "install them. Fix: as root, apt-get install ${packages[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
# Services are not started by the package (tests start their own, on their own ports).
if ! "${as_root[@]}" apt-get install -y --no-install-recommends -o Dpkg::Use-Pty=0 "${packages[@]}" >/dev/null; then
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y --no-install-recommends -o Dpkg::Use-Pty=0 "${packages[@]}" >/dev/null
fi
