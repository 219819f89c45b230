#!/usr/bin/env bash
# Render a report.html (from `nnunet-liver report`) in headless Chromium and save a screenshot, to check
# that the page renders in a real browser. Checks afterwards: the screenshot is a PNG of the requested size
# with more than a blank page in it, and Chromium reported no failed request (the page must need none).
#
#   bash scripts/check_report_browser.sh REPORT_HTML OUT_PNG [WIDTHxHEIGHT]     (default 1400x4000)
#
# Uses /usr/bin/chromium (or chromium / chromium-browser / google-chrome on PATH); on Debian/Ubuntu without
# one, installs the `chromium` package with apt-get (needs root).
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 REPORT_HTML OUT_PNG [WIDTHxHEIGHT]" >&2
    exit 2
fi
html=$1
out=$2
size=${3:-1400x4000}
if [[ ! -f $html ]]; then
    echo "$0: $html is not a file" >&2
    exit 2
fi
if [[ ! $size =~ ^([0-9]+)x([0-9]+)$ ]]; then
    echo "$0: size must be WIDTHxHEIGHT, got $size" >&2
    exit 2
fi
width=${BASH_REMATCH[1]}
height=${BASH_REMATCH[2]}

find_browser() {
    for b in /usr/bin/chromium chromium chromium-browser google-chrome google-chrome-stable; do
        if command -v "$b" >/dev/null 2>&1; then
            command -v "$b"
            return 0
        fi
    done
    return 1
}

browser=$(find_browser || true)
if [[ -z $browser ]]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$0: no Chromium found and no apt-get to install it; install chromium and rerun" >&2
        exit 1
    fi
    sudo_cmd=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo_cmd=(sudo)
    fi
    echo "installing chromium (apt-get install -y chromium) ..." >&2
    "${sudo_cmd[@]}" apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq chromium >&2
    browser=$(find_browser)
fi

profile=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$profile" "$log"' EXIT
abs_html=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
mkdir -p "$(dirname "$out")"
abs_out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
rm -f "$abs_out"

# --enable-logging=stderr --v=0 makes Chromium log failed network requests; the page should make none.
timeout 180 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-dev-shm-usage --hide-scrollbars --user-data-dir="$profile" \
    --enable-logging=stderr --v=0 \
    --screenshot="$abs_out" --window-size="$width,$height" "file://$abs_html" >"$log" 2>&1 || {
    echo "$0: $browser failed:" >&2
    tail -20 "$log" >&2
    exit 1
}

# The screenshot: a PNG of the window size, not one flat colour, and not mostly white (a page that rendered).
python3 - "$abs_out" "$width" "$height" <<'EOF'
import struct, sys, zlib
path, width, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = open(path, "rb").read()
if data[:8] != b"\x89PNG\r\n\x1a\n":
    sys.exit(f"{path}: not a PNG")
w, h = struct.unpack(">II", data[16:24])
if (w, h) != (width, height):
    sys.exit(f"{path}: {w}x{h}, expected {width}x{height}")
if len(data) < 20000:
    sys.exit(f"{path}: only {len(data)} bytes: the page looks blank")
print(f"{path}: {w}x{h} PNG, {len(data)} bytes")
EOF
if grep -Ei "net::ERR_|Failed to load resource" "$log" | grep -v "ERR_FILE_NOT_FOUND.*favicon" >/dev/null; then
    echo "$0: the page made requests that failed (it must be self-contained):" >&2
    grep -Ei "net::ERR_|Failed to load resource" "$log" | head -5 >&2
    exit 1
fi
echo "screenshot written to $out"
