#!/usr/bin/env bash
# Runs sdmoe's parsers under valgrind memcheck (issue 10): every error --
# invalid read/write, use of uninitialised memory in a branch, bad free,
# a definitely lost block -- fails the run.
#
#   scripts/valgrind-parsers.sh          build build-valgrind/ and run everything
#   scripts/valgrind-parsers.sh list     the units it would run
#   scripts/valgrind-parsers.sh UNIT...  only these units (e.g. replay_safetensors)
#
# Build: build-valgrind/ (gcc, -O1 -g, no sanitizer, no -march=native so
# valgrind knows every instruction; -DSDMOE_FUZZ_REPLAY=ON), through
# scripts/setup.sh, which also installs valgrind.  The units:
#
#   replay_<t>   each libFuzzer target of tests/fuzz/ linked with
#                tests/fuzz/replay_main.c instead of libFuzzer, fed in ONE
#                process its seeds (`scripts/fuzz.sh seeds`: fixture files and
#                the hostile corpus) plus, when present, what the fuzzer has
#                learnt (build-fuzz/corpus/<t>/, e.g. after scripts/fuzz.sh all).
#   cli_<cmd>    the hostile-corpus cases that the real `sdmoe` must refuse
#                (scripts/make_hostile_corpus.py, as tests/test_hostile.c's
#                CLI tier drives them) and that no replay unit covers already:
#                `sdmoe info|generate|merge|batch`, one process per case, which
#                must exit non-zero without a signal or a timeout.
#   test_<x>     the parser-centric Criterion tests (no big numerics); the
#                per-test processes Criterion re-executes are traced too.
#
# Third-party noise is suppressed by scripts/valgrind.supp (each entry says why).
# Logs: build-valgrind/valgrind/<unit>/ (one vg.<pid>.log per process).
# Env: VALGRIND_JOBS (units run at once, default nproc), VALGRIND_FLAGS
# (extra valgrind flags, e.g. --track-origins=yes), VALGRIND_CLI_ALL=1 (drive
# every hostile case, also those a replay covers), SDMOE_FIXTURES.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD="$ROOT/build-valgrind"
LOGS="$BUILD/valgrind"
export SDMOE_FIXTURES="${SDMOE_FIXTURES:-$(cd .. && pwd)/shared/fixtures}"
HOSTILE="$ROOT/build-fuzz/hostile" # written and cached by scripts/fuzz.sh
VG_ERR=97                          # valgrind's exit status when it found an error

# Criterion executables and the suites of each that only parse (filters).
TESTS=(
  "test_safetensors *"
  "test_tokenizer *"
  "test_prompt_parser @(prompt_parser|prompt_chunks)/*"
  "test_image *"
  "test_infotext *"
  "test_batch @(batch_jobs|batch_manifest)/*"
  "test_model @(model|ldm_yaml|info)/*"
)
# Hostile cases that every reader accepts, so `sdmoe generate` runs the
# networks until it finds the NaN/Inf they make: numerics, not parsing (and
# minutes under valgrind, where oneDNN's JIT GEMM kernels read whole vectors
# past the ends of their own packing buffers).  tests/test_hostile.c still
# drives them through the real executable.
CLI_SKIP=" unet_weights_nan vae_weights_inf text_encoder_weights_nan "

usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

fuzz_targets() { "$ROOT/scripts/fuzz.sh" list; }

units() {
  local t
  # longest first: they start first when units run side by side
  printf '%s\n' test_model test_prompt_parser cli_info test_safetensors test_tokenizer test_image cli_merge cli_generate
  for t in $(fuzz_targets); do echo "replay_${t#fuzz_}"; done
  printf '%s\n' test_infotext test_batch cli_batch
}

# valgrind with the project's settings; add --log-file=DIR/vg.%p.log
# shellcheck disable=SC2206
VG=(valgrind --tool=memcheck --error-exitcode=$VG_ERR --leak-check=full --errors-for-leak-kinds=definite
  --show-leak-kinds=definite --num-callers=40 --suppressions="$ROOT/scripts/valgrind.supp" ${VALGRIND_FLAGS:-})

# Valgrind's verdict over a unit's logs: 0 clean, 1 with the reports printed.
verdict() { # unit
  local unit="$1" dir="$LOGS/$1" bad=() f
  for f in "$dir"/vg.*.log; do
    [ -e "$f" ] || continue
    if grep -qE "ERROR SUMMARY: [1-9]|Process terminating with default action|valgrind: the 'impossible' happened|memory management: out of memory" "$f"; then
      bad+=("$f")
    fi
  done
  [ ${#bad[@]} -eq 0 ] && return 0
  echo "valgrind-parsers: $unit: valgrind errors in ${#bad[@]} process(es):" >&2
  for f in "${bad[@]:0:3}"; do
    echo "---- $f" >&2
    sed -n '/Command:/p; /ERROR SUMMARY/p
      /^==[0-9]*== \(Invalid\|Conditional\|Use of uninit\|Syscall param\|Mismatched\|Source and destination\|Process terminating\|Argument\|.* definitely lost in\)/,/^==[0-9]*== *$/p' "$f" |
      head -40 >&2
  done
  return 1
}

run_replay() { # target
  local t="$1" dir="$LOGS/replay_${1#fuzz_}" seeds="$BUILD/seeds/$1"
  local inputs=("$seeds")
  [ -d "$ROOT/build-fuzz/corpus/$t" ] && inputs+=("$ROOT/build-fuzz/corpus/$t")
  OMP_NUM_THREADS=1 timeout 900 \
    "${VG[@]}" --log-file="$dir/vg.%p.log" "$BUILD/replay_${t#fuzz_}" -q "${inputs[@]}" >"$dir/out.txt" 2>&1
}

run_test() { # exe filter
  local exe="$1" filter="$2" dir="$LOGS/$1"
  # Criterion re-executes itself once per test: trace those and the sdmoe
  # commands tests start through the shell, not the helpers (rm, python3 ...).
  SDMOE_SOURCE_DIR="$ROOT" SDMOE_BIN="$BUILD/sdmoe" OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE timeout 900 \
    "${VG[@]}" --log-file="$dir/vg.%p.log" --trace-children=yes --trace-children-skip='*/rm,*/python3*,*/diff,*/cmp,*/timeout' \
    "$BUILD/$exe" --jobs 1 --timeout 600 --filter "$filter" >"$dir/out.txt" 2>&1
}

# The hostile cases of one sdmoe command, one "id<TAB>path" line each.  A
# case whose file at fault a replay unit already gives to the same reader
# in-process (its bytes are among that target's seeds) is left out: the
# command would stop at that reader too.  VALGRIND_CLI_ALL=1 keeps them.
cli_cases() { # drive
  python3 - "$HOSTILE" "$1" "$BUILD/seeds" "${VALGRIND_CLI_ALL:-0}" <<'EOF'
import hashlib, json, os, sys
hostile, drive, seeds, keep_all = sys.argv[1:5]
replayed_by = {"st_open": "fuzz_safetensors", "json": "fuzz_json_config", "unet_config": "fuzz_json_config",
               "vae_config": "fuzz_json_config", "clip_config": "fuzz_json_config",
               "ldm_yaml": "fuzz_ldm_yaml", "segmoe_yaml": "fuzz_segmoe_yaml", "image": "fuzz_image"}
def replayed(c):
    target = os.path.join(hostile, c.get("target") or "")
    if keep_all == "1" or c.get("lib") not in replayed_by or not os.path.isfile(target):
        return False
    try:
        with open(target, "rb") as f:
            sha = hashlib.sha1(f.read()).hexdigest()[:16]
    except OSError:
        return False
    return os.path.exists(os.path.join(seeds, replayed_by[c["lib"]], "seed-" + sha))
for c in json.load(open(os.path.join(hostile, "manifest.json")))["cases"]:
    if c.get("drive") == drive and c.get("expect") == "error" and not replayed(c):
        print(c["id"] + "\t" + c["path"])
EOF
}

run_cli() { # drive
  local drive="$1" dir="$LOGS/cli_$1" id path rc n=0 fails=0
  local work="$BUILD/valgrind/cli_$1.work"
  local model="$SDMOE_FIXTURES/tiny-sd15"
  while IFS=$'\t' read -r id path; do
    [[ "$CLI_SKIP" == *" $id "* ]] && continue
    rm -rf "$work"
    mkdir -p "$work"
    local args=()
    case "$drive" in
    info) args=(info -m "$HOSTILE/$path") ;;
    generate) args=(generate -m "$HOSTILE/$path" -p "a cat" -s 1 --steps 2 -W 64 -H 64 -t 1 -q -o "$work/out.png") ;;
    merge) args=(merge "$HOSTILE/$path" "$work/merged") ;;
    batch) args=(batch -m "$model" --jobs "$HOSTILE/$path" -o "$work/batch" --steps 1 -W 64 -H 64 -t 1 -q) ;;
    esac
    rc=0
    (cd "$work" && OMP_NUM_THREADS=1 timeout -k 5 300 "${VG[@]}" --log-file="$dir/vg.%p.log" "$BUILD/sdmoe" "${args[@]}") \
      >>"$dir/out.txt" 2>&1 </dev/null || rc=$?
    n=$((n + 1))
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 124 ]; then
      echo "valgrind-parsers: cli_$drive: $id: exit $rc (expected a refusal; 124+: timeout or signal)" >&2
      fails=$((fails + 1))
    fi
  done < <(cli_cases "$drive")
  rm -rf "$work"
  echo "cli_$drive: $n cases" >>"$dir/out.txt"
  [ "$n" -gt 0 ] || { echo "valgrind-parsers: cli_$drive: no cases in $HOSTILE/manifest.json" >&2; return 1; }
  [ "$fails" -eq 0 ]
}

run_unit() { # unit -> 0 pass
  local unit="$1" dir="$LOGS/$1" rc=0 start=$SECONDS line
  rm -rf "$dir"
  mkdir -p "$dir"
  case "$unit" in
  replay_*) run_replay "fuzz_${unit#replay_}" || rc=$? ;;
  cli_*) run_cli "${unit#cli_}" || rc=$? ;;
  test_*)
    rc=2
    for line in "${TESTS[@]}"; do
      if [ "${line%% *}" = "$unit" ]; then
        rc=0
        run_test "$unit" "${line#* }" || rc=$?
      fi
    done ;;
  *) rc=2 ;;
  esac
  local vrc=0
  verdict "$unit" || vrc=1
  local took=$((SECONDS - start)) summary
  summary=$(grep -hE "^replay: .* inputs|Synthesis|^cli_.*cases" "$dir/out.txt" 2>/dev/null | tail -1 |
    sed 's/^\[====\] //' || true)
  if [ "$vrc" -ne 0 ] || [ "$rc" -ne 0 ]; then
    local why="exit $rc"
    [ "$vrc" -ne 0 ] && why="valgrind errors, exit $rc"
    echo "valgrind-parsers: $unit: FAILED ($why) in ${took}s: $summary; logs $dir" >&2
    [ "$rc" -ne 0 ] && [ "$vrc" -eq 0 ] && tail -15 "$dir/out.txt" >&2
    return 1
  fi
  echo "valgrind-parsers: $unit: ok (${took}s, $(find "$dir" -name 'vg.*.log' | wc -l) processes) $summary" >&2
}

build() {
  local targets=(sdmoe) t line
  for t in $(fuzz_targets); do targets+=("replay_${t#fuzz_}"); done
  for line in "${TESTS[@]}"; do targets+=("${line%% *}"); done
  BUILD_DIR="$BUILD" SETUP_TARGETS="${targets[*]}" "$ROOT/scripts/setup.sh" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g" -DSDMOE_NATIVE=OFF \
    -DSDMOE_SANITIZE=OFF -DSDMOE_FUZZ=OFF -DSDMOE_FUZZ_REPLAY=ON -DSDMOE_TESTS=ON >"$BUILD/setup.log" 2>&1 || {
    tail -30 "$BUILD/setup.log" >&2
    echo "valgrind-parsers: build failed, see $BUILD/setup.log" >&2
    return 1
  }
  command -v valgrind >/dev/null || { echo "valgrind-parsers: valgrind not installed" >&2; return 1; }
}

seeds() {
  local t
  for t in $(fuzz_targets); do
    rm -rf "$BUILD/seeds/$t"
    "$ROOT/scripts/fuzz.sh" seeds "$t" "$BUILD/seeds/$t"
  done
  [ -f "$HOSTILE/manifest.json" ] || { echo "valgrind-parsers: no hostile corpus in $HOSTILE" >&2; exit 1; }
}

case "${1:-}" in
-h | --help) usage ;;
list) units; exit 0 ;;
esac
todo=("$@")
[ ${#todo[@]} -gt 0 ] || mapfile -t todo < <(units)
all_units=" $(units | tr '\n' ' ') "
for u in "${todo[@]}"; do
  [[ "$all_units" == *" $u "* ]] || { echo "valgrind-parsers: no unit $u (see: $0 list)" >&2; exit 2; }
done

t0=$SECONDS
mkdir -p "$BUILD"
seeds >"$BUILD/seeds.log" 2>&1 & # meanwhile
seeds_pid=$!
build || { kill "$seeds_pid" 2>/dev/null; exit 1; }
wait "$seeds_pid" || { cat "$BUILD/seeds.log" >&2; echo "valgrind-parsers: seeding failed" >&2; exit 1; }
echo "valgrind-parsers: built and seeded in $((SECONDS - t0))s; ${#todo[@]} units" >&2
mkdir -p "$LOGS"
jobs_max="${VALGRIND_JOBS:-$(nproc)}"
failed=()
declare -A pid_unit=()
running=0
reap() { # waits for one unit
  local pid rc=0
  wait -n -p pid || rc=$?
  [ "$rc" -ne 0 ] && failed+=("${pid_unit[$pid]}")
  running=$((running - 1))
}
for u in "${todo[@]}"; do
  [ "$running" -ge "$jobs_max" ] && reap
  run_unit "$u" &
  pid_unit[$!]="$u"
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do reap; done

if [ ${#failed[@]} -gt 0 ]; then
  echo "valgrind-parsers: FAILED: ${failed[*]} ($((SECONDS - t0))s)" >&2
  exit 1
fi
echo "valgrind-parsers: all ${#todo[@]} units clean ($((SECONDS - t0))s)" >&2
