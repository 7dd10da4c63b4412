//! `hafs-evict`: the original HAFS name for `hafs evict`.
fn main() {
    hafs_cli::main_as(&["evict"]);
}
