#!/usr/bin/env bash
# The README's second command: set up, lint, type-check and run the whole test suite.
# Integration tests start their own Kafka broker (or use KAFKA_BOOTSTRAP_SERVERS, or
# testcontainers when a Docker engine answers). Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
cd "$repo"
echo "== ruff" >&2
.venv/bin/ruff check .
echo "== mypy --strict" >&2
.venv/bin/mypy
echo "== pytest" >&2
exec .venv/bin/python -m pytest "$@"
