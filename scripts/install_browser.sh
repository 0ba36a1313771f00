#!/usr/bin/env bash
# Install what the browser test (tests/test_leaderboard_browser.py) needs: Debian's chromium and
# the playwright Python package. Playwright's own browser download is not used (no network for it):
# the test launches the system chromium via executable_path. Idempotent and quiet; run as root
# (or with sudo available), inside the project's virtual environment.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (apt-get)"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core >/dev/null
fi

if ! python -c "import playwright" >/dev/null 2>&1; then
  echo "installing playwright (pip)"
  python -m pip install -q "playwright>=1.40"
fi

echo "browser ready: $(command -v chromium) ($(chromium --version 2>/dev/null | head -n1))"
