#!/usr/bin/env bash
# Builds and runs sdmoe's libFuzzer targets (tests/fuzz/fuzz_*.c, issue 10).
#
#   scripts/fuzz.sh TARGET SECONDS    build and run one target, e.g. `safetensors`
#   scripts/fuzz.sh all SECONDS       each target in turn, SECONDS each
#   scripts/fuzz.sh list              the targets
#   scripts/fuzz.sh triage TARGET     replay its crash artifacts, one line per distinct bug
#   scripts/fuzz.sh seeds TARGET DIR  only write its seeds into DIR (no build; valgrind-parsers.sh)
#
# Build: build-fuzz/ (clang, -DSDMOE_FUZZ=ON -DSDMOE_SANITIZE=ON: libFuzzer +
# ASan + UBSan).  Seeds are copied at run time from the fixtures
# ($SDMOE_FIXTURES, default ../shared/fixtures) and from the hostile corpus
# (scripts/make_hostile_corpus.py) into build-fuzz/seeds/<target>/; what the
# fuzzer learns accumulates in build-fuzz/corpus/<target>/ between runs.
# A crashing input lands in build-fuzz/artifacts/<target>/ and the script
# exits 1 naming it; reproduce with `build-fuzz/fuzz_<target> FILE`.
# FUZZ_KEEP_GOING=1 keeps fuzzing past crashes (libFuzzer fork mode) and
# collects every crashing input; FUZZ_FLAGS adds libFuzzer flags.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD="$ROOT/build-fuzz"
export SDMOE_FIXTURES="${SDMOE_FIXTURES:-$(cd .. && pwd)/shared/fixtures}"
FX="$SDMOE_FIXTURES"

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

targets() {
  local f
  for f in "$ROOT"/tests/fuzz/fuzz_*.c; do
    [ -e "$f" ] || continue
    basename "$f" .c
  done
}

normalise() { # "safetensors" | "fuzz_safetensors" -> "fuzz_safetensors"
  local t="${1%.c}"
  t="${t#fuzz_}"
  echo "fuzz_$t"
}

install_clang() { # libFuzzer needs clang and its runtime (Debian packages)
  local missing=()
  for p in clang libclang-rt-14-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

configure() {
  install_clang
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DSDMOE_FUZZ=ON -DSDMOE_SANITIZE=ON -DSDMOE_TESTS=OFF >/dev/null
  else
    cmake "$BUILD" >/dev/null # picks up new tests/fuzz/fuzz_*.c
  fi
}

build() { # target -> 0 if built
  cmake --build "$BUILD" --target "$1" -j"$(nproc)" >"$BUILD/logs/$1.build.log" 2>&1 || {
    echo "fuzz.sh: $1: build failed, see $BUILD/logs/$1.build.log" >&2
    grep -E "error|undefined reference" "$BUILD/logs/$1.build.log" | head -5 >&2
    return 1
  }
}

hostile() { # the hostile corpus, regenerated when the script changes
  local dir="$BUILD/hostile" stamp="$BUILD/hostile.stamp"
  if [ ! -f "$dir/manifest.json" ] || [ "$ROOT/scripts/make_hostile_corpus.py" -nt "$stamp" ]; then
    rm -rf "$dir"
    python3 "$ROOT/scripts/make_hostile_corpus.py" "$dir" --fixtures "$FX" \
      --only safetensors,model,ldm_yaml,segmoe_yaml,jobs,image >/dev/null
    touch "$stamp"
  fi
  echo "$dir"
}

# copy_seeds DEST MAXBYTES FILES... : regular files only (no FIFOs, no /dev/zero links)
copy_seeds() {
  local dest="$1" max="$2" f n=0
  shift 2
  for f in "$@"; do
    [ -f "$f" ] || continue
    [ "$(stat -L -c %s "$f")" -le "$max" ] || continue
    cp -L "$f" "$dest/seed-$(sha1sum <"$f" | cut -c1-16)" 2>/dev/null && n=$((n + 1))
  done
  echo "$n"
}

# Per target: seed files, max_len and dictionary.
seed_target() { # target dest -> prints "max_len dict"
  local t="$1" dest="$2" h
  h=$(hostile)
  shopt -s nullglob globstar
  case "$t" in
  fuzz_safetensors)
    copy_seeds "$dest" 262144 "$FX"/**/*.safetensors "$h"/safetensors/*.safetensors >/dev/null
    echo "262144 json.dict" ;;
  fuzz_json_config)
    copy_seeds "$dest" 65536 "$FX"/tiny-sd15/**/*.json "$FX"/moe/tiny-*/**/*.json "$FX"/moe/*.json \
      "$FX"/sdxl/tiny-sdxl/**/*.json "$h"/models/*/**/*.json >/dev/null
    echo "65536 json.dict" ;;
  fuzz_ldm_yaml | fuzz_segmoe_yaml)
    copy_seeds "$dest" 65536 "$FX"/*.yaml "$FX"/moe/*.yaml "$FX"/sdxl/moe/*.yaml "$h"/ldm/*/model.yaml \
      "$h"/segmoe/*.yaml tests/fuzz/seeds/*.yaml >/dev/null
    echo "65536 yaml.dict" ;;
  fuzz_image)
    copy_seeds "$dest" 65536 "$FX"/**/*.png "$h"/images/* >/dev/null
    echo "65536 image.dict" ;;
  fuzz_tokenizer_files)
    python3 - "$FX/tiny-sd15/tokenizer/special_tokens_map.json" "$dest" <<'EOF' || true
import json, os, sys
vocab = {"<|startoftext|>": 49406, "<|endoftext|>": 49407, "a": 64, "c": 66, "t": 83, "a</w>": 320,
         "t</w>": 339, "ca": 1345, "cat</w>": 2368, ",</w>": 267, "!": 0}
merges = "#version: 0.2\nc a\nca t</w>\na t</w>\n"
try:
    smap = open(sys.argv[1], "rb").read()
except OSError:
    smap = b'{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}'
seeds = [json.dumps(vocab).encode() + b"\0" + merges.encode(),
         json.dumps(vocab).encode() + b"\0" + merges.encode() + b"\0" + smap,
         json.dumps(vocab).encode()]
for i, s in enumerate(seeds):
    open(os.path.join(sys.argv[2], "seed-tok-%d" % i), "wb").write(s)
EOF
    echo "65536 json.dict" ;;
  fuzz_utf8 | fuzz_tokenizer | fuzz_prompt)
    python3 - "$FX/refs/cases.json" "$dest" <<'EOF' || true
import json, os, sys, hashlib
try:
    cases = json.load(open(sys.argv[1]))
except OSError:
    sys.exit(0)
out = []
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k in ("prompt", "text", "negative_prompt") and isinstance(x, str):
                out.append(x.encode("utf-8", "surrogatepass"))
            elif k.endswith("utf8_hex") and isinstance(x, str):
                try: out.append(bytes.fromhex(x))
                except ValueError: pass
            else: walk(x)
    elif isinstance(v, list):
        for x in v: walk(x)
walk(cases)
out += [b"(masterpiece:1.2), [blurry|sharp], ((cat)), \\(literal\\) BREAK [dog:cat:0.5] <lora:x:1>",
        b"(" * 200 + b"x" + b")" * 200, b"\xff\xfe\xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80"]
for b in out:
    open(os.path.join(sys.argv[2], "seed-" + hashlib.sha1(b).hexdigest()[:16]), "wb").write(b)
EOF
    copy_seeds "$dest" 16384 "$h"/jobs/*.jsonl >/dev/null
    echo "16384 -" ;;
  fuzz_jobs)
    copy_seeds "$dest" 65536 "$h"/jobs/*.jsonl >/dev/null
    printf '%s\n' '{"prompt": "a cat", "negative_prompt": "blurry", "seed": 42, "steps": 20, "cfg_scale": 7.5}' \
      '{"prompt": "a dog", "width": 512, "height": 768, "sampler": "euler_a", "scheduler": "karras", "count": 2}' \
      '{"prompt": "x", "name": "my image", "clip_skip": 2, "_note": "ignored", "negative_prompt": null}' \
      >"$dest/seed-jobs-jsonl"
    printf 'a photo of a cat\n\n  an oil painting of a dog  \n(masterpiece:1.2), castle\n' >"$dest/seed-jobs-text"
    printf '%s\n' '{"file": "0001-00.png", "sha256": "'"$(printf 'a%.0s' $(seq 64))"'", "params_sha256": "'"$(printf 'b%.0s' $(seq 64))"'", "seconds": 1.5}' \
      >"$dest/seed-manifest"
    echo "65536 json.dict" ;;
  fuzz_weight_cache) # valid cache files (the harness writes the identity bytes in)
    python3 - "$dest" <<'EOF' || true
import os, struct, sys
def cache(entries):
    index = b""
    off = 4096
    data = []
    for key, payload in entries:
        k = key.encode()
        rec = struct.pack("<QQI", off, len(payload), len(k)) + k
        index += rec + b"\0" * (-len(rec) % 8)
        data.append((off, payload))
        off = (off + len(payload) + 4095) // 4096 * 4096
    size = data[-1][0] + len(data[-1][1])
    head = b"SDMOEWC1" + struct.pack("<IIQQQ", 1, len(entries), len(index), 4096, size) + b"\0" * 32
    out = bytearray(head + index)
    out += b"\0" * (4096 - len(out))
    for o, payload in data:
        out += b"\0" * (o - len(out)) + payload
    return bytes(out)
seeds = {"one": cache([("k", bytes(range(16)))]),
         "two": cache([("a", b"\1" * 4096), ("k", bytes(range(16)))])}
for name, b in seeds.items():
    open(os.path.join(sys.argv[1], "seed-wc-" + name), "wb").write(b)
EOF
    echo "16384 -" ;;
  *)
    echo "4096 -" ;;
  esac
}

run_one() { # target seconds -> 0 ok, 1 crash/failure
  local t="$1" secs="$2"
  build "$t" || return 1
  local seeds="$BUILD/seeds/$t" corpus="$BUILD/corpus/$t" art="$BUILD/artifacts/$t" log="$BUILD/logs/$t.log"
  rm -rf "$seeds"
  mkdir -p "$seeds" "$corpus" "$art"
  local cfg max dict
  cfg=$(seed_target "$t" "$seeds")
  max=${cfg%% *}
  dict=${cfg##* }
  local args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -malloc_limit_mb=2048 -max_len="$max"
    -print_final_stats=1 -artifact_prefix="$art/")
  [ "$dict" != "-" ] && args+=(-dict="$ROOT/tests/fuzz/$dict")
  [ "${FUZZ_KEEP_GOING:-0}" = 1 ] && args+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  touch "$BUILD/logs/$t.start"
  echo "fuzz.sh: $t: ${secs}s, $(ls "$seeds" | wc -l) seeds, $(ls "$corpus" | wc -l) in corpus" >&2
  local rc=0
  # shellcheck disable=SC2086
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}" \
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
  OMP_NUM_THREADS=1 \
    "$BUILD/$t" "${args[@]}" ${FUZZ_FLAGS:-} "$corpus" "$seeds" >"$log" 2>&1 || rc=$?
  # private folders of crashed fuzz_tokenizer_files / fuzz_jobs processes, fuzz_weight_cache's folder
  rm -rf /dev/shm/sdmoe-fuzz-tok-* /tmp/sdmoe-fuzz-tok-* /dev/shm/sdmoe-fuzz-jobs-* /tmp/sdmoe-fuzz-jobs-* \
    /tmp/sdmoe-fuzz-wc-* "${TMPDIR:-/tmp}"/sdmoe-fuzz-wc-* \
    2>/dev/null || true
  local found
  found=$(find "$art" -type f -newer "$BUILD/logs/$t.start" | wc -l)
  if [ "$rc" -ne 0 ] || [ "$found" -gt 0 ]; then
    echo "fuzz.sh: $t: FAILED (exit $rc); log $log" >&2
    grep -E "^(==[0-9]+==ERROR|SUMMARY|.*runtime error|.*fuzz invariant failed|artifact_prefix|Test unit written)" \
      "$log" | head -8 >&2 || true
    local a n=0
    for a in $(find "$art" -type f -newer "$BUILD/logs/$t.start"); do
      n=$((n + 1))
      [ "$n" -le 3 ] && echo "fuzz.sh: $t: reproduce: $BUILD/$t $a" >&2
    done
    [ "$n" -gt 3 ] && echo "fuzz.sh: $t: $n inputs in $art; distinct bugs: scripts/fuzz.sh triage ${t#fuzz_}" >&2
    return 1
  fi
  { grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+.*DONE)" "$log" || tail -1 "$log"; } |
    tr '\n' ' ' >&2 || true
  echo >&2
  echo "fuzz.sh: $t: ok" >&2
}

# Replays every artifact of a target and groups them by the first stack
# frame inside the sdmoe sources (or the sanitizer summary).
triage() {
  local t="$1" a out key
  declare -A seen=()
  for a in "$BUILD/artifacts/$t"/*; do
    [ -f "$a" ] || continue
    out=$(ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 SDMOE_FIXTURES="$FX" \
      timeout 60 "$BUILD/$t" "$a" 2>&1 || true)
    key=$(echo "$out" | grep -m1 -E "(fuzz invariant failed|runtime error:)" | sed -E 's/^.*\/work\/main\///' || true)
    [ -n "$key" ] || key=$(echo "$out" | grep -E "^ +#[0-9]+ .* in .* $ROOT/(core|text_encoder|unet|vae|sampler|moe_merge|cli)/" |
      head -1 | sed -E "s|^.* in ([^ ]+) $ROOT/|\1 |")
    [ -n "$key" ] || key=$(echo "$out" | grep -m1 -E "^SUMMARY|ERROR: libFuzzer" || echo "no longer reproduces")
    key="$(echo "$out" | grep -m1 -oE "ERROR: (AddressSanitizer|LeakSanitizer): [a-z-]+" | sed 's/ERROR: //' ||
      true) $key"
    if [ -z "${seen[$key]:-}" ]; then
      seen[$key]=1
      echo "$key"
      echo "    e.g. $BUILD/$t $a"
    fi
  done
}

[ $# -ge 1 ] || usage
case "$1" in
list) targets; exit 0 ;;
triage) [ $# -eq 2 ] || usage; triage "$(normalise "$2")"; exit 0 ;;
seeds) [ $# -eq 3 ] || usage; mkdir -p "$BUILD" "$3"; seed_target "$(normalise "$2")" "$3" >/dev/null; exit 0 ;;
-h | --help) usage ;;
esac
[ $# -eq 2 ] || usage
case "$2" in '' | *[!0-9]*) usage ;; esac
mkdir -p "$BUILD/logs"
configure
if [ "$1" = all ]; then
  failed=()
  for t in $(targets); do
    run_one "$t" "$2" || failed+=("$t")
  done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: failed: ${failed[*]}" >&2
    exit 1
  fi
  echo "fuzz.sh: all targets ok" >&2
else
  t=$(normalise "$1")
  [ -f "$ROOT/tests/fuzz/$t.c" ] || { echo "fuzz.sh: no target $t (see: scripts/fuzz.sh list)" >&2; exit 2; }
  run_one "$t" "$2"
fi
