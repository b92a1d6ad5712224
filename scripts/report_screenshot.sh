#!/usr/bin/env bash
# Render a report.html with headless Chromium (Debian package `chromium`) to a PNG, to look at it
# as a person would. Usage: scripts/report_screenshot.sh OUTDIR/report.html report.png
set -euo pipefail
page=$(realpath "$1")
png=${2:-report.png}
command -v chromium >/dev/null || { echo "error: chromium is not installed (Debian: apt-get install chromium)" >&2; exit 127; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# chromium's own chatter (GPU, D-Bus) goes to a file, shown only when it fails
if ! chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile/user" --window-size=1100,1500 --screenshot="$png" "file://$page" 2>"$profile/stderr" \
  || [ ! -s "$png" ]; then
    tail -n 20 "$profile/stderr" >&2
    echo "error: chromium wrote no $png" >&2
    exit 1
fi
echo "wrote $png"
