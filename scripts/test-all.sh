#!/usr/bin/env bash
# Runs every tickgate test on a fresh machine. It assumes a Rust toolchain and installs the rest:
# Chromium and ChromeDriver, from Debian's packages, for the dashboard's browser test. Then it
# checks that the benchmarks build, runs the whole suite and prints one total line.
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

# Benchmarks are measured with `cargo bench`, not run here; they must still compile.
cargo bench --locked --no-run

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# One closing line with the totals of every test binary shows at a glance how many tests ran.
passed=$(grep -E '^test result:' "$log" | grep -oE '[0-9]+ passed' | awk '{sum += $1} END {print sum + 0}')
failed=$(grep -E '^test result:' "$log" | grep -oE '[0-9]+ failed' | awk '{sum += $1} END {print sum + 0}')
echo "tickgate: $passed passed, $failed failed"
exit "$status"
