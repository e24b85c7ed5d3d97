#!/usr/bin/env bash
# Render gradscope's TensorBoard dashboards to PNGs with headless Chromium (Debian:
# apt-get install chromium). Everything stays on localhost.
#
#   scripts/dashboard_screenshot.sh                 # -> docs/*.png (see below)
#   GRID=/tmp/grid/runs OUT=/tmp/shots scripts/dashboard_screenshot.sh
#   RESNET=/tmp/r50 scripts/dashboard_screenshot.sh   # reuses /tmp/r50 when it exists
#
# * the runs under GRID, by default the quick grid (`gradscope compare --quick`, 30 runs,
#   trained first or finished where results/compare-quick lacks some: 7 min on 2 quiet
#   CPU cores): its Custom Scalars tab -> dashboard.png, its HParams tab ->
#   dashboard_hparams.png;
# * a ResNet-50 run (random weights and data, RESNET_STEPS SGD steps; 30 took 10 min on a
#   shared, busy 2-core machine):
#   its Custom Scalars tab -> dashboard_resnet50.png, its Images tab ->
#   dashboard_images.png, and the two images at full size -> gradient_flow.png,
#   unit_health.png (SKIP_RESNET=1 leaves these as they are);
# * `gradscope demo`'s two runs (a sick sigmoid MLP, a healthy ReLU one; a minute):
#   its Scalars, Custom Scalars, Images, Text and HParams tabs -> demo_<tab>.png;
# * the heat maps of the grid's worst run (first in `gradscope report`) at full size ->
#   heatmap_<metric>.png.
# Screenshots are stored as 256-colour PNGs (small). Chromium: apt-get install -y chromium.
set -euo pipefail

# ---- settings -----------------------------------------------------------------
GRID=${GRID:-}                             # TensorBoard runs of a grid; default: the quick grid
RESNET=${RESNET:-$(mktemp -d)/resnet50}     # where the ResNet-50 run is written
RESNET_STEPS=${RESNET_STEPS:-30}
SKIP_RESNET=${SKIP_RESNET:-}                # 1: keep the ResNet-50 pictures as they are
DEMO=${DEMO:-$(mktemp -d)/demo}             # where `gradscope demo` writes its two runs
PORT=${PORT:-6006}
OUT=${OUT:-docs}
SIZE=${SIZE:-1600,1400}
# --------------------------------------------------------------------------------

if [ -z "$GRID" ]; then  # train what is missing of the quick grid (finished runs are skipped)
    python -m gradscope compare --quick --no-progress --no-plots
    GRID=results/compare-quick/runs
fi
if [ -z "$SKIP_RESNET" ] && [ ! -d "$RESNET" ]; then
    python benchmarks/dashboard_lines.py --make resnet50 "$RESNET" --steps "$RESNET_STEPS"
fi
if [ ! -d "$DEMO" ]; then
    python -m gradscope demo --logdir "$DEMO" >/dev/null 2>&1
fi
mkdir -p "$OUT"
command -v chromium >/dev/null || { echo "chromium is missing: apt-get install -y chromium"; exit 1; }

TB=""
trap '[ -n "$TB" ] && kill "$TB"' EXIT
serve() {  # serve LOGDIR: (re)start TensorBoard on localhost and wait for it
    if [ -n "$TB" ]; then kill "$TB"; wait "$TB" 2>/dev/null || true; fi
    tensorboard --logdir "$1" --port "$PORT" --host localhost >/dev/null 2>&1 &
    TB=$!
    for _ in $(seq 60); do
        curl -sf "http://localhost:$PORT/data/runs" | grep -q '"' && break
        sleep 1
    done
}
shot() {  # shot FILE URL-FRAGMENT [WINDOW-SIZE]
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$(mktemp -d)" --window-size="${3:-$SIZE}" --virtual-time-budget=20000 \
        --screenshot="$1" "http://localhost:$PORT/$2" 2>/dev/null
    python -c "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').quantize(256).save(sys.argv[1], optimize=True)" "$1"
    echo "wrote $1"
}

serve "$GRID"
shot "$OUT/dashboard.png" "#custom_scalars"
shot "$OUT/dashboard_hparams.png" "#hparams" 1600,1000
python - "$GRID" "$OUT" <<'PY'
import io, json, sys
from pathlib import Path
from gradscope.report import report
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

out = io.StringIO()
report(Path(sys.argv[1]), fmt="json", out=out, err=io.StringIO())
worst = json.loads(out.getvalue())["ranking"][0]  # ranked worst first
ea = EventAccumulator(str(Path(sys.argv[1]) / worst), size_guidance={"images": 0})
ea.Reload()
for tag in ea.Tags()["images"]:
    if tag.startswith("gradscope/heatmap/"):
        path = f"{sys.argv[2]}/heatmap_{tag.rsplit('/', 1)[1]}.png"
        with open(path, "wb") as f:
            f.write(ea.Images(tag)[-1].encoded_image_string)
        print("wrote", path, "(run", worst + ")")
PY
serve "$DEMO"
shot "$OUT/demo_scalars.png" "#scalars" 1400,1000
shot "$OUT/demo_custom_scalars.png" "#custom_scalars" 1400,1000
shot "$OUT/demo_images.png" "#images" 1400,1400
shot "$OUT/demo_text.png" "#text" 1400,1000
shot "$OUT/demo_hparams.png" "#hparams" 1400,700
[ -n "$SKIP_RESNET" ] && exit 0
serve "$RESNET"
shot "$OUT/dashboard_resnet50.png" "#custom_scalars" 1600,2000
shot "$OUT/dashboard_images.png" "#images"
python - "$RESNET" "$OUT" <<'PY'
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ea = EventAccumulator(sys.argv[1], size_guidance={"images": 0})
ea.Reload()
for tag in ("gradscope/gradient_flow", "gradscope/unit_health"):
    path = f"{sys.argv[2]}/{tag.split('/')[1]}.png"
    with open(path, "wb") as f:
        f.write(ea.Images(tag)[-1].encoded_image_string)  # the last one, drawn at close
    print("wrote", path)
PY
