#!/usr/bin/env bash
# Runs the aarch64 wheel on this x86-64 machine: Debian's arm64 Python (and
# NumPy) unpacked into a private root, the wheel unzipped beside it, all run
# by qemu-aarch64-static. Checks the kernels picked at run time (NEON with
# dotprod on QEMU's `max` CPU, plain NEON on `cortex-a72`), that greedy
# decoding of the built-in model continues run.c's story, and a chat
# completion.
#
#   tools/wheel_aarch64_check.sh [dist/tinyllm-*_aarch64.whl]
#
# Nothing is installed into the system but qemu-user-static and the arm64
# package lists (as ../shared/tools/aarch64-check.sh adds them); the arm64
# root lives in target/arm64-python. Unlike cargo's test harness, the engine's
# threads do not hang here (checked with 1 and 2 threads).
set -euo pipefail
cd "$(dirname "$0")/.."

wheel=${1:-$(ls -t dist/tinyllm-*_aarch64.whl 2>/dev/null | head -n 1)}
[ -f "$wheel" ] || { echo "no aarch64 wheel (make wheel WHEEL_ARCHES=aarch64)" >&2; exit 2; }
root=$PWD/target/arm64-python
sysroot=$root/root

if ! command -v qemu-aarch64-static >/dev/null 2>&1 || ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null
fi
if [ ! -x "$sysroot/usr/bin/python3.11" ]; then
  debs=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g
        libffi8 libgcc-s1 libbz2-1.0 liblzma5 libcrypt1 libstdc++6 python3-numpy libblas3
        liblapack3 libgfortran5 python3-markupsafe)
  mkdir -p "$root/debs" "$sysroot"
  (cd "$root/debs" && apt-get download -qq "${debs[@]/%/:arm64}" 2>&1 | grep -v unsandboxed || true)
  for d in "$root"/debs/*.deb; do dpkg -x "$d" "$sysroot"; done
  # What libblas3's and liblapack3's install scripts would link.
  ln -sf blas/libblas.so.3 "$sysroot/usr/lib/aarch64-linux-gnu/libblas.so.3"
  ln -sf lapack/liblapack.so.3 "$sysroot/usr/lib/aarch64-linux-gnu/liblapack.so.3"
  # Debian's jinja2 is older than the sandbox tinyllm requires; it is pure Python.
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$root/pure" 'jinja2>=3.1.6'
  python3 -m zipfile -e "$root"/pure/jinja2-*.whl "$root/site"
fi

pkg=$(mktemp -d)
trap 'rm -rf "$pkg"' EXIT
python3 -m zipfile -e "$wheel" "$pkg"

check() {  # QEMU CPU, expected ISA
  echo "== $(basename "$wheel") on qemu -cpu $1"
  PYTHONPATH="$pkg:$root/site" qemu-aarch64-static -cpu "$1" -L "$sysroot" \
    "$sysroot/usr/bin/python3.11" - "$2" <<'PY'
import sys
import tinyllm
import tinyllm._tinyllm as engine

assert engine.isa() == sys.argv[1], (engine.isa(), sys.argv[1])
m = tinyllm.Model.default()
text = m.generate("Once upon a time, a little dog", max_tokens=24, temperature=0)
assert text.startswith(" named Max was very excited."), repr(text)
r = m.chat_completion([{"role": "user", "content": "Tell me a story."}], max_tokens=16, temperature=0)
assert r["usage"]["completion_tokens"] > 0 and r["choices"][0]["message"]["content"], r
print(f"ok: {engine.isa()}: {text!r}")
PY
}
check max neon-dotprod
check cortex-a72 neon
