//! `hafs-mkfs`: the original HAFS name for `hafs mkfs`.
fn main() {
    hafs_cli::main_as(&["mkfs"]);
}
