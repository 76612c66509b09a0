#!/usr/bin/env bash
# Make docs/report-screenshot.png again: run `lossfit demo` into a scratch folder, then photograph the top of its
# report.html with headless Chromium (Debian's `chromium` package, or $CHROMIUM). Run from anywhere:
#   docs/screenshot.sh            (after `make demo` or `make test` has created .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
browser="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
if [ -z "$browser" ]; then
    echo "screenshot.sh: headless Chromium is needed (apt-get install chromium, or set CHROMIUM)" >&2
    exit 2
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
lossfit="$PWD/.venv/bin/lossfit"
(cd "$scratch" && "$lossfit" demo >/dev/null)   # as a new user runs it: lossfit-demo/ in the current folder
"$browser" --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars --mute-audio \
    --user-data-dir="$scratch/profile" --window-size=1200,2400 \
    --screenshot="$PWD/docs/report-screenshot.png" "file://$scratch/lossfit-demo/report.html" 2>/dev/null
echo "wrote docs/report-screenshot.png"
