//! `hafs`: the command line.
fn main() {
    hafs_cli::main_as(&[]);
}
