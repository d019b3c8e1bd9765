#!/usr/bin/env bash
# Open a report in headless Chromium: no console errors, no failed or outside requests, a screenshot.
# Installs Debian's chromium first when no Chromium is on PATH (needs root and the Debian mirrors).
#   reports/browser_check.sh REPORT.html [SCREENSHOT.png]
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 REPORT.html [SCREENSHOT.png]" >&2
  exit 2
fi
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  echo "installing Debian's chromium ..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# the README's virtual environment when there is one, else $PYTHON or python3
python="${PYTHON:-python3}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PYTHON:-}" && -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; fi
args=("$(realpath "$1")")
if [[ $# -ge 2 ]]; then args+=(--screenshot "$(realpath -m "$2")"); fi
cd "$repo"
exec "$python" -m reports.browser_check "${args[@]}"
