//! The command line, defined once: `main.rs` parses with it, and the man
//! pages and shell completions are generated from it.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "btrs",
    version,
    about = "Create, read, write and scrub btrfs filesystems kept in image files, without a kernel mount",
    long_about = "btrs works on btrfs filesystems stored in plain image files, one file per device. \
IMAGE is any one device of the filesystem; the other devices are given with --device PATH, or found \
among the regular files in IMAGE's directory that carry the same filesystem UUID."
)]
pub struct Cli {
    /// Another device (image file) of the filesystem; repeatable.
    #[arg(long = "device", global = true, value_name = "PATH")]
    pub devices: Vec<PathBuf>,

    /// Read from the copies that remain when devices are missing.
    #[arg(long, global = true)]
    pub degraded: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the superblock of one image, like `btrfs inspect-internal dump-super`.
    DumpSuper(DumpSuperArgs),
    /// Print the nodes and items of a tree, like `btrfs inspect-internal dump-tree`.
    DumpTree(DumpTreeArgs),
    /// List directory entries.
    Ls(LsArgs),
    /// Write a file's bytes to standard output.
    Cat(CatArgs),
    /// Copy a subtree out to the host, preserving metadata, hardlinks and holes.
    Extract(ExtractArgs),
    /// Verify every copy of every block and superblock, compare mirrors byte for byte, optionally repair.
    Scrub(ScrubArgs),
    /// Make a new btrfs on image files (devid 1, 2, ... in the order given).
    Mkfs(Box<MkfsArgs>),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

#[derive(Args, Debug)]
pub struct ScrubArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// Rewrite bad copies from good ones (opens the images for writing).
    #[arg(long, conflicts_with = "readonly")]
    pub repair: bool,
    /// When copies differ and no checksum or majority decides, trust copy N (1-based).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4))]
    pub prefer_mirror: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Worker threads (default: number of CPUs).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Show a progress bar on stderr when it is a terminal (default).
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    /// Do not show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Never open the images for writing (the default without --repair).
    #[arg(long)]
    pub readonly: bool,
    /// Rewrite checksums to match the data (not supported yet).
    #[arg(long)]
    pub fix_csum: bool,
}

#[derive(Args, Debug)]
pub struct MkfsArgs {
    /// Image files, one per device; created (sparse) when missing if --size is given.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Size of every image (K, M, G, T suffixes); existing images are resized to it.
    #[arg(short = 'b', long = "size", value_name = "SIZE")]
    pub size: Option<String>,
    /// Data profile: single, dup, raid0, raid1, raid1c3, raid1c4, raid10 (default: single).
    #[arg(short = 'd', long = "data", value_name = "PROFILE")]
    pub data: Option<String>,
    /// Metadata (and system) profile (default: dup on one image, raid1 on more).
    #[arg(short = 'm', long = "metadata", value_name = "PROFILE")]
    pub metadata: Option<String>,
    /// Checksum algorithm: crc32c, xxhash, sha256, blake2.
    #[arg(long = "csum", alias = "checksum", value_name = "TYPE", default_value = "crc32c")]
    pub csum: String,
    /// Tree block size (4K..64K, a power of two).
    #[arg(short = 'n', long = "nodesize", value_name = "SIZE", default_value = "16K")]
    pub nodesize: String,
    /// Sector size (only 4096 is supported).
    #[arg(short = 's', long = "sectorsize", value_name = "SIZE", default_value = "4096")]
    pub sectorsize: String,
    /// Filesystem label.
    #[arg(short = 'L', long = "label", default_value = "")]
    pub label: String,
    /// Filesystem UUID; with SOURCE_DATE_EPOCH the images are byte-for-byte reproducible.
    #[arg(short = 'U', long = "uuid")]
    pub uuid: Option<String>,
    /// Features, comma separated, `^` to disable: no-holes, free-space-tree, block-group-tree.
    #[arg(short = 'O', long = "features", value_name = "LIST")]
    pub features: Option<String>,
    /// Overwrite images that already hold a filesystem.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Populate the top-level subvolume from this host directory.
    #[arg(short = 'r', long = "rootdir", value_name = "DIR")]
    pub rootdir: Option<PathBuf>,
    /// Compress --rootdir file data: zlib, lzo, zstd, optionally :LEVEL.
    #[arg(long, value_name = "ALGO[:LEVEL]", requires = "rootdir")]
    pub compress: Option<String>,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DumpSuperArgs {
    /// The image file whose superblock to print.
    pub image: PathBuf,
    /// Print every superblock copy that fits the device (64 KiB, 64 MiB, 256 GiB), each with its own checksum verdict.
    #[arg(short, long)]
    pub all: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DumpTreeArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// Only this tree: a name (root, extent, chunk, dev, fs, csum, uuid, free-space, data-reloc,
    /// block-group, quota) or a tree / subvolume id.
    #[arg(short, long, value_name = "NAME|ID")]
    pub tree: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// Directory or file inside the filesystem (default: the top-level subvolume's root).
    #[arg(default_value = "/")]
    pub path: String,
    /// Long listing: mode, links, uid, gid, size, mtime, name, and `-> target` for symlinks.
    #[arg(short, long)]
    pub long: bool,
    /// List subdirectories recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// The file inside the filesystem.
    pub path: String,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// `[PATH] DEST`: the subtree to copy (default: everything) and where to put it on the host.
    #[arg(num_args = 1..=2, required = true, value_names = ["PATH", "DEST"])]
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    pub shell: clap_complete::Shell,
}

/// The clap command tree (for man pages and completions).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Every man page: `btrs.1` and one `btrs-SUBCOMMAND.1` per subcommand.
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let cmd = command();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).date("").render(&mut buf)?;
    out.push(("btrs.1".to_string(), buf));
    for sub in cmd.get_subcommands() {
        let name = format!("btrs-{}", sub.get_name());
        let sub = sub.clone().name(name.clone());
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub).title(name.to_uppercase()).date("").render(&mut buf)?;
        out.push((format!("{name}.1"), buf));
    }
    Ok(out)
}
