#!/usr/bin/env bash
# The pin of an app: the SHA-256 of the FAB that `flwr run PROJECT_DIR` ships (flwr's own builder).
# An owner computes it from the project it reviewed and passes it to its SuperNode (app-sha256).
#   deploy/app-sha256.sh [PROJECT_DIR]
set -euo pipefail
source "$(dirname "$0")/env.sh"
python -m fedveil.client.supernode --app-sha256 "${1:-$(cd "$(dirname "$0")/.." && pwd)}"
