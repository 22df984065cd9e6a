#!/usr/bin/env bash
# Runs every tickgate test on a fresh machine: installs what the tests need (a Rust toolchain is
# assumed; Chromium and ChromeDriver for the dashboard's browser test come from Debian's
# packages), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser test drives the dashboard in headless Chromium through ChromeDriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "test-all: installing chromium and chromium-driver (Debian packages) for the browser test"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi

cargo test --locked --all-targets
