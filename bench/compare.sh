#!/usr/bin/env bash
# Side-by-side CPU speed of Kiln and llama.cpp on the same GGUF models, same thread count, same machine.
#
#   bench/compare.sh [--threads T] [--reps N] [--prompt P] [--gen G] [--models smollm2,gemma3]
#                    [--llama-only] [--no-build] [--out DIR]
#
# Builds the peer if needed (bench/build-llama-cpp.sh), builds kiln-agent in release mode, then for each
# model runs N interleaved repetitions of
#     llama-bench -m FILE -t T -p P -n G -r 1 -o json
#     target/release/kiln-agent bench --model FILE --prompt-tokens P --gen-tokens G --threads T
# each under /usr/bin/time -v (peak RSS), keeps every raw output in DIR (default bench/results/<UTC stamp>/),
# and prints a Markdown table (bench/compare.py) with medians, ratios, peak RSS, the CPU and the commands.
# --llama-only skips building and running Kiln (to check the harness / measure the peer alone).
# Environment: KILN_CACHE (default ~/.cache/kiln), JOBS (build parallelism), LLAMA_BENCH_EXTRA (extra
# llama-bench arguments, appended verbatim), KILN_BENCH_EXTRA (same for kiln-agent bench).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
threads=2 reps=5 prompt=128 gen=64 models=smollm2,gemma3 llama_only=0 build=1 out=""

while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --gen) gen=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --llama-only) llama_only=1; shift ;;
    --no-build) build=0; shift ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

model_file() {
  case "$1" in
    smollm2) echo "$KILN_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf" ;;
    gemma3) echo "$KILN_CACHE/models/gemma-3-270m-q4_k_m.gguf" ;;
    *) echo "compare.sh: unknown model $1 (smollm2|gemma3)" >&2; return 1 ;;
  esac
}

# /usr/bin/time (GNU time) for peak RSS; the shell builtin cannot do -v.
if [ ! -x /usr/bin/time ]; then
  echo "compare.sh: installing GNU time" >&2
  apt-get update >&2 && apt-get install -y time >&2
fi

# The peer. The script is a no-op (prints the prefix) when its cached build is complete.
prefix=$("$repo/bench/build-llama-cpp.sh")
llama_bench="$prefix/bin/llama-bench"
[ -x "$llama_bench" ] || { echo "compare.sh: $llama_bench missing" >&2; exit 1; }
export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

kiln="$repo/target/release/kiln-agent"
if [ "$llama_only" = 0 ]; then
  if [ "$build" = 1 ]; then
    (cd "$repo" && cargo build --release -p kiln-agent >&2)
  fi
  [ -x "$kiln" ] || { echo "compare.sh: $kiln missing (build it or pass --llama-only)" >&2; exit 1; }
fi

for m in ${models//,/ }; do
  f=$(model_file "$m")
  [ -f "$f" ] || { echo "compare.sh: $f missing: run scripts/fetch-models.sh" >&2; exit 1; }
done

out=${out:-$repo/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
{
  echo "threads=$threads"; echo "reps=$reps"; echo "prompt=$prompt"; echo "gen=$gen"; echo "models=$models"
  echo "llama_only=$llama_only"; echo "cpu=$cpu"; echo "nproc=$(nproc)"; echo "prefix=$prefix"
  echo "llama_bench_version=$("$llama_bench" --version 2>&1 | tr '\n' ' ')"
  echo "kiln_commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/meta.txt"

# run NAME LOGBASE CMD...: stdout -> LOGBASE.json, /usr/bin/time -v report + stderr -> LOGBASE.time,
# the exact command line -> LOGBASE.cmd, exit status -> LOGBASE.rc. Never aborts the whole comparison.
run() {
  local base=$1; shift
  printf '%q ' "$@" > "$base.cmd"; echo >> "$base.cmd"
  local rc=0
  /usr/bin/time -v -o "$base.time" "$@" > "$base.json" 2> "$base.stderr" || rc=$?
  echo "$rc" > "$base.rc"
  [ "$rc" = 0 ] || echo "compare.sh: exit $rc: $(cat "$base.cmd")(see $base.stderr)" >&2
}

for m in ${models//,/ }; do
  f=$(model_file "$m")
  for r in $(seq 1 "$reps"); do
    echo "compare.sh: $m rep $r/$reps" >&2
    # shellcheck disable=SC2086
    run "$out/$m.llama.$r" "$llama_bench" -m "$f" -t "$threads" -p "$prompt" -n "$gen" -r 1 -o json \
      ${LLAMA_BENCH_EXTRA:-}
    if [ "$llama_only" = 0 ]; then
      # shellcheck disable=SC2086
      run "$out/$m.kiln.$r" "$kiln" bench --model "$f" --prompt-tokens "$prompt" --gen-tokens "$gen" \
        --threads "$threads" ${KILN_BENCH_EXTRA:-}
    fi
  done
done

echo "loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/meta.txt"
python3 "$here/compare.py" "$out" | tee "$out/table.md"
