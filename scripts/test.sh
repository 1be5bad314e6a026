#!/usr/bin/env bash
# The README's second command: set up, lint, type-check and run the whole test suite.
# Integration tests start their own Kafka broker (or use KAFKA_BOOTSTRAP_SERVERS, or
# testcontainers when a Docker engine answers). Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
cd "$repo"

# Only the tests need a browser: the dashboard's browser test drives Debian's chromium (Playwright never downloads a
# browser here). Installed only where we may: apt-get exists and we are root or in CI.
if [[ ! -x /usr/bin/chromium ]] && command -v apt-get >/dev/null 2>&1 \
        && { [[ "$(id -u)" == 0 ]] || [[ "${CI:-}" == "true" ]]; }; then
    echo "test: installing chromium for the dashboard test ..." >&2
    mkdir -p .venv
    sudo_=""; [[ "$(id -u)" == 0 ]] || sudo_="sudo"
    if ! { $sudo_ apt-get update && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y chromium; } \
            > .venv/chromium-install.log 2>&1; then
        tail -20 .venv/chromium-install.log >&2
        echo "test: warning: installing chromium failed (log: .venv/chromium-install.log);" \
             "tests/integration/test_dashboard.py will fail" >&2
    fi
fi

echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check pipeline tests scripts config topics
echo "== mypy --strict" >&2
.venv/bin/mypy
echo "== pytest" >&2
exec .venv/bin/python -m pytest "$@"
