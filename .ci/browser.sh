#!/usr/bin/env bash
# Install headless Chromium and its driver from Debian's packages for the clue explorer's browser test; source this.
# Selenium (the dev extra) drives /usr/bin/chromedriver, so nothing is downloaded at test time. Measured on the
# project's machine: apt-get update ~2 s, install ~20 s (--no-install-recommends, +~370 MB; ~60 s with recommends).
# A failed install only warns here: the test then fails under CI=true, naming what is missing.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  GEMKR_BROWSER_T0=$(date +%s)
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver fonts-liberation >/dev/null; then
    echo "browser.sh: chromium and chromium-driver installed in $(( $(date +%s) - GEMKR_BROWSER_T0 )) s"
  else
    echo "browser.sh: warning: could not install chromium chromium-driver; the browser test will fail" >&2
  fi
fi
