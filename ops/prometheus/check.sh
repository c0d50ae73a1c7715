#!/usr/bin/env bash
# Validates alerts.yml and runs its unit tests (alerts.test.yml) with promtool.
# Installs Debian's prometheus package (it carries promtool) if promtool is missing.
# Exits non-zero if a rule is invalid or a test fails.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v promtool >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing prometheus (for promtool) from Debian's packages" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        prometheus >/dev/null
    # The package enables a server; we only want promtool. (In a container policy-rc.d usually
    # stops it from starting; on a systemd machine, stop it.)
    if command -v systemctl >/dev/null 2>&1 \
        && systemctl is-active --quiet prometheus 2>/dev/null; then
        $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi

promtool check rules alerts.yml
promtool test rules alerts.test.yml
