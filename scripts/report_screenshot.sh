#!/usr/bin/env bash
# Render a report.html with headless Chromium (Debian package `chromium`) to a PNG, to look at it
# as a person would. Usage: scripts/report_screenshot.sh OUTDIR/report.html report.png
set -euo pipefail
page=$(realpath "$1")
png=${2:-report.png}
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1100,1500 --screenshot="$png" "file://$page" 2>/dev/null
echo "wrote $png"
