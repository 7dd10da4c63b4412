//! `hafs-fuse MOUNTPOINT`: mount a hafs filesystem (the original HAFS name;
//! `hafs mount` is the same command).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "hafs-fuse", version, about = "Mount a hafs filesystem")]
struct Args {
    #[command(flatten)]
    kv: hafs_fuse::mount::KvArgs,
    #[command(flatten)]
    mount: hafs_fuse::mount::MountArgs,
}

fn main() {
    let args: Args = hafs_fuse::mount::parse_or_exit("hafs-fuse", std::env::args().collect());
    hafs_fuse::mount::init_logging(args.mount.debug_fuse);
    if let Err(e) = hafs_fuse::mount::run(&args.kv, &args.mount) {
        eprintln!("hafs-fuse: error: {e}");
        std::process::exit(1);
    }
}
