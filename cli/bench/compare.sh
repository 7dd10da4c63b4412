#!/usr/bin/env bash
# hafs beside the passthrough-FUSE ceiling (bindfs over tmpfs) and the
# kernel ceiling (tmpfs), in one run: every workload of `hafs bench dir` on
# each target in alternation, ROUNDS times, then hafs/bindfs and hafs/tmpfs
# ratios (min/median/max over rounds), raw durable SQLite commits/s on the
# disk holding hafs's database, and the issue's targets. Root, /dev/fuse.
#
#   cli/bench/compare.sh [ROUNDS] [-- extra `hafs bench dir` flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
shift || true
[[ ${1:-} == -- ]] && shift
extra=("$@")
command -v bindfs >/dev/null || apt-get install -y -qq bindfs >/dev/null
cargo build --release -q -p hafs-cli
hafs=$PWD/target/release/hafs
work=$(mktemp -d /var/tmp/hafs-compare.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for m in "$work"/mnt/*; do umount -l "$m" 2>/dev/null || true; done
  umount -l "$work/tmpfs" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/tmpfs" "$work/mnt/durable" "$work/mnt/relaxed" "$work/mnt/bindfs"
mount -t tmpfs -o size=8g tmpfs "$work/tmpfs"
mkdir -p "$work/tmpfs/plain" "$work/tmpfs/under-bindfs"
bindfs "$work/tmpfs/under-bindfs" "$work/mnt/bindfs"
"$hafs" --kv "sqlite://$work/durable.db" mount --mkfs "$work/mnt/durable" 2>"$work/durable.log" & pids+=($!)
"$hafs" --kv "sqlite://$work/relaxed.db" --relaxed-durability mount --mkfs "$work/mnt/relaxed" 2>"$work/relaxed.log" & pids+=($!)
for m in durable relaxed; do
  for _ in $(seq 100); do mountpoint -q "$work/mnt/$m" && break; sleep 0.1; done
done
targets=(durable relaxed bindfs tmpfs)
path_of() { case $1 in tmpfs) echo "$work/tmpfs/plain" ;; *) echo "$work/mnt/$1" ;; esac; }
: >"$work/results.jsonl"
for r in $(seq "$rounds"); do
  for t in "${targets[@]}"; do
    echo "round $r/$rounds: $t" >&2
    json=$("$hafs" bench dir "$(path_of "$t")" --json "${extra[@]}")
    echo "{\"round\":$r,\"target\":\"$t\",\"m\":$json}" >>"$work/results.jsonl"
  done
  sq=$("$hafs" bench sqlite-commits "$work" --json)
  echo "{\"round\":$r,\"target\":\"sqlite\",\"m\":$sq}" >>"$work/results.jsonl"
done
echo "machine: $(nproc) cores, $(uname -r), hafs database on $(df --output=source "$work" | tail -1)"
python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    for k, v in r["m"].items():
        by.setdefault((r["target"], k), []).append(v)
def med(t, k):
    v = by.get((t, k)); return statistics.median(v) if v else None
metrics = sorted({k for (t, k) in by if t != "sqlite"})
# lower is better for these
lower = lambda k: k.endswith(("_median", "_p99", ".readdir"))
print(f"{'metric':<32} {'durable':>12} {'relaxed':>12} {'bindfs':>12} {'tmpfs':>12} {'relaxed/bindfs (min/med/max)':>30} {'relaxed/tmpfs':>14}")
for k in metrics:
    vals = [med(t, k) for t in ("durable", "relaxed", "bindfs", "tmpfs")]
    ratios = []
    for a, b in zip(by.get(("relaxed", k), []), by.get(("bindfs", k), [])):
        if a and b: ratios.append(b / a if lower(k) else a / b)
    rt = (med("tmpfs", k) / med("relaxed", k) if lower(k) else med("relaxed", k) / med("tmpfs", k)) if med("relaxed", k) and med("tmpfs", k) else float("nan")
    rb = f"{min(ratios):.2f}/{statistics.median(ratios):.2f}/{max(ratios):.2f}" if ratios else "-"
    fmt = lambda x: f"{x:12.1f}" if x is not None else f"{'-':>12}"
    print(f"{k:<32} {''.join(fmt(v)+' ' for v in vals)}{rb:>30} {rt:14.3f}")
sq = med("sqlite", "sqlite.durable_commits")
print(f"\nraw SQLite durable commits/s (same disk as hafs's database): {sq:.0f}")
def check(name, value, bar):
    print(f"  {'PASS' if value >= bar else 'MISS'} {name}: {value:.2f} (target >= {bar})")
print("targets (medians; 'higher is better' ratios):")
check("durable creates/s vs raw SQLite durable commits/s", med("durable", "meta.private.create") / sq, 0.8)
for k, bar in [("meta.private.create", 0.5), ("meta.private.unlink", 0.5), ("meta.private.stat", 0.7), ("config.updates", 0.5), ("io.seq_read", 0.5)]:
    check(f"relaxed {k} vs bindfs", med("relaxed", k) / med("bindfs", k), bar)
check("big directory: last tenth / first tenth (durable)", med("durable", "bigdir.last_over_first"), 0.8)
PY
