#!/usr/bin/env bash
# System programs some tests need, from Debian: bubblewrap (`bwrap`, the sandbox that runs
# model-written code) and Chromium (the HTML report test opens the report in it, headless).
# Installs the missing ones with apt-get when run as root on a machine that has apt-get;
# otherwise prints the exact command. Without them, those tests are skipped.
#   TURNRL_SYSTEM_PACKAGES=skip     do nothing
#   TURNRL_SYSTEM_PACKAGES=require  fail if any is still missing (CI)
set -uo pipefail
MODE=${TURNRL_SYSTEM_PACKAGES:-auto}
[ "$MODE" = skip ] && exit 0

missing() {
  local out=()
  command -v bwrap >/dev/null 2>&1 || out+=(bubblewrap)
  command -v chromium >/dev/null 2>&1 || out+=(chromium)
  echo "${out[@]}"
}

MISSING=$(missing)
[ -z "$MISSING" ] && exit 0
CMD="apt-get update && apt-get install -y $MISSING"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing $MISSING (apt-get)"
  # shellcheck disable=SC2086
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $MISSING; } >/dev/null 2>&1; then
    echo "setup: apt-get could not install $MISSING; try: $CMD" >&2
  fi
  MISSING=$(missing)
  [ -z "$MISSING" ] && exit 0
else
  echo "setup: $MISSING not installed, so the sandbox / HTML report tests that need them will be skipped;" \
       "install with: sudo sh -c '$CMD'" >&2
fi
if [ "$MODE" = require ]; then
  echo "setup: $MISSING still missing (TURNRL_SYSTEM_PACKAGES=require)" >&2
  exit 1
fi
exit 0
