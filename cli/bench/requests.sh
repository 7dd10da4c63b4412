#!/usr/bin/env bash
# Where a metadata operation's time goes, one FUSE request at a time: runs
# single-threaded create / stat / config-update / unlink loops on hafs
# (relaxed SQLite; relaxed with -o default_permissions; the in-memory KV,
# which shows the cost of everything but storage) and on bindfs over tmpfs,
# traces every request with the kernel's fuse:fuse_request_send and
# fuse:fuse_request_end tracepoints, and prints per operation: its rate,
# the requests it took (by opcode) and each opcode's median and p90 time
# from the kernel sending the request to the daemon's reply. Single-
# threaded on purpose: the latencies are service times, not queueing.
# Root, /dev/fuse, perf (installed if missing).
#
#   cli/bench/requests.sh [FILES]
set -euo pipefail
cd "$(dirname "$0")/../.."
files=${1:-2000}
command -v perf >/dev/null || apt-get install -y -qq linux-perf >/dev/null
perf list 2>/dev/null | grep fuse:fuse_request_send >/dev/null || {
  echo "requests.sh: this kernel has no fuse:fuse_request_send tracepoint" >&2
  exit 1
}
source cli/bench/lib.sh
bench_setup hafs-requests relaxed cached mem bindfs
bindfs "$work/tmpfs" "$work/mnt/bindfs"
"$hafs" --kv "sqlite://$work/relaxed.db" --relaxed-durability mount --mkfs "$work/mnt/relaxed" 2>"$work/relaxed.log" & pids+=($!)
"$hafs" --kv "sqlite://$work/cached.db" --relaxed-durability mount --mkfs -o default_permissions "$work/mnt/cached" 2>"$work/cached.log" & pids+=($!)
"$hafs" --kv mem: mount --mkfs "$work/mnt/mem" 2>"$work/mem.log" & pids+=($!)
wait_mounted "$work"/mnt/{relaxed,cached,mem}
cat >"$work/driver.py" <<'PY'
import os, sys, time
phase, d, n = sys.argv[1], sys.argv[2] + "/w", int(sys.argv[3])
os.makedirs(d, exist_ok=True)
t = time.perf_counter()
if phase == "create":
    for i in range(n):
        os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
elif phase == "stat":
    for i in range(n):
        os.stat(f"{d}/f{i}")
elif phase == "config":
    n //= 10
    for i in range(n):
        fd = os.open(f"{d}/cfg.tmp", os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
        os.write(fd, b"version %d\n" % i * 20)
        os.fsync(fd)
        os.close(fd)
        os.rename(f"{d}/cfg.tmp", f"{d}/cfg")
elif phase == "unlink":
    for i in range(n):
        os.unlink(f"{d}/f{i}")
print(n / (time.perf_counter() - t))
PY
: >"$work/results.txt"
for t in relaxed cached mem bindfs; do
  for phase in create stat config unlink; do
    echo "$t: $phase" >&2
    perf record -q -e fuse:fuse_request_send -e fuse:fuse_request_end -a \
      -o "$work/perf.data" -- python3 "$work/driver.py" "$phase" "$work/mnt/$t" "$files" \
      >"$work/rate" 2>/dev/null
    perf script -i "$work/perf.data" 2>/dev/null >"$work/trace"
    echo "$t $phase $(cat "$work/rate")" >>"$work/results.txt"
    python3 - "$work/trace" >>"$work/results.txt" <<'PY'
import re, statistics, sys
pat = re.compile(r"\s([\d.]+):\s*fuse:fuse_request_(send|end): connection \d+ req (\d+)(?: opcode \d+ \((\w+)\))?")
sent, times = {}, {}
for line in open(sys.argv[1]):
    m = pat.search(line)
    if not m:
        continue
    at, event, req, op = float(m[1]), m[2], m[3], m[4]
    if event == "send":
        sent[req] = (at, op)
    elif req in sent:
        start, op = sent.pop(req)
        times.setdefault(op, []).append((at - start) * 1e6)
for op, v in sorted(times.items()):
    v.sort()
    print(f"  {op} {len(v)} {statistics.median(v):.1f} {v[int(len(v) * 0.9)]:.1f} {sum(v):.1f}")
PY
  done
done
echo "machine: $(nproc) cores, $(uname -r); $files files, one thread"
python3 - "$work/results.txt" "$files" <<'PY'
import sys
files = int(sys.argv[2])
rows, cur = [], None
for line in open(sys.argv[1]):
    if line.startswith("  "):
        op, count, med, p90, total = line.split()
        cur["ops"].append((op.removeprefix("FUSE_"), int(count), float(med), float(p90), float(total)))
    else:
        target, phase, rate = line.split()
        cur = {"target": target, "phase": phase, "rate": float(rate), "ops": []}
        rows.append(cur)
print("| target | operation | ops/s | requests per operation: opcode ×count (median / p90 µs) | µs in requests per op |")
print("|---|---|---|---|---|")
for r in rows:
    n = files // 10 if r["phase"] == "config" else files
    parts = [f"{op} ×{count / n:.2g} ({med:.0f} / {p90:.0f})" for op, count, med, p90, _ in r["ops"] if count / n >= 0.05]
    total = sum(t for *_, t in r["ops"]) / n
    print(f"| {r['target']} | {r['phase']} | {r['rate']:,.0f} | {', '.join(parts)} | {total:.0f} |")
PY
