#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine runs `sdmoe batch` as a
# 2-task job array (`sbatch --array=0-1`, each task `--shard auto`), and the
# union of the two shards must equal an unsharded run: the same file names
# and the same bytes.  See docs/batch.md.
#
#   scripts/slurm-test.sh            (root, or passwordless sudo)
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge when missing
# (apt-get, non-interactive).  Everything else lives in a private state
# folder: its own munge key and socket, slurm.conf on ports 16817/16818
# (SLURM_CONF points there), proctrack/linuxproc, no cgroups, no accounting.
# The daemons it starts are stopped (by their pid files) on exit.
#
# Exit status: 0 = pass, 1 = fail.  If the daemons cannot start here (no
# root, a sandbox forbidding them), it prints "SKIP: ..." and exits 0.
# Environment: SDMOE_BIN (default build/sdmoe, built when missing),
# SLURM_TEST_TIMEOUT (seconds to wait for the array, default 300),
# SLURM_TEST_KEEP=1 keeps the state folder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TIMEOUT=${SLURM_TEST_TIMEOUT:-300}

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "SKIP: slurm-test needs root (or passwordless sudo) to install and start munged, slurmctld and slurmd"
    exit 0
  fi
fi

# ---- packages ----
need=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "slurm-test: installing ${need[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  # policy-rc.d keeps the packages' own services from starting.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

# ---- sdmoe ----
BIN=${SDMOE_BIN:-$ROOT/build/sdmoe}
if [ ! -x "$BIN" ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j2 --target sdmoe >/dev/null
  BIN=$ROOT/build/sdmoe
fi
BIN=$(readlink -f "$BIN")
MODEL=$ROOT/assets/tiny-sd15

# ---- private state ----
S=$(mktemp -d /tmp/sdmoe-slurm-XXXXXX)
chmod 0755 "$S"
mkdir -p "$S/munge" "$S/ctld" "$S/spool" "$S/work"
chmod 0700 "$S/munge"
PIDS=()
cleanup() {
  local rc=$?
  if [ -n "${JOBID:-}" ]; then scancel "$JOBID" >/dev/null 2>&1 || true; fi
  for f in "$S/slurmd.pid" "$S/slurmctld.pid" "$S/munge/munged.pid"; do
    if [ -s "$f" ]; then $SUDO kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  sleep 1
  for f in "$S/slurmd.pid" "$S/slurmctld.pid" "$S/munge/munged.pid"; do
    if [ -s "$f" ]; then $SUDO kill -9 "$(cat "$f")" 2>/dev/null || true; fi
  done
  if [ "${SLURM_TEST_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then echo "slurm-test: state kept in $S"; else $SUDO rm -rf "$S"; fi
  exit $rc
}
trap cleanup EXIT

skip() {
  echo "SKIP: $1"
  for f in "$S"/*.log "$S"/munge/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done
  exit 0
}
fail() {
  echo "FAIL: $1"
  for f in "$S"/*.log "$S"/munge/*.log "$S"/work/task-*.out; do [ -f "$f" ] && { echo "--- $f"; tail -n 25 "$f"; }; done
  exit 1
}

# munge: own key, socket and pid file (the key must be private to its owner)
dd if=/dev/urandom of="$S/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$S/munge/munge.key"
$SUDO munged --force --socket="$S/munge/munge.sock" --key-file="$S/munge/munge.key" \
  --pid-file="$S/munge/munged.pid" --log-file="$S/munge/munged.log" --seed-file="$S/munge/munged.seed" \
  || skip "munged does not start in this environment"

HOST=$(hostname -s)
CPUS=$(nproc)
export SLURM_CONF="$S/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=sdmoe-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$S/munge/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=test Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

$SUDO env SLURM_CONF="$SLURM_CONF" slurmctld -i || skip "slurmctld does not start in this environment"
$SUDO env SLURM_CONF="$SLURM_CONF" slurmd || skip "slurmd does not start in this environment"

# the node must come up idle
up=0
for _ in $(seq 1 60); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)
  case "$state" in idle*|mixed*|allocated*) up=1; break ;; esac
  sleep 1
done
[ $up = 1 ] || skip "the Slurm node never became idle (state '${state:-none}')"
echo "slurm-test: Slurm is up (node $HOST, $CPUS CPUs)"

# ---- the batch: unsharded reference, then the 2-task array ----
W=$S/work
cat >"$W/jobs.jsonl" <<'EOF'
{"prompt": "a red apple on a table", "seed": 1}
{"prompt": "a blue car", "count": 2, "seed": 20}
{"prompt": "a green tree", "name": "tree"}
{"prompt": "a yellow house", "negative_prompt": "blurry", "steps": 3}
{"prompt": "a white cat", "sampler": "ddim"}
EOF
FLAGS=(-m "$MODEL" --jobs "$W/jobs.jsonl" -W 64 -H 64 --steps 2 --sampler euler -t 1 -s 7)

"$BIN" batch "${FLAGS[@]}" -o "$W/ref" -q || fail "the unsharded run failed"

cat >"$W/array.sh" <<EOF
#!/bin/sh
echo "task \$SLURM_ARRAY_TASK_ID of \$SLURM_ARRAY_TASK_COUNT on \$(hostname)"
"$BIN" batch ${FLAGS[*]@Q} -o "$W/sharded" --shard auto
echo "sdmoe exit status \$?"
EOF
chmod +x "$W/array.sh"
JOBID=$(sbatch --parsable --array=0-1 --cpus-per-task=1 --chdir="$W" --output="$W/task-%a.out" \
  --job-name=sdmoe-batch "$W/array.sh") || fail "sbatch refused the array"
JOBID=${JOBID%%;*}
echo "slurm-test: submitted array job $JOBID"

deadline=$((SECONDS + TIMEOUT))
while squeue -h -j "$JOBID" 2>/dev/null | grep -q .; do
  [ $SECONDS -lt $deadline ] || fail "the array did not finish within ${TIMEOUT}s"
  sleep 1
done
JOBID_DONE=$JOBID
JOBID=""

# each task must have exited 0
for t in 0 1; do
  [ -f "$W/task-$t.out" ] || fail "task $t left no output"
  grep -q "^sdmoe exit status 0$" "$W/task-$t.out" || fail "task $t failed"
  grep -q "shard $t/2 from Slurm array task" "$W/task-$t.out" || fail "task $t did not read its shard from Slurm"
done
[ -s "$W/sharded/manifest.shard-0-of-2.jsonl" ] && [ -s "$W/sharded/manifest.shard-1-of-2.jsonl" ] \
  || fail "a shard's manifest is missing"

# ---- the union equals the unsharded run ----
ref_list=$(cd "$W/ref" && ls -1 *.png)
got_list=$(cd "$W/sharded" && ls -1 *.png)
[ "$ref_list" = "$got_list" ] || fail "file names differ: unsharded [$ref_list] vs shards [$got_list]"
n=0
for f in $ref_list; do
  cmp -s "$W/ref/$f" "$W/sharded/$f" || fail "$f differs between the unsharded run and the shards"
  n=$((n + 1))
done
echo "PASS: Slurm array job $JOBID_DONE (2 tasks, --shard auto) rendered the same $n PNGs as the unsharded run"
