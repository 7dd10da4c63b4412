//! `hafs-list-clients`: the original HAFS name for `hafs list-clients`.
fn main() {
    hafs_cli::main_as(&["list-clients"]);
}
