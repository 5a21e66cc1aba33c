#!/usr/bin/env bash
# Builds tinyllm's Linux wheels: manylinux2014 (glibc 2.17), abi3 (one wheel
# per platform for CPython 3.10 and later), linked by zig so that the glibc
# symbols are old enough whatever the build machine has.
#
#   tools/wheel.sh [x86_64] [aarch64]   (default: both)   -> $WHEEL_DIR (dist/)
#
# x86_64 builds with rustup's toolchain; aarch64 with Debian's rustc-web and
# its arm64 standard library (rustup here has no aarch64 std), installed as
# ../shared/tools/aarch64-check.sh does. maturin, ziglang and auditwheel go in
# a venv of their own (target/wheel-tools). Each architecture has its own
# cargo target directory, so neither disturbs the development build.
# Kernels are chosen at run time (AVX-512, AVX2, NEON), so no -C target-cpu:
# any RUSTFLAGS in the environment are dropped.
set -euo pipefail
cd "$(dirname "$0")/.."

arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(x86_64 aarch64)
out=${WHEEL_DIR:-dist}
tools=target/wheel-tools
python=${PYTHON:-python3}

if [ ! -x "$tools/bin/maturin" ] || [ ! -x "$tools/bin/auditwheel" ]; then
  "$python" -m venv "$tools"
  "$tools/bin/python" -m pip install --quiet 'maturin>=1.5,<2' ziglang auditwheel
fi
export PATH="$PWD/$tools/bin:$PATH"
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS

for arch in "${arches[@]}"; do
  case "$arch" in
    x86_64) ;;
    aarch64)
      need=()
      [ -x /usr/bin/rustc ] || need+=(rustc-web)
      [ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu ] || need+=(libstd-rust-web-dev:arm64)
      if [ ${#need[@]} -gt 0 ]; then
        echo "wheel: installing ${need[*]}" >&2
        dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
      fi
      ;;
    *) echo "wheel: unknown architecture $arch (x86_64 or aarch64)" >&2; exit 2 ;;
  esac
  rustc_env=()
  [ "$arch" = aarch64 ] && rustc_env=(RUSTC=/usr/bin/rustc)
  env "${rustc_env[@]}" CARGO_TARGET_DIR="target/wheel-$arch" \
    maturin build --release --zig --compatibility manylinux2014 \
    --target "$arch-unknown-linux-gnu" --interpreter "$python" --out "$out"
  wheel=$(ls -t "$out"/tinyllm-*-manylinux*"$arch".whl | head -n 1)
  # maturin checked the symbols already; auditwheel says the same from the
  # outside (it reads the ELF, whatever the wheel's architecture).
  auditwheel show "$wheel" | tr '\n' ' ' | grep -q "manylinux_2_17_$arch" \
    || { auditwheel show "$wheel"; echo "wheel: $wheel is not manylinux_2_17" >&2; exit 1; }
  echo "wheel: $wheel (manylinux_2_17_$arch, abi3)"
done
