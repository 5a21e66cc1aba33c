#!/usr/bin/env bash
# The Metal emulator (crates/metal-emu) compiles the GPU kernels with
# clang++ 17 or later at test time. Installs Debian's clang-19 when no such
# compiler is found (as root, or through sudo); prints what it uses.
set -euo pipefail

usable() {
    local v
    command -v "$1" >/dev/null 2>&1 || return 1
    v=$("$1" -dumpversion 2>/dev/null | cut -d. -f1)
    [[ -n "$v" && "$v" -ge 17 ]]
}

if [[ "$(uname -s)" == Darwin ]]; then
    # Apple's clang numbers its versions its own way; the emulator's tests
    # on a Mac are a bonus there (the real GPU runs the kernels).
    echo "Metal emulator: $(command -v clang++ || echo 'no clang++') (macOS: not checked)"
    exit 0
fi

for c in "${TINYLLM_CLANG:-}" clang++-19 clang++-20 clang++-18 clang++-17 clang++; do
    if [[ -n "$c" ]] && usable "$c"; then
        echo "Metal emulator: $(command -v "$c") ($("$c" -dumpversion))"
        exit 0
    fi
done

echo "Metal emulator: installing clang-19 (apt)"
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=900 \
    clang-19 >/dev/null
usable clang++-19 || { echo "clang++-19 did not install" >&2; exit 1; }
echo "Metal emulator: $(command -v clang++-19)"
