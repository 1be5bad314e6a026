#!/usr/bin/env bash
# Create .venv and install the project with its test tools. Idempotent: reinstalls
# only when pyproject.toml changed. Needs Python 3.11+, Java 17+ and Maven (for the
# embedded Kafka broker, fetched from Maven Central on first use).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "setup: Python 3.11+ is required (found $("$python" --version 2>&1))" >&2; exit 1; }
for tool in java mvn; do
    command -v "$tool" >/dev/null 2>&1 || echo "setup: warning: '$tool' not found; the embedded Kafka broker needs it" >&2
done

stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
    echo "setup: creating .venv and installing dependencies ..." >&2
    [[ -x .venv/bin/python ]] || "$python" -m venv .venv
    # pip's and the build backend's chatter goes to a log, shown only on failure.
    if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e ".[test]"; } \
            > .venv/install.log 2>&1; then
        tail -40 .venv/install.log >&2
        echo "setup: installing dependencies failed (full log: .venv/install.log)" >&2
        exit 1
    fi
    rm -f .venv/.installed-*
    touch "$stamp"
fi
