#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer with AddressSanitizer),
# one after the other, each on one core for SECONDS.
#
#   tools/fuzz.sh SECONDS [TARGET...]   (default: every target)
#   tools/fuzz.sh replay [TARGET...]    (run fuzz/regressions/<target>/* once)
#
# Installs cargo-fuzz if missing and builds on stable with RUSTC_BOOTSTRAP=1.
# Seeds come from tools/make_fuzz_corpus.py (fuzz/corpus/, not committed).
# Limits: -timeout catches hangs (seconds per input), -rss_limit_mb and
# -malloc_limit_mb memory a file makes the engine take. A crash leaves its
# input in fuzz/artifacts/<target>/; the script goes on to the next target and
# fails at the end. FUZZ_ARGS adds libFuzzer flags.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:?usage: tools/fuzz.sh SECONDS|replay [TARGET...]}
shift
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
(cd fuzz && cargo fuzz build -O --debug-assertions 2>&1) | { grep -v '^\s*Compiling' || true; }
bin=fuzz/target/x86_64-unknown-linux-gnu/release
[ -d fuzz/corpus ] || python3 tools/make_fuzz_corpus.py

limits=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048)
failed=()
for t in "${targets[@]}"; do
  [ -x "$bin/$t" ] || { echo "fuzz: no binary for $t (build failed?)" >&2; failed+=("$t"); continue; }
  if [ "$mode" = replay ]; then
    files=(fuzz/regressions/"$t"/*)
    [ -e "${files[0]}" ] || continue
    echo "== $t: replaying ${#files[@]} regression inputs"
    "$bin/$t" "${limits[@]}" "${files[@]}" || failed+=("$t")
    continue
  fi
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  echo "== $t: ${mode}s"
  # shellcheck disable=SC2086
  "$bin/$t" "fuzz/corpus/$t" "${limits[@]}" "${dict[@]}" -max_total_time="$mode" \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 ${FUZZ_ARGS:-} \
    2> "fuzz/artifacts/$t.log" || failed+=("$t")
  grep -E '^stat::number_of_executed_units|^Done|ERROR|panicked' "fuzz/artifacts/$t.log" || true
done
# Scratch directories of the fuzzers that have exited.
for d in /dev/shm/tinyllm-fuzz-*; do
  [ -d "$d" ] && ! kill -0 "${d##*-}" 2>/dev/null && rm -rf "$d"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failures in ${failed[*]} (inputs in fuzz/artifacts/<target>/, logs in fuzz/artifacts/<target>.log)" >&2
  exit 1
fi
