# Shared by the bench scripts (sourced, from the repository root): builds
# the release binary into $hafs, makes the scratch directory $work under
# /var/tmp with a tmpfs at $work/tmpfs and mount points $work/mnt/NAME,
# and on exit stops the daemons listed in $pids, unmounts, and removes it.
#
#   bench_setup NAME MOUNT...     (then: "$hafs" ... & pids+=($!))
#   wait_mounted DIR...
bench_setup() {
  local name=$1
  shift
  local need=()
  command -v bindfs >/dev/null || need+=(bindfs)
  command -v python3 >/dev/null || need+=(python3) # the summaries
  if ((${#need[@]})); then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  cargo build --release -q -p hafs-cli
  hafs=$PWD/target/release/hafs
  work=$(mktemp -d "/var/tmp/$name.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
  mkdir -p "$work/tmpfs"
  for m in "$@"; do mkdir -p "$work/mnt/$m"; done
  mount -t tmpfs -o size=8g tmpfs "$work/tmpfs"
}

bench_cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for m in "$work"/mnt/*; do umount -l "$m" 2>/dev/null || true; done
  umount -l "$work/tmpfs" 2>/dev/null || true
  # A failed run keeps the daemons' logs (the scratch directory goes).
  if ((rc)) && compgen -G "$work/*.log" >/dev/null; then
    local kept
    kept=$(mktemp -d "/var/tmp/$(basename "$work").logs.XXXXXX")
    cp "$work"/*.log "$kept"/
    echo "failed (exit $rc); the daemons' logs are in $kept" >&2
  fi
  rm -rf "$work"
}

# Fails (with the mount logs) if any DIR is not a mount point after 10 s:
# a daemon that exited at start must not leave the bench measuring the
# plain directory under its name.
wait_mounted() {
  for m in "$@"; do
    for _ in $(seq 100); do mountpoint -q "$m" && break; sleep 0.1; done
    if ! mountpoint -q "$m"; then
      echo "$m did not mount; logs:" >&2
      tail -n 20 "$work"/*.log >&2 2>/dev/null || true
      exit 1
    fi
  done
}
