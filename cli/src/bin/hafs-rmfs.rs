//! `hafs-rmfs`: the original HAFS name for `hafs rmfs`.
fn main() {
    hafs_cli::main_as(&["rmfs"]);
}
