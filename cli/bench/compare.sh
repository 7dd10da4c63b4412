#!/usr/bin/env bash
# hafs beside the passthrough-FUSE ceiling (bindfs over tmpfs) and the
# kernel ceiling (tmpfs), in one run: every workload of `hafs bench dir` on
# each target in alternation, ROUNDS times, then hafs/bindfs and hafs/tmpfs
# ratios (min/median/max over rounds), raw durable SQLite commits/s on the
# disk holding hafs's database, and the issue's targets. The two-mount
# variant runs the same workloads across two mounts of one filesystem
# (`hafs bench dir --other-mount`): two relaxed hafs mounts of one database
# beside two bindfs mounts of one tmpfs directory. Every other hafs target
# is the only client of its filesystem, so it holds the cache lease
# (attributes cached 1 s, as bindfs does, and names in directories everyone
# may search); one more column, `cached`, is a relaxed mount with
# `-o default_permissions`, which lets the lease cache every name. Root,
# /dev/fuse.
#
#   cli/bench/compare.sh [ROUNDS] [-- extra `hafs bench dir` flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
shift || true
[[ ${1:-} == -- ]] && shift
extra=("$@")
source cli/bench/lib.sh
bench_setup hafs-compare durable relaxed relaxed2-a relaxed2-b cached bindfs bindfs-b
mkdir -p "$work/tmpfs/plain" "$work/tmpfs/under-bindfs"
bindfs "$work/tmpfs/under-bindfs" "$work/mnt/bindfs"
bindfs "$work/tmpfs/under-bindfs" "$work/mnt/bindfs-b"
"$hafs" --kv "sqlite://$work/durable.db" mount --mkfs "$work/mnt/durable" 2>"$work/durable.log" & pids+=($!)
"$hafs" --kv "sqlite://$work/relaxed.db" --relaxed-durability mount --mkfs "$work/mnt/relaxed" 2>"$work/relaxed.log" & pids+=($!)
"$hafs" --kv "sqlite://$work/cached.db" --relaxed-durability mount --mkfs -o default_permissions "$work/mnt/cached" 2>"$work/cached.log" & pids+=($!)
"$hafs" --kv "sqlite://$work/relaxed2.db" --relaxed-durability mount --mkfs "$work/mnt/relaxed2-a" 2>"$work/relaxed2-a.log" & pids+=($!)
wait_mounted "$work"/mnt/{durable,relaxed,cached,relaxed2-a}
"$hafs" --kv "sqlite://$work/relaxed2.db" --relaxed-durability mount "$work/mnt/relaxed2-b" 2>"$work/relaxed2-b.log" & pids+=($!)
wait_mounted "$work/mnt/relaxed2-b"
# relaxed2 / bindfs2: the two-mount variant.
targets=(durable relaxed relaxed2 cached bindfs bindfs2 tmpfs)
args_of() {
  case $1 in
    tmpfs) echo "$work/tmpfs/plain" ;;
    relaxed2) echo "$work/mnt/relaxed2-a --other-mount $work/mnt/relaxed2-b" ;;
    bindfs2) echo "$work/mnt/bindfs --other-mount $work/mnt/bindfs-b" ;;
    *) echo "$work/mnt/$1" ;;
  esac
}
# Before each target: let the previous one's background work end (a hafs
# mount checkpoints its WAL within a second of the last write; the kernel
# writes back dirty pages on its own schedule), so that no target is
# measured against the disk traffic its predecessor left behind. Without
# this, two identical binaries mounted side by side differed by 3x in
# sequential writes, whichever ran right after a 128 MiB write.
settle() {
  sleep 1.5
  sync
}
: >"$work/results.jsonl"
for r in $(seq "$rounds"); do
  for t in "${targets[@]}"; do
    echo "round $r/$rounds: $t" >&2
    settle
    read -ra where <<<"$(args_of "$t")"
    json=$("$hafs" bench dir "${where[@]}" --json "${extra[@]}")
    echo "{\"round\":$r,\"target\":\"$t\",\"m\":$json}" >>"$work/results.jsonl"
  done
  settle
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
cols = ("durable", "relaxed", "relaxed2", "cached", "bindfs", "bindfs2", "tmpfs")
def ratios(a, b, k):
    out = []
    for x, y in zip(by.get((a, k), []), by.get((b, k), [])):
        if x and y: out.append(y / x if lower(k) else x / y)
    return f"{min(out):.2f}/{statistics.median(out):.2f}/{max(out):.2f}" if out else "-"
print("relaxed2 and bindfs2: two mounts of one filesystem (the two-mount variant)")
print("durable, relaxed: the only client of their filesystem (attributes, and names in directories everyone may search, cached under the lease)")
print("cached: relaxed, only client, -o default_permissions (every name cached under the lease)")
print(f"{'metric':<32} " + " ".join(f"{c:>10}" for c in cols)
      + f" {'relaxed/bindfs':>16} {'relaxed2/bindfs2':>17} {'cached/bindfs':>16} {'relaxed/tmpfs':>14}")
for k in metrics:
    fmt = lambda x: f"{x:10.1f}" if x is not None else f"{'-':>10}"
    rt = ratios("relaxed", "tmpfs", k)
    rt = rt.split("/")[1] if rt != "-" else rt
    print(f"{k:<32} " + " ".join(fmt(med(c, k)) for c in cols)
          + f" {ratios('relaxed', 'bindfs', k):>16} {ratios('relaxed2', 'bindfs2', k):>17}"
          + f" {ratios('cached', 'bindfs', k):>16} {rt:>14}")
print("ratios: min/median/max over rounds, higher is better")
sq = med("sqlite", "sqlite.durable_commits")
print(f"\nraw SQLite durable commits/s (same disk as hafs's database): {sq:.0f}")
def check(name, a, b, bar):
    """One target: a / b (or a alone) against bar; skipped when a workload did not run."""
    if a is None or (b is not None and not b):
        return
    value = a / b if b is not None else a
    print(f"  {'PASS' if value >= bar else 'MISS'} {name}: {value:.2f} (target >= {bar})")
print("targets (medians; 'higher is better' ratios):")
check("durable creates/s vs raw SQLite durable commits/s", med("durable", "meta.private.create"), sq, 0.8)
for k, bar in [("meta.private.create", 0.5), ("meta.private.unlink", 0.5), ("meta.private.stat", 0.7), ("config.updates", 0.5), ("io.seq_read", 0.5)]:
    check(f"relaxed {k} vs bindfs", med("relaxed", k), med("bindfs", k) or 0, bar)
    check(f"  with -o default_permissions: {k} vs bindfs", med("cached", k), med("bindfs", k) or 0, bar)
check("big directory: last tenth / first tenth (durable)", med("durable", "bigdir.last_over_first"), None, 0.8)
PY
