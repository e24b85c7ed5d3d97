#!/usr/bin/env bash
# Render gradscope's TensorBoard dashboard of a fresh `gradscope demo` run to PNGs
# with headless Chromium (Debian: apt-get install chromium). Everything stays on
# localhost.
#
#   scripts/dashboard_screenshot.sh            # -> docs/dashboard.png, docs/dashboard_images.png
#   STEPS=100 OUT=/tmp scripts/dashboard_screenshot.sh
set -euo pipefail

# ---- settings -----------------------------------------------------------------
STEPS=${STEPS:-300}                    # training steps per demo model
PORT=${PORT:-6006}
OUT=${OUT:-docs}
RUNS=${RUNS:-$(mktemp -d)/demo}        # where the demo writes its two runs
SIZE=${SIZE:-1400,1000}
# --------------------------------------------------------------------------------

python -m gradscope demo --logdir "$RUNS" --steps "$STEPS"
tensorboard --logdir "$RUNS" --port "$PORT" --host localhost >/dev/null 2>&1 &
TB=$!
trap 'kill "$TB"' EXIT
for _ in $(seq 60); do
    curl -sf "http://localhost:$PORT/data/runs" >/dev/null && break
    sleep 1
done

shot() {  # shot FILE URL-FRAGMENT
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$(mktemp -d)" --window-size="$SIZE" --virtual-time-budget=15000 \
        --screenshot="$1" "http://localhost:$PORT/$2" 2>/dev/null
    echo "wrote $1"
}
mkdir -p "$OUT"
shot "$OUT/dashboard.png" "#custom_scalars"
shot "$OUT/dashboard_images.png" "#images"
