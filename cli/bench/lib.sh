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
  command -v bindfs >/dev/null || apt-get install -y -qq bindfs >/dev/null
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
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for m in "$work"/mnt/*; do umount -l "$m" 2>/dev/null || true; done
  umount -l "$work/tmpfs" 2>/dev/null || true
  rm -rf "$work"
}

wait_mounted() {
  for m in "$@"; do
    for _ in $(seq 100); do mountpoint -q "$m" && break; sleep 0.1; done
  done
}
