#!/usr/bin/env bash
# The README's first command: set up, then run the demo on the embedded local default
# (a local Kafka broker, the topics, one worker, 1,000,000 generated numbers, and the
# served median next to the exact one). Extra arguments go to `dmedian demo`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
cd "$repo"
exec .venv/bin/dmedian demo "$@"
