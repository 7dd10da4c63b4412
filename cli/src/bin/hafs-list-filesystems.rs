//! `hafs-list-filesystems`: the original HAFS name for `hafs list-filesystems`.
fn main() {
    hafs_cli::main_as(&["list-filesystems"]);
}
