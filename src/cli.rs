//! The command line, defined once: `main.rs` parses with it, and the man
//! pages and shell completions are generated from it.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "btrs",
    version,
    about = "Create, read, write and scrub btrfs filesystems kept in image files, without a kernel mount",
    long_about = "btrs works on btrfs filesystems stored in plain image files, one file per device. \
IMAGE is any one device of the filesystem; the other devices are given with --device PATH, or found \
among the regular files in IMAGE's directory that carry the same filesystem UUID.\n\n\
A PATH inside the filesystem starts at the top-level subvolume; no symlink in the image is followed, \
and a path ending in / names a directory. Names are bytes, as in btrfs: one that is not UTF-8 is \
named as the shell gives it ($'/caf\\xe9'). Output that carries names writes their bytes; messages \
and JSON show them on one line, a byte that is not UTF-8 as \\xNN, a backslash as \\\\, control \
characters escaped, as bash's $'...' reads them back.\n\n\
A device whose superblock is older than the others' (an older copy of the image, put back) is stale: \
it lacks every write since. Its copies are used only where a data checksum from the current trees \
vouches for them; its tree blocks never (they may be another history of the filesystem, a copy of the \
set written apart from it, with the same addresses and generations). They never outvote or repair a \
current copy, not even with --prefer-mirror. Reading commands warn naming it (--degraded leaves it out instead), writing commands \
refuse the set until `btrs scrub --repair` has compared every copy it holds with a current one and \
rebuilt it. A crash between the superblock writes of a commit leaves a device one commit behind that \
nothing can tell from an older copy: it is stale too, until that repair (which then only rewrites its \
superblocks) or --accept-lagging.\n\n\
Every data sector read is verified against its checksum, the last partial sector of a file included, \
for the caller and for the read-modify-write of a partial write; a bad copy is replaced by a good one \
with a warning naming path, file offset and devid, and with no good copy the command fails and writes \
nothing.\n\n\
Reading commands see the last committed state even while a btrs writer works on the images: the \
writer keeps what it frees unused while they read (a new writer waits for readers of older \
generations, then refuses). A reader that comes while the writer has overwritten NODATACOW data in \
place waits for its commit (up to 30 s)."
)]
pub struct Cli {
    /// Another device (image file) of the filesystem; repeatable.
    #[arg(long = "device", global = true, value_name = "PATH")]
    pub devices: Vec<PathBuf>,

    /// Read from the copies that remain when devices are missing (stale devices are left out).
    #[arg(long, global = true)]
    pub degraded: bool,

    /// Take a device one commit behind that nothing proves stale or current as current
    /// (right after a crash between a commit's superblock writes; wrong for an older copy
    /// of the image, whose bytes would then be served and kept).
    #[arg(long, global = true)]
    pub accept_lagging: bool,

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
    ///
    /// DEST must not exist, or, when PATH is a directory, be a directory into
    /// which PATH's entries are merged. A directory that was already there (DEST
    /// itself, or one merged into) keeps its own owner, mode and xattrs (its
    /// mtime moves as entries are made in it, as on any host); only what
    /// extract makes takes the image's metadata. DEST itself may be a symlink to a
    /// directory (followed, once: it is the caller's choice); nothing below DEST
    /// is ever reached through a symlink. The image's symlinks are made as
    /// symlinks and never followed, and a name that already exists on the host
    /// is left alone (with --overwrite, removed and made again unless it is a
    /// directory), even a symlink pointing out of DEST (--overwrite removes the
    /// link itself), so nothing outside DEST is created or changed, whatever
    /// the image holds.
    ///
    /// An entry that cannot be extracted (a name no host directory can hold,
    /// such as `..` or one with `/`; a name used twice in one directory or
    /// already taken on the host; a directory loop; data that fails its checksum
    /// on every copy) is skipped with its subtree, the rest is extracted, and
    /// extract lists the failed entries and exits 1. Owners need root: what
    /// cannot be applied (owners, xattrs) is warned about and leaves the exit
    /// status 0.
    Extract(ExtractArgs),
    /// Verify every copy of every block and superblock, compare mirrors byte for byte, optionally repair.
    Scrub(ScrubArgs),
    /// Rebuild a missing or stale device onto a new image file, offline (like `btrfs replace`).
    ///
    /// The filesystem is opened without DEVID (it must be missing, its image
    /// moved away or lost, or stale: an older copy of its image, which lacks
    /// every write since; every other device present), and NEW (which must
    /// not exist) is made with the same devid, device uuid and size, so no
    /// tree changes and the other images are only read (opened read-only:
    /// what scrub finds wrong on them is reported, not repaired; `btrs scrub
    /// --repair` does that). Every copy the device
    /// held is written from a verified current copy (tree blocks and
    /// checksummed data by their checksums, NODATASUM data from a current
    /// device), flushed and read back, the superblocks last; then the set must
    /// open whole. Refused, before anything is written, when some chunk has no
    /// copy outside DEVID (SINGLE, DUP or RAID0 chunks on it: their data is
    /// lost), when the filesystem has a log tree (its blocks are in no extent
    /// tree), or when an image beside the set already is DEVID (a replace
    /// that finished). Data sectors whose checksum fails on every copy are
    /// counted and left unreadable, as they were. Until its superblocks are written NEW carries no btrfs
    /// signature: a crash or failure leaves the set as it was, and a failed
    /// replace removes NEW. A stale image of DEVID is refused unless
    /// --wipe-stale says it is an older copy of this device (a generation
    /// cannot tell that from another history); then it is locked meanwhile and
    /// its superblocks are wiped, as the kernel's replace scratches its
    /// source device's (a stop in between leaves two images claiming DEVID:
    /// commands refuse the set, naming the older one to move away).
    /// Afterwards the kernel mounts the set without `degraded`.
    Replace(ReplaceArgs),
    /// Grow or shrink one device image, offline (like `btrfs filesystem resize`).
    ///
    /// SIZE is `[DEVID:](SIZE|+SIZE|-SIZE|max|min)` (K, M, G, T suffixes;
    /// devid 1 when not given), rounded down to whole sectors. `max` takes the
    /// image file's length (after it was made longer by other means); `min`
    /// the smallest size its chunk stripes fit in, moved as low as they go.
    /// Growing makes the image file longer, then commits the new size (the
    /// device's dev item, its superblocks, the filesystem's total). Shrinking
    /// first moves every stripe that ends past the new size below it (each
    /// chunk re-striped in place of its logical range, verified, one commit
    /// each; see `btrs balance`), then commits the size, then cuts the file:
    /// a crash leaves stripes moved or not and a longer file, all valid.
    /// Shrinking below what the stripes need is refused naming that size,
    /// before anything is written.
    Resize(ResizeArgs),
    /// Add or remove devices (image files), offline (like `btrfs device`).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Convert chunks to other profiles, offline (like `btrfs balance start -dconvert=...`).
    ///
    /// Each chunk whose profile differs from the one asked for its kind is
    /// re-striped in place of its logical range: every used extent copied
    /// (verified: tree blocks and checksummed data by their checksums; a bad
    /// copy is taken from a good one) to new stripes in free space, then its
    /// chunk item, dev extents and block group committed, one commit per
    /// chunk, so a crash leaves each chunk in its old layout or its new one.
    /// Where a chunk finds no room, room is made first: empty chunks are
    /// removed (never the last of a kind), a chunk is cut in two where no
    /// extent spans the cut, or stripes move lower on their device; each its
    /// own commit. Every step is planned before anything is written: too few
    /// devices or too little room fails naming the chunk, images unchanged.
    /// Going to fewer copies checks the copies kept (a bad one is rewritten
    /// from a good one) and is refused where copies without a checksum differ
    /// (`btrs scrub` reports them). `metadata=` converts system chunks too
    /// unless `system=` is given. Other filesystems' RAID5/6 chunks are not
    /// written.
    Balance(BalanceArgs),
    /// Make a new btrfs on image files (devid 1, 2, ... in the order given).
    ///
    /// Image builders: --rootdir copies a host tree in without root or a kernel
    /// mount, --rootdir-tar an archive's members (owners, modes and xattrs as
    /// the archive says, no staging copy); every option below that names
    /// --rootdir works alike with either.
    /// Ownership and modes need no fakeroot: --all-root, --owner-map and
    /// --manifest set what the image stores (precedence: owner map, then
    /// all-root, then the manifest). --shrink makes the smallest image that holds
    /// the content; --print-size says how large that is without writing; -b SIZE
    /// makes exactly that size or fails naming the size needed.
    ///
    /// Reproducible images: give --uuid and set SOURCE_DATE_EPOCH. Then every
    /// timestamp btrs makes up (the root directory and subvolume root items, the
    /// inode otimes) is SOURCE_DATE_EPOCH, every --rootdir inode's atime and ctime
    /// are SOURCE_DATE_EPOCH, and mtimes later than it are clamped to it (older
    /// mtimes are kept, like tar --clamp-mtime); every other UUID derives from the
    /// fsid. Nothing of the build host goes in: not its CPU count, page size,
    /// rotational or SSD state, or the images' starting sizes under --shrink.
    /// Owners come from the source tree (or the options above), so build as the
    /// same user or use --all-root / --manifest.
    Mkfs(Box<MkfsArgs>),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Write bytes into a file (created when missing), in one committed transaction.
    Write(WriteArgs),
    /// Subvolumes and snapshots, offline (like `btrfs subvolume`).
    #[command(subcommand, visible_alias = "subvol")]
    Subvolume(SubvolumeCommand),
    /// Devices, sizes and space by profile (like `btrfs filesystem show` and `df`).
    #[command(subcommand, visible_alias = "fi")]
    Filesystem(FilesystemCommand),
    /// Get or set a property of a subvolume, file or the filesystem (like `btrfs property`).
    #[command(subcommand)]
    Property(PropertyCommand),
    /// Change inode flags (like `chattr`): C nodatacow, c compress, m nocompress, i immutable, a append-only, A noatime, d nodump, S sync, D dirsync.
    ///
    /// MODE is +FLAGS, -FLAGS or =FLAGS. As the kernel takes them: C on a
    /// regular file takes effect only while it is empty (and turns its
    /// checksums off with it); c and m exclude each other, and neither goes
    /// with C; +c stores the btrfs.compression property (zlib) when c was not
    /// set, -c and +m remove it. btrs then refuses to change an immutable
    /// inode, to write an append-only one anywhere but at its end, and to
    /// add or remove names in an immutable directory, as the kernel does.
    Chattr(ChattrArgs),
    /// Print inode flags (like `lsattr`, its 22 columns).
    Lsattr(LsattrArgs),
    /// Make a directory.
    Mkdir(MkdirArgs),
    /// Remove files or (with -r) directory trees; empty directories without -r.
    Rm(RmArgs),
    /// Rename or move a file or directory.
    Mv(MvArgs),
    /// Make a hard link, or with -s a symbolic link.
    ///
    /// Names of one file in one directory share an inode ref item; past what
    /// a leaf holds (about 300 names of 40 bytes on 16 KiB nodes) they go into
    /// extended inode refs, as the kernel's do, and the EXTENDED_IREF feature
    /// is turned on when a filesystem made without it first needs one (the
    /// kernel refuses the link there instead; every kernel since 3.7 reads
    /// the feature).
    Ln(LnArgs),
    /// Set (or with -x remove) an extended attribute.
    Setfattr(SetfattrArgs),
    /// Print extended attributes (like attr's `getfattr`).
    ///
    /// Without -n or -d, the names of the attributes matching -m (default
    /// `^user\.`); with -d their values too; -n NAME prints one. Names are
    /// sorted, and a leading `/` is dropped from the path in `# file:` lines
    /// unless --absolute-names, as getfattr does. Values are written as
    /// getfattr writes them: without -e, as text ("...") when every byte is
    /// printable ASCII (a trailing NUL dropped), else base64 (0s...).
    Getfattr(GetfattrArgs),
    /// Change permission bits (like `chmod`): octal (0755) or symbolic
    /// (u+x,go-w, a=rX, g=u).
    ///
    /// A symbolic clause that names no class (`+x`) leaves the bits of the
    /// caller's umask alone, as coreutils does. A directory's set-ID bits
    /// survive `=` unless named, and an octal mode of fewer than five digits
    /// (`755`; `00755` and `=755` set exactly); `+4000`, `-6000` and `=755`
    /// apply octal bits to every class. Immutable and append-only inodes
    /// refuse, and so do symlinks: btrs follows no symlink inside an image
    /// (their targets name paths of whatever host mounts it).
    Chmod(ChmodArgs),
    /// Change owner and group (like `chown`): OWNER[:GROUP] or :GROUP, as
    /// numbers.
    ///
    /// An image has no user database and the host's names say nothing about
    /// its owners, so names are refused. As the kernel does on any chown of
    /// a non-directory: the set-user-ID bit, the set-group-ID bit when group
    /// execution is set, and security.capability are dropped. A symlink's own
    /// owner changes (as `chown -h`): btrs follows no symlink inside an image.
    Chown(ChownArgs),
    /// Set access and modification times, making missing files (like `touch`).
    ///
    /// Both times become now (or -d DATE), or only the access time (-a) or
    /// the modification time (-m); the change time always becomes now. A
    /// missing path is made an empty regular file (mode 0644) unless -c. A
    /// symlink's own times change (as `touch -h`): btrs follows no symlink
    /// inside an image.
    Touch(TouchArgs),
    /// Set the size of regular files (like `truncate -s`), making missing ones.
    ///
    /// SIZE is bytes or with a suffix (K, M, G, ...: powers of 1024),
    /// prefixed by + (grow by), - (shrink by), < (at most) or > (at least).
    /// Data past the new end is dropped; growing adds a hole.
    Truncate(TruncateArgs),
    /// Print an inode's fields (like `stat`).
    ///
    /// coreutils' layout with times in UTC (with nanoseconds); the
    /// subvolume stands where stat prints the device, owners are numbers,
    /// and btrfs's own fields follow: the inode flags (as lsattr shows
    /// them), generation, transid and sequence. Symlinks are not followed.
    Stat(StatArgs),
    /// Print the target of a symbolic link (like `readlink`).
    Readlink(ReadlinkArgs),
    /// Copy host files and directories into the filesystem.
    ///
    /// With one SRC and a DEST that does not exist, SRC is copied as DEST;
    /// otherwise DEST must be a directory and each SRC goes into it under its
    /// own name. What mkfs --rootdir keeps, put keeps: type, mode (set-ID
    /// bits too), owner, nanosecond times, xattrs, device numbers, symlink
    /// targets, hard links within the copied trees and holes. One
    /// transaction: on any error nothing is committed. However large the
    /// tree, memory stays bounded: past 32 MiB of changed tree blocks
    /// (the kernel's mark), they are written into free space as the copy
    /// goes, where no committed tree reaches them until the commit.
    ///
    /// Before any byte is written, the whole source is checked: names,
    /// symlink targets and xattrs within the kernel's limits, every file
    /// readable and holding no bytes past its size (as /proc and /sys files
    /// do), and room for the data and (estimated, erring high) the metadata;
    /// a failure there leaves the images byte for byte as they were. A
    /// source that changes while it is copied (a file that grows, shrinks or
    /// goes, or is replaced by another file, a symlink or a fifo; a
    /// directory replaced by a symlink or another directory) fails the put
    /// then: nothing is followed outside the source and nothing is
    /// committed, but the images' free space may hold bytes of the copy.
    Put(PutArgs),
    /// Write a deterministic clean or damaged test filesystem and its manifest.
    ///
    /// `btrs fixture list` prints every fixture name with a one-line description.
    /// `btrs fixture NAME DIR` makes DIR (it must be missing or empty) and writes
    /// DIR/dev1.img, DIR/dev2.img, ... (128 MiB sparse each) and DIR/manifest.json.
    ///
    /// Fixtures: raid1-clean, dup-clean, raid1c3-clean; raid1-csum-crc32c,
    /// raid1-csum-xxhash, raid1-csum-sha256, raid1-csum-blake2 (the
    /// "raid1-every-csum" family: one fixture per checksum type); raid1-compressed;
    /// raid1-deep-tree (nodesize 4K, fs tree of 3+ levels); raid1-many-files;
    /// and damaged ones: raid1-nodatasum-mismatch, raid1-csum-error,
    /// raid1-stale-csum, raid1-metadata-error, raid1-super-error,
    /// raid1c3-majority, raid1-degraded (dev2.img is deleted: scrub with --degraded).
    ///
    /// Every fixture holds the same small tree (inline and regular files, a sparse
    /// file, a symlink, nested directories, data/random.bin with checksums and
    /// nodatasum/raw.bin without: the damaged fixtures hurt these two), plus
    /// thousands of entries in raid1-deep-tree and raid1-many-files.
    ///
    /// The same NAME and --seed give byte-identical images and manifest: the fsid
    /// comes from name and seed, every timestamp is fixed (2023-11-14), and the
    /// file content comes from a PRNG seeded with --seed. (Files are owned by the
    /// user running btrs, so images made by different users differ.) Damage is
    /// written raw to one image at the physical address the chunk tree gives, as a
    /// failing disk would.
    ///
    /// manifest.json: {"name", "seed", "description", "fsid", "csum", "nodesize",
    /// "sectorsize", "compress", "profiles": {"data", "metadata", "system"},
    /// "image_size", "devices": [image files present, devid order],
    /// "missing_devices": [deleted image files], "fs_tree_levels",
    /// "files": [{"path" (no leading slash), "type" (file, dir, symlink), "size",
    /// "sha256" (files), "mode" (permission bits), "mtime", "mtime_nsec", "target"
    /// (symlinks), "flags" (nodatasum, nodatacow)}],
    /// "expected_findings": [{"kind", "devid", "logical", "mirror", "paths",
    /// "file_offset"}] (exactly what `btrs scrub --json` reports, other finding
    /// fields aside), "expected_exit" (of btrs scrub: 0 clean, 3 damaged), "clean"}.
    Fixture(FixtureArgs),
}

#[derive(Args, Debug)]
pub struct FixtureArgs {
    /// Fixture name, or `list`.
    #[arg(value_name = "NAME|list", value_parser = fixture_names())]
    pub name: String,
    /// Directory to create (must be missing or empty); not used with `list`.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seed of the generated content (and of the fsid).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct ResizeArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// `[DEVID:](SIZE|+SIZE|-SIZE|max|min)`.
    #[arg(value_name = "SIZE", allow_hyphen_values = true)]
    pub size: crate::ops::resize::ResizeSpec,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not show progress.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Add new image files to the filesystem as new devices, in one commit.
    ///
    /// Each NEW gets the next devid and a new device uuid. A NEW that does not
    /// exist is made --size bytes long (default: as long as IMAGE); one that
    /// exists (a regular file or block device) must carry no btrfs superblock,
    /// and its length is its size. Nothing moves onto the
    /// new devices (as with `btrfs device add`): new chunks may use them, and
    /// `btrs balance --convert` spreads copies over them. Until the commit
    /// writes their superblocks they carry no btrfs signature: a failure
    /// leaves the set as it was and removes the files this command made.
    Add(DeviceAddArgs),
    /// Remove a device: move every chunk stripe off it, then take it out of the set.
    ///
    /// Each chunk with a stripe on the device is re-striped onto the others
    /// (see `btrs balance`), one commit each; then the set is committed
    /// without it and its superblocks are zeroed. Refused before anything is
    /// written when a profile in use needs more devices than would remain
    /// (convert first), or when the others lack the room.
    Remove(DeviceRemoveArgs),
}

#[derive(Args, Debug)]
pub struct DeviceAddArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// The image files to add.
    #[arg(required = true)]
    pub new: Vec<PathBuf>,
    /// Size of each new device (K, M, G, T suffixes).
    #[arg(long, value_parser = size_arg)]
    pub size: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DeviceRemoveArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// The device to remove: its devid or its image file.
    pub device: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not show progress.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args, Debug)]
pub struct BalanceArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// `data=PROFILE[,metadata=PROFILE][,system=PROFILE]`: single, dup,
    /// raid0, raid1, raid1c3, raid1c4, raid10.
    #[arg(long, required = true, value_name = "SPEC")]
    pub convert: crate::ops::balance::Convert,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not show progress.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args, Debug)]
pub struct ReplaceArgs {
    /// Any present device of the filesystem.
    pub image: PathBuf,
    /// The devid of the missing or stale device to rebuild.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    pub devid: u64,
    /// The new image file (must not exist).
    pub new: PathBuf,
    /// DEVID is present but stale and is an older copy of this device:
    /// wipe its superblocks once NEW is built (without this, a stale DEVID
    /// is refused: it may hold another history).
    #[arg(long)]
    pub wipe_stale: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args, Debug)]
pub struct ScrubArgs {
    /// A device of the filesystem; more devices of it may follow (as --device).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Rewrite bad copies from good ones (opens the images for writing). A
    /// stale device (finding stale_device) is rebuilt from the current copies,
    /// its superblocks last, only once every copy it holds matches; its copies
    /// never outvote a current one. Every tree block is read before anything
    /// is written: on two histories (finding two_histories: copies of one tree
    /// block that both verify yet differ) nothing is repaired anywhere.
    #[arg(long, conflicts_with = "readonly")]
    pub repair: bool,
    /// When copies differ and no checksum or majority decides, trust copy N (1-based).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4))]
    pub prefer_mirror: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Worker threads (default: number of CPUs; 1 to 1024).
    #[arg(long, value_name = "N", value_parser = worker_count)]
    pub threads: Option<usize>,
    /// Show a progress bar on stderr when it is a terminal (default).
    #[arg(long, overrides_with = "no_progress")]
    pub(crate) progress: bool,
    /// Do not show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Never open the images for writing (the default without --repair).
    #[arg(long)]
    pub(crate) readonly: bool,
    /// Rewrite the checksum of every data sector whose copies all agree but
    /// fail their checksum (csum_all_copies), in a copy-on-write transaction,
    /// and report those findings as corrected. On two histories nothing is
    /// rewritten.
    #[arg(long, conflicts_with = "readonly")]
    pub fix_csum: bool,
    /// Every counter of every device, and sizes in bytes (progs' -R).
    #[arg(short = 'R', long)]
    pub raw: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").args(["rootdir", "rootdir_tar"])))]
pub struct MkfsArgs {
    /// Image files, one per device; created (sparse) when missing if --size is given.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Size of every image (K, M, G, T suffixes); existing images are resized to it.
    /// Exact: if the content does not fit, mkfs fails naming the size needed and
    /// leaves the images' lengths and contents alone (new ones are removed).
    #[arg(short = 'b', long = "size", visible_alias = "byte-count", value_name = "SIZE", conflicts_with = "shrink")]
    pub size: Option<String>,
    /// Accepted for mkfs.btrfs's habit: an image file has nothing to discard.
    #[arg(short = 'K', long)]
    pub nodiscard: bool,
    /// Print no summary (errors and warnings still go to stderr).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// mkfs.btrfs's runtime features, comma separated: free-space-tree
    /// (`^free-space-tree` to leave it out) is taken as -O takes it; quota
    /// is refused (btrs does not make the quota tree at mkfs time).
    #[arg(short = 'R', long = "runtime-features", value_name = "LIST")]
    pub runtime_features: Option<String>,
    /// Mixed data and metadata block groups: refused, btrs does not make them.
    #[arg(short = 'M', long)]
    pub mixed: bool,
    /// Make the smallest image: chunks sized to the content, each image created or
    /// truncated to the end of its last chunk, whatever its starting size.
    #[arg(long)]
    pub shrink: bool,
    /// With --shrink: this much extra free data space (SIZE, or PERCENT% of the
    /// minimal size), plus a tenth of it (at least 8 MiB) of metadata space so
    /// that files can be created in it (a --shrink image without slack is full).
    #[arg(long, value_name = "SIZE|PERCENT%", requires = "shrink")]
    pub slack: Option<String>,
    /// Write nothing: scan --rootdir (or --rootdir-tar) and print the size in bytes each image would
    /// have with --shrink (one line per image; hard links count once, holes not
    /// at all, compressed data as compressed). The images need not exist.
    #[arg(long)]
    pub print_size: bool,
    /// Make the filesystem at this byte offset inside each image file (e.g. a GPT
    /// partition's start; a multiple of 4096). Nothing before it is written; give
    /// -b with the partition's size so nothing after it is either (the file only
    /// ever grows with --offset, never shrinks). Mount with `losetup -o OFFSET
    /// --sizelimit SIZE` or `mount -o loop,offset=OFFSET`.
    #[arg(long, value_name = "BYTES", default_value = "0")]
    pub offset: String,
    /// Threads reading, compressing and checksumming --rootdir file data
    /// (default: one per CPU; at most 1024); with more than one, a helper
    /// also stats the source's entries ahead of the walk. The image is the
    /// same for any number.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true, value_parser = thread_count)]
    pub threads: usize,
    /// Data profile: single, dup, raid0, raid1, raid1c3, raid1c4, raid10 (default: single).
    #[arg(short = 'd', long = "data", value_name = "PROFILE", ignore_case = true, value_parser = profiles())]
    pub data: Option<String>,
    /// Metadata (and system) profile (default: dup on one image, raid1 on more).
    #[arg(short = 'm', long = "metadata", value_name = "PROFILE", ignore_case = true, value_parser = profiles())]
    pub metadata: Option<String>,
    /// Checksum algorithm: crc32c, xxhash, sha256, blake2.
    #[arg(long = "csum", alias = "checksum", value_name = "TYPE", default_value = "crc32c", ignore_case = true, value_parser = csums())]
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
    /// Filesystem UUID; with SOURCE_DATE_EPOCH the images are byte-for-byte reproducible
    /// (the other UUIDs are derived from it then, random otherwise).
    #[arg(short = 'U', long = "uuid")]
    pub uuid: Option<String>,
    /// Features, comma separated, `^` to disable: no-holes, free-space-tree, block-group-tree.
    #[arg(short = 'O', long = "features", value_name = "LIST")]
    pub features: Option<String>,
    /// Overwrite images that already hold a filesystem, and cut an existing
    /// file shorter when -b asks for less than its length (without it, that
    /// is refused; --shrink cuts too).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Populate the top-level subvolume from this host directory.
    ///
    /// Memory stays flat whatever the tree's size (under 80 MiB at a million
    /// small files): the tree items, the list of files to copy and the data
    /// extents and checksums written are held up to 24 MiB each, and past
    /// that in unlinked temporary files in $TMPDIR (sorted runs, merged as
    /// the trees are written), which need about as much room as the new
    /// filesystem's metadata. What grows: the directories being walked, and
    /// files with several hard links (about 0.5 KiB each, held until the
    /// walk has found all their names). A tree that changes while it is
    /// copied (a file that grows or shrinks, a file or directory replaced
    /// by another, by a symlink or by a fifo) fails the mkfs: no symlink
    /// below DIR is followed, and no file is cut or padded.
    #[arg(short = 'r', long = "rootdir", value_name = "DIR", value_parser = host_dir)]
    pub rootdir: Option<PathBuf>,
    /// Populate the top-level subvolume from this tar archive (`-`: standard
    /// input), as --rootdir would from the directory it unpacks to: the same
    /// items, and the same image when the archive holds the same tree.
    ///
    /// Owners are the numeric uid and gid of each member (user and group names
    /// are ignored); times come from PAX mtime, atime and ctime records with
    /// nanoseconds, else the header's mtime stands for all three; xattrs come
    /// from PAX SCHILY.xattr records (GNU tar --xattrs --xattrs-include='*',
    /// bsdtar); one that `btrs setfattr` would refuse (a name outside the
    /// kernel's namespaces, an invalid ACL or btrfs property) is refused naming
    /// the member, from a manifest too. Hard links become one inode; devices keep their numbers. Member
    /// paths lose a `./` prefix; the `./` member is the root directory.
    /// Directories only implied by deeper paths (and the root, when not
    /// listed) get mode 0755, owner 0:0 and the time mkfs stamps what it makes
    /// up (SOURCE_DATE_EPOCH when set). A path given twice: the later member
    /// wins, as on extraction. Refused, naming the member: absolute paths, `..`,
    /// sparse members and entry types other than files, directories, symlinks,
    /// hard links, devices and fifos. PAX global headers and ACL records are
    /// ignored (with a warning).
    ///
    /// The archive is read in place, not into memory: a member's data is read
    /// from where it lies in the archive. gzip and zstd archives, and archives
    /// from a pipe or standard input, are first copied uncompressed into an
    /// unlinked temporary file in $TMPDIR; other compressions are refused.
    #[arg(long = "rootdir-tar", value_name = "FILE")]
    pub rootdir_tar: Option<PathBuf>,
    /// Make a --rootdir directory (PATH, relative to it) a subvolume; repeatable.
    ///
    /// `:ro` makes it read-only; `:default` makes it the default subvolume (what
    /// the kernel mounts without subvol= or subvolid=; the DEFAULT_SUBVOL
    /// incompat flag is set, as `btrfs subvolume set-default` does). Subvolumes
    /// may nest (`--subvol a --subvol a/b`). Every file belongs to the nearest
    /// subvolume above it and inode numbers restart at 256 in each; subvolume
    /// ids are 256, 257, ... in the order of the walk (depth first, names in
    /// byte order), whatever the order of the options. A hard link between
    /// names in different subvolumes cannot exist on btrfs: each subvolume
    /// gets its own copy of the file (with a warning), as mkfs.btrfs does. PATH
    /// must be a directory in the tree (not a symlink), given once.
    #[arg(long = "subvol", value_name = "PATH[:ro][:default]", requires = "source")]
    pub subvols: Vec<OsString>,
    /// Compress --rootdir file data: zlib, lzo, zstd, optionally :LEVEL.
    /// Repeatable: `ALGO[:LEVEL]:PATH` compresses PATH (relative to --rootdir;
    /// a file, or a directory or subvolume and everything beneath it) so, and
    /// `none:PATH` not at all; the longest matching PATH wins, then the form
    /// without PATH. A PATH that reads as a number needs a `./` prefix.
    #[arg(long, value_name = "ALGO[:LEVEL][:PATH]", requires = "source", value_parser = ThenPath(compressions(true)))]
    pub compress: Vec<OsString>,
    /// Inode flags for a --rootdir path (relative to it, also inside
    /// subvolumes): nodatacow (implies nodatasum) or nodatasum, comma
    /// separated; the file gets no checksums. Repeatable.
    #[arg(long = "inode-flags", value_name = "FLAGS:PATH", requires = "source")]
    pub inode_flags: Vec<OsString>,
    /// Store every --rootdir inode as owned by uid 0, gid 0 (no root or fakeroot needed).
    #[arg(long, requires = "source")]
    pub all_root: bool,
    /// Store source uids and gids FROM..FROM+COUNT as TO..TO+COUNT (decimal; uid
    /// and gid alike; the named users and groups of POSIX ACLs too). Repeatable;
    /// the first matching range wins.
    #[arg(long = "owner-map", value_name = "FROM:TO:COUNT", requires = "source")]
    pub owner_map: Vec<String>,
    /// Per-path overrides applied during the --rootdir walk, one per line:
    ///
    /// `PATH MODE UID GID` sets the permission bits (octal, up to 07777, e.g. 4755;
    /// the file type is kept) and the owner; `-` in any field keeps the source
    /// value (after --owner-map / --all-root).
    ///
    /// `PATH xattr NAME=VALUE` sets an extended attribute: VALUE is the rest of the
    /// line taken literally (no trailing NUL is added), or bytes in hex with a 0x
    /// prefix, e.g. `/etc xattr security.selinux=system_u:object_r:etc_t:s0` or
    /// `/usr/bin/ping xattr security.capability=0x0100000200200000000000000000000000000000`.
    ///
    /// `PATH xattr -NAME` drops an xattr the source has.
    ///
    /// PATH is relative to --rootdir (a leading `/` and `./` are ignored; `/` is
    /// the root directory itself); write a space as ` ` and a backslash as
    /// `\`. Lines starting with `#` and blank lines are ignored. Every PATH must
    /// exist in the tree. A hard-linked file takes the lines of all its names.
    #[arg(long, value_name = "FILE", requires = "source", verbatim_doc_comment)]
    pub manifest: Option<PathBuf>,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DumpSuperArgs {
    /// The image file whose superblock to print.
    pub image: PathBuf,
    /// Print every superblock copy that fits the device (64 KiB, 64 MiB, 256 GiB), each with its own checksum verdict.
    #[arg(short, long, conflicts_with = "super_copy")]
    pub all: bool,
    /// Print copy N only: 0 (64 KiB), 1 (64 MiB) or 2 (256 GiB).
    #[arg(short = 's', long = "super", value_name = "N", value_parser = clap::value_parser!(u8).range(0..=2))]
    pub super_copy: Option<u8>,
    /// Accepted for progs' habit: btrs always prints every field (progs' -f).
    #[arg(short = 'f', long)]
    pub full: bool,
    /// Print a copy without the btrfs magic too (by default the dump stops
    /// there with an error, as progs' does).
    #[arg(long)]
    pub force: bool,
    /// Print JSON instead of text: an array with an object per copy printed (the same shape with or without --all).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DumpTreeArgs {
    /// A device of the filesystem; more devices of it may follow (as --device).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Only this tree: a name (root, extent, chunk, dev, fs, csum, uuid, free-space, data-reloc,
    /// block-group, quota) or a tree / subvolume id.
    #[arg(short, long, value_name = "NAME|ID", value_parser = tree_id, overrides_with = "tree")]
    pub tree: Option<u64>,
    /// Only the tree block at this logical address (of any tree and generation); repeatable.
    #[arg(short = 'b', long = "block", value_name = "BYTENR", value_parser = block_number)]
    pub blocks: Vec<u64>,
    /// With -b: the blocks below it too (alone, ignored, as by btrfs-progs).
    #[arg(long)]
    pub follow: bool,
    /// Breadth first: a tree's blocks level by level, nodes before leaves (the default).
    #[arg(long, overrides_with = "dfs")]
    pub bfs: bool,
    /// Depth first: each node followed by its children.
    #[arg(long, overrides_with = "bfs")]
    pub dfs: bool,
    /// Only the extent and device trees' leaves.
    #[arg(short = 'e', long)]
    pub extents: bool,
    /// Only the root, chunk and device trees (and the log root tree).
    #[arg(short = 'd', long)]
    pub device: bool,
    /// Only each tree's root block and level.
    #[arg(short = 'r', long)]
    pub roots: bool,
    /// As --roots, then the superblock's backup roots.
    #[arg(short = 'R', long)]
    pub backups: bool,
    /// Only the uuid tree.
    #[arg(short = 'u', long)]
    pub uuid: bool,
    /// Only the images named here: the image's directory is not searched for the other devices.
    #[arg(long)]
    pub noscan: bool,
    /// File and xattr names (and xattr values) print as HIDDEN; subvolume names in root refs
    /// still print, as btrfs-progs prints them.
    #[arg(long)]
    pub hide_names: bool,
    /// Print each tree block's stored checksum.
    #[arg(long)]
    pub csum_headers: bool,
    /// Print every data checksum of csum items.
    #[arg(long)]
    pub csum_items: bool,
}

/// A tree block's logical address: decimal or 0x hex.
fn block_number(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse::<u64>(),
    };
    parsed.map_err(|_| format!("{s:?} is not a block number (decimal or 0x hex)"))
}

/// A tree name or id, checked before any image is opened (exit 2 when it is neither).
fn tree_id(s: &str) -> Result<u64, String> {
    // No tree has id 0 (btrfs-progs refuses it too).
    crate::format::types::parse_tree_id(s)
        .filter(|&id| id != 0)
        .ok_or_else(|| format!("unknown tree {s:?}: a tree name or a tree / subvolume id"))
}

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct LsArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// Directory or file inside the filesystem (default: the top-level subvolume's root).
    #[arg(default_value = "/")]
    pub path: OsString,
    /// Long listing: mode, links, uid, gid, size, mtime, name, and `-> target` for symlinks.
    #[arg(short, long)]
    pub long: bool,
    /// List subdirectories recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Sizes in -l as ls -lh writes them (1.5K, 12M: powers of 1024, rounded up).
    #[arg(short = 'h', long)]
    pub human_readable: bool,
    /// Directory order (the order of creation) instead of sorting by name.
    #[arg(short = 'U')]
    pub unsorted: bool,
    /// How names are printed, as ls's --quoting-style: literal (the default into a pipe or file),
    /// shell-escape (the default on a terminal: quoted where a shell needs it, control characters
    /// as $'\n'), escape (backslash escapes).
    #[arg(long, value_name = "WORD", value_parser = ["literal", "shell-escape", "escape"], overrides_with_all = ["escape", "literal"])]
    pub quoting_style: Option<String>,
    /// Names with backslash escapes (--quoting-style=escape).
    #[arg(short = 'b', long, overrides_with_all = ["quoting_style", "literal"])]
    pub escape: bool,
    /// Names as they are (--quoting-style=literal).
    #[arg(short = 'N', long, overrides_with_all = ["quoting_style", "escape"])]
    pub literal: bool,
    /// Print help (-h is --human-readable here, as in ls).
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// The file inside the filesystem.
    pub path: OsString,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// Any device of the filesystem.
    pub image: PathBuf,
    /// `[PATH] DEST`: the subtree to copy (default: everything) and where to put it on the host.
    #[arg(num_args = 1..=2, required = true, value_names = ["PATH", "DEST"])]
    pub paths: Vec<OsString>,
    /// Replace files, symlinks and special files already on the host under the image's names
    /// (a symlink is removed, never followed); directories are still merged into, never removed.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    pub shell: clap_complete::Shell,
}

/// A thread count: 0 (one per CPU) up to [`crate::threads::MAX_THREADS`].
fn thread_count(s: &str) -> Result<usize, String> {
    let max = crate::threads::MAX_THREADS;
    match s.trim().parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        Ok(_) => Err(format!("at most {max} threads")),
        Err(_) => Err(format!("not a thread count (0 for one per CPU, up to {max})")),
    }
}

/// `scrub --threads`: 1 to MAX_THREADS (leaving it out is one per CPU; 0 is
/// a usage error rather than a silent default).
fn worker_count(s: &str) -> Result<usize, String> {
    match thread_count(s)? {
        0 => Err("at least 1 thread (leave --threads out for one per CPU)".into()),
        n => Ok(n),
    }
}

/// The profiles mkfs takes, as values clap checks and completions offer.
fn profiles() -> clap::builder::PossibleValuesParser {
    use clap::builder::PossibleValue as V;
    clap::builder::PossibleValuesParser::new(
        ["single", "dup", "raid0", "raid1", "raid1c3", "raid1c4", "raid10"]
            .map(V::new)
            .into_iter()
            .chain(["raid5", "raid6"].map(|p| V::new(p).hide(true))),
    )
}

/// A value whose first word completes from a list (shell completions offer
/// them, help lists them) while the value may go on after a `:` (a level, a
/// path); `strict`: the whole value must be one of them.
#[derive(Clone)]
struct Candidates {
    values: Vec<&'static str>,
    strict: bool,
}

impl clap::builder::TypedValueParser for Candidates {
    type Value = String;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<String, clap::Error> {
        let s = value.to_str().ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidUtf8).with_cmd(cmd))?;
        let head = if self.strict { s } else { s.split(':').next().unwrap_or(s) };
        if !self.values.contains(&head) {
            let mut e = clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd);
            use clap::error::{ContextKind, ContextValue};
            e.insert(ContextKind::InvalidArg, ContextValue::String(arg.map_or_else(|| "VALUE".into(), |a| a.to_string())));
            e.insert(ContextKind::InvalidValue, ContextValue::String(s.to_string()));
            e.insert(ContextKind::ValidValue, ContextValue::Strings(self.values.iter().map(|v| v.to_string()).collect()));
            return Err(e);
        }
        Ok(s.to_string())
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(self.values.iter().map(|v| clap::builder::PossibleValue::new(*v))))
    }
}

/// [`Candidates`] for the head of a value that may go on with a path
/// (`ALGO[:LEVEL][:PATH]`): the path may be any bytes.
#[derive(Clone)]
struct ThenPath(Candidates);

impl clap::builder::TypedValueParser for ThenPath {
    type Value = OsString;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<OsString, clap::Error> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = value.as_bytes();
        let head = bytes.split(|&b| b == b':').next().unwrap_or(bytes);
        self.0.parse_ref(cmd, arg, std::ffi::OsStr::from_bytes(head))?;
        Ok(value.to_os_string())
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        self.0.possible_values()
    }
}

/// The compressions the kernel has (a value may add `:LEVEL`, or `:PATH` for mkfs).
fn compressions(with_none: bool) -> Candidates {
    let mut values = vec!["zlib", "lzo", "zstd"];
    if with_none {
        values.push("none");
    }
    Candidates { values, strict: false }
}

/// Fixture names, group names and `list`.
fn fixture_names() -> Candidates {
    let mut values: Vec<&'static str> = crate::ops::fixture::list().into_iter().map(|(n, _)| n).collect();
    values.extend(crate::ops::fixture::GROUPS.iter().map(|g| g.0));
    values.push("list");
    Candidates { values, strict: true }
}

/// The checksum names mkfs takes (with progs' aliases, hidden).
fn csums() -> clap::builder::PossibleValuesParser {
    use clap::builder::PossibleValue as V;
    clap::builder::PossibleValuesParser::new([
        V::new("crc32c").alias("crc32"),
        V::new("xxhash").alias("xxhash64"),
        V::new("sha256"),
        V::new("blake2").aliases(["blake2b", "blake2b256"]),
    ])
}

/// A host directory that exists (a usage error otherwise, before anything is made).
fn host_dir(s: &str) -> Result<PathBuf, String> {
    match std::fs::metadata(s) {
        Ok(m) if m.is_dir() => Ok(PathBuf::from(s)),
        Ok(_) => Err(format!("{s} is not a directory")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

fn octal_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode (0 to 7777)")),
    }
}

fn owner_arg(s: &str) -> Result<(Option<u32>, Option<u32>), String> {
    crate::ops::coreutils::parse_owner(s)
}

fn date_arg(s: &str) -> Result<crate::fs::txn::TimeSet, String> {
    crate::ops::coreutils::parse_date(s)
}

fn truncate_size(s: &str) -> Result<crate::ops::write::TruncateSize, String> {
    crate::ops::coreutils::parse_truncate_size(s)
}

/// `write --offset`: a size as mkfs sizes are written, at most 2^63-1.
fn file_offset(s: &str) -> Result<u64, String> {
    match crate::ops::mkfs::parse_size(s) {
        Ok(n) if n <= crate::format::limits::MAX_FILE_SIZE => Ok(n),
        Ok(n) => Err(format!("offset {n} is past the largest file size (2^63-1)")),
        Err(e) => Err(e.to_string()),
    }
}

/// A size as mkfs sizes are written (bytes, or K, M, G...).
fn size_arg(s: &str) -> Result<u64, String> {
    crate::ops::mkfs::parse_size(s).map_err(|e| e.to_string())
}

/// `--max-bio`: a size (as mkfs sizes are written: bytes, or K, M, G...),
/// whole pages of 4 KiB from 4K to 1G (a bio is built of pages).
fn bio_size(s: &str) -> Result<usize, String> {
    const PAGE: u64 = 4096;
    const MAX: u64 = 1 << 30;
    match crate::ops::mkfs::parse_size(s) {
        Err(e) => Err(e.to_string()),
        Ok(b) if !(PAGE..=MAX).contains(&b) => Err("must be from 4K to 1G".into()),
        Ok(b) if b % PAGE != 0 => Err(format!("{b} bytes is not a whole number of 4 KiB pages")),
        Ok(b) => usize::try_from(b).map_err(|_| "must be from 4K to 1G".into()),
    }
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
    buf.extend(man_extra_roff("btrs"));
    out.push(("btrs.1".to_string(), buf));
    for sub in cmd.get_subcommands() {
        let short = sub.get_name().to_string();
        let name = format!("btrs-{short}");
        let sub = sub.clone().name(name.clone());
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub).title(name.to_uppercase()).date("").render(&mut buf)?;
        buf.extend(man_extra_roff(&short));
        out.push((format!("{name}.1"), buf));
    }
    Ok(out)
}

#[derive(Args, Debug)]
pub struct WriteArgs {
    pub image: PathBuf,
    /// Path of the file inside the filesystem, from the top-level subvolume;
    /// paths lead through subvolumes and snapshots (read-only ones are refused).
    pub path: OsString,
    /// Read the bytes from this host file ("-" or absent: standard input).
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Byte offset to write at (below 2^63, the largest file size): bytes,
    /// with a suffix (K, M, G...: powers of 1024) or in hex (0x1000).
    #[arg(long, default_value = "0", value_parser = file_offset)]
    pub offset: u64,
    /// Cut the file at --offset first, so it ends with the new bytes.
    #[arg(long)]
    pub truncate: bool,
    /// Direct write: the input goes into the engine's own aligned pages (never
    /// written from the caller's buffer) and from them to every mirror in
    /// bios that never cross a stripe or chunk boundary, through image files
    /// opened O_DIRECT (a notice where the host refuses it). An offset or an
    /// end inside a sector is read-modify-written: the sector's current bytes
    /// are merged into the engine's pages and whole sectors go to disk (the
    /// kernel falls back to buffered IO there; the bytes on disk are the
    /// same). A failed bio fails the write; nothing of it is committed.
    #[arg(long)]
    pub direct: bool,
    /// Largest single device write (bio): whole 4 KiB pages from 4K to 1G,
    /// e.g. 1M, 256K; default 1M (256 pages).
    #[arg(long, value_name = "SIZE", value_parser = bio_size)]
    pub max_bio: Option<usize>,
    /// Create the file without data checksums.
    #[arg(long)]
    pub nodatasum: bool,
    /// Create the file NODATACOW (implies nodatasum): overwrites go in place.
    #[arg(long)]
    pub nodatacow: bool,
    /// Compress the bytes written, as the kernel's compress=ALGO[:LEVEL] mount
    /// option would: zlib (the default), lzo or zstd, levels as for mkfs
    /// --compress. Data goes in chunks of 128 KiB, each stored compressed only
    /// when that saves at least a sector (checksums cover the compressed
    /// bytes); files up to a sector whose compressed form fits in 2048 bytes
    /// are compressed inline. A chunk that does not compress is written as it
    /// is and marks the file NOCOMPRESS: from there on nothing more of it is
    /// compressed, in this write or later ones, unless forced. Files flagged
    /// compressed (chattr +c) or with a btrfs.compression property are
    /// compressed without this option, with the property's algorithm when it
    /// names one (it also wins over ALGO), and a property never lets the file
    /// be marked; new files and directories inherit both from their
    /// directory, like NODATACOW. Files without checksums (nodatasum,
    /// nodatacow) are never compressed, and direct writes neither (refused
    /// with --direct).
    #[arg(long, value_name = "ALGO[:LEVEL]", num_args = 0..=1, require_equals = true, default_missing_value = "zlib",
          conflicts_with_all = ["direct", "nodatasum", "nodatacow", "compress_force"], value_parser = compressions(false))]
    pub compress: Option<String>,
    /// Like --compress, as the kernel's compress-force= does: every chunk is
    /// tried, also in files marked NOCOMPRESS, and none is marked.
    #[arg(long, value_name = "ALGO[:LEVEL]", num_args = 0..=1, require_equals = true, default_missing_value = "zlib",
          conflicts_with_all = ["direct", "nodatasum", "nodatacow"], value_parser = compressions(false))]
    pub compress_force: Option<String>,
    /// Make missing parent directories.
    #[arg(short = 'p', long)]
    pub parents: bool,
    /// Commit after every SIZE bytes written (in steps of 16 MiB: smaller
    /// sizes, 0 included, commit every step) and go on
    /// in a new transaction, like the kernel's periodic commit; a crash then
    /// keeps what the last commit wrote. Default 1G. Bounds memory.
    #[arg(long, value_name = "SIZE")]
    pub commit_every: Option<String>,
    /// Print every device write ("bio") as it is submitted and as it
    /// completes: logical, length, devid, physical, mirror.
    #[arg(short, long)]
    pub verbose: bool,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum SubvolumeCommand {
    /// Make new, empty subvolumes.
    ///
    /// Each PATH names the new subvolume: its root directory (inode 256,
    /// mode 0755, owner 0:0), linked in the directory PATH names, which must
    /// be in a writable subvolume. With quotas on, each gets its level-0
    /// qgroup and the counts are marked inconsistent for a rescan.
    Create(SubvolCreateArgs),
    /// Snapshot a subvolume: a new subvolume sharing every block with SRC.
    ///
    /// Only SRC's root block is copied; everything it points to gains a
    /// reference, so the snapshot takes one tree block whatever SRC holds.
    /// DEST names the snapshot or, when it is an existing directory, the
    /// directory it goes in under SRC's name. Subvolumes nested in SRC appear
    /// in the snapshot as empty directories, as with the kernel.
    Snapshot(SubvolSnapshotArgs),
    /// Delete subvolumes, freeing their blocks.
    ///
    /// The subvolume is unlinked and its tree dropped at once: every tree
    /// block and data extent no other subvolume or snapshot uses is freed,
    /// with the data's checksums (the kernel leaves that to its cleaner
    /// thread). Refused for the top level, the default subvolume, a
    /// subvolume holding others (unless -R), one whose root is immutable,
    /// and one linked in a read-only subvolume or immutable directory: every
    /// subvolume named (and, with -R, nested) is checked before the first
    /// goes. Each is then deleted in its own commit (nested ones first), so
    /// a crash leaves each subvolume whole or gone.
    Delete(SubvolDeleteArgs),
    /// List subvolumes in `btrfs subvolume list`'s format.
    List(SubvolListArgs),
    /// Show one subvolume in `btrfs subvolume show`'s format.
    Show(SubvolShowArgs),
    /// Print the default subvolume (mounted when none is named).
    GetDefault(SubvolGetDefaultArgs),
    /// Make a subvolume the default (by path, or by id; 5 is the top level).
    SetDefault(SubvolSetDefaultArgs),
}

#[derive(Args, Debug)]
pub struct SubvolCreateArgs {
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<OsString>,
    /// Make missing parent directories.
    #[arg(short = 'p', long)]
    pub parents: bool,
}

#[derive(Args, Debug)]
pub struct SubvolSnapshotArgs {
    pub image: PathBuf,
    /// The subvolume to snapshot (a path; / is the top level).
    pub src: OsString,
    /// The snapshot's path, or an existing directory to put it in.
    pub dest: OsString,
    /// Make the snapshot read-only.
    #[arg(short = 'r')]
    pub readonly: bool,
}

#[derive(Args, Debug)]
pub struct SubvolDeleteArgs {
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<OsString>,
    /// Delete the subvolumes inside each one first.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

#[derive(Args, Debug)]
pub struct SubvolListArgs {
    pub image: PathBuf,
    /// A path in the filesystem (it must exist), as the mount point of
    /// `btrfs subvolume list PATH`: subvolumes below the subvolume PATH is in
    /// are shown by their path from it; with -o, only those directly inside
    /// it are listed, by their path from the top level (as progs does).
    #[arg(value_name = "PATH")]
    pub path: Option<OsString>,
    /// Show each one's parent id.
    #[arg(short = 'p')]
    pub parent: bool,
    /// Show the generation each one was made in.
    #[arg(short = 'c')]
    pub cgen: bool,
    /// Show the generation (always shown).
    #[arg(short = 'g')]
    pub gen: bool,
    /// Show each one's uuid.
    #[arg(short = 'u')]
    pub uuid: bool,
    /// Show each one's parent uuid (the subvolume it is a snapshot of).
    #[arg(short = 'q')]
    pub parent_uuid: bool,
    /// Show each one's received uuid.
    #[arg(short = 'R')]
    pub received_uuid: bool,
    /// Only subvolumes directly inside PATH (the top level when no PATH).
    #[arg(short = 'o')]
    pub below: bool,
    /// Only snapshots.
    #[arg(short = 's')]
    pub snapshots: bool,
    /// Only read-only subvolumes.
    #[arg(short = 'r')]
    pub readonly: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SubvolShowArgs {
    pub image: PathBuf,
    /// The subvolume (a path; / is the top level).
    pub path: OsString,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SubvolGetDefaultArgs {
    pub image: PathBuf,
}

#[derive(Args, Debug)]
pub struct SubvolSetDefaultArgs {
    pub image: PathBuf,
    /// A subvolume's path, or its id.
    pub subvol: OsString,
}

#[derive(Subcommand, Debug)]
pub enum FilesystemCommand {
    /// The label, uuid, device count and bytes used, and each device's size,
    /// allocated bytes and image, as `btrfs filesystem show` prints an
    /// unmounted filesystem (a missing device adds `*** Some devices missing`).
    Show(FsShowArgs),
    /// Logical bytes allocated (total) and used per block group type and
    /// profile, as `btrfs filesystem df` prints them on a mount, in the
    /// kernel's order; without its GlobalReserve line, a reservation of the
    /// running kernel that no image holds.
    Df(FsShowArgs),
    /// Overall sizes, used and free space, each type and profile with the
    /// bytes its stripes take on each device, and each device's unallocated
    /// space, as `btrfs filesystem usage` prints them on a mount; the two
    /// values only a running kernel has (statfs's free space, the global
    /// reserve) are printed as `-`.
    Usage(FsShowArgs),
}

#[derive(Args, Debug)]
pub struct FsShowArgs {
    pub image: PathBuf,
    /// Sizes in bytes (progs' --raw).
    #[arg(long)]
    pub raw: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PropertyCommand {
    /// Print a property (all of PATH's when no NAME).
    Get(PropertyGetArgs),
    /// Set a property.
    ///
    /// ro (true|false) on a subvolume: clearing it on a received subvolume
    /// forgets that it was received, as the kernel does. compression
    /// (zlib, lzo, zstd, with an optional :LEVEL, or no/none; empty removes
    /// it) on a file or directory: the btrfs.compression property, which
    /// btrs's writes and the kernel honour and new files in a directory
    /// inherit. label on the filesystem (at most 255 bytes; PATH any).
    Set(PropertySetArgs),
}

#[derive(Args, Debug)]
pub struct PropertyGetArgs {
    pub image: PathBuf,
    /// A path in the filesystem (/ is the top level).
    pub path: OsString,
    /// ro, compression or label (all PATH has when not given).
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct PropertySetArgs {
    pub image: PathBuf,
    pub path: OsString,
    /// ro, compression or label.
    pub name: String,
    /// The new value (ro: true or false; compression: empty removes it).
    #[arg(allow_hyphen_values = true)]
    pub value: String,
}

#[derive(Args, Debug)]
pub struct ChattrArgs {
    pub image: PathBuf,
    pub path: OsString,
    /// +FLAGS, -FLAGS or =FLAGS (letters among CcmiaAdSD).
    #[arg(allow_hyphen_values = true)]
    pub mode: crate::fs::txn::AttrChange,
}

#[derive(Args, Debug)]
pub struct LsattrArgs {
    pub image: PathBuf,
    /// Paths (a directory's entries are listed unless -d).
    #[arg(default_value = "/")]
    pub paths: Vec<OsString>,
    /// List directories themselves, not their entries.
    #[arg(short = 'd')]
    pub directory: bool,
}

#[derive(Args, Debug)]
pub struct MkdirArgs {
    pub image: PathBuf,
    pub path: OsString,
    /// Make parents as needed; no error if it exists.
    #[arg(short = 'p', long)]
    pub parents: bool,
    /// Permission bits of the new directory, octal (default 0755; parents
    /// made by -p get 0755).
    #[arg(short = 'm', long, value_name = "MODE", value_parser = octal_mode)]
    pub mode: Option<u32>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<OsString>,
    /// Remove directories and their contents.
    #[arg(short = 'r', short_alias = 'R', long)]
    pub recursive: bool,
    /// Ignore paths that do not exist.
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct GetfattrArgs {
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<OsString>,
    /// Print only this attribute.
    #[arg(short = 'n', long, value_name = "NAME")]
    pub name: Option<OsString>,
    /// Print the values of all attributes matching -m.
    #[arg(short = 'd', long)]
    pub dump: bool,
    /// Attributes whose names match this regular expression (default
    /// `^user\.`; `-` for every one).
    #[arg(short = 'm', long, value_name = "PATTERN", allow_hyphen_values = true)]
    pub r#match: Option<String>,
    /// How to write values: text, hex or base64.
    #[arg(short = 'e', long, value_name = "ENCODING")]
    pub encoding: Option<crate::ops::stat::Encoding>,
    /// Print the raw value only (with -n; nothing else).
    #[arg(long)]
    pub only_values: bool,
    /// Keep a leading `/` in the `# file:` lines.
    #[arg(long)]
    pub absolute_names: bool,
}

#[derive(Args, Debug)]
pub struct ChmodArgs {
    pub image: PathBuf,
    /// Octal (0755) or symbolic (u+x,go-w).
    #[arg(allow_hyphen_values = true)]
    pub mode: crate::ops::coreutils::ModeSpec,
    #[arg(required = true)]
    pub paths: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct ChownArgs {
    pub image: PathBuf,
    /// OWNER[:GROUP] or :GROUP, numeric.
    #[arg(value_parser = owner_arg)]
    pub owner: (Option<u32>, Option<u32>),
    #[arg(required = true)]
    pub paths: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct TouchArgs {
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<OsString>,
    /// Change only the access time.
    #[arg(short = 'a')]
    pub access: bool,
    /// Change only the modification time.
    #[arg(short = 'm')]
    pub modification: bool,
    /// Do not make missing files.
    #[arg(short = 'c', long)]
    pub no_create: bool,
    /// This time instead of now: @SECONDS[.FRAC], or YYYY-MM-DD[ HH:MM[:SS[.FRAC]]]
    /// then Z, UTC or +HH:MM / -HH:MM (no offset: UTC).
    #[arg(short = 'd', long, value_name = "DATE", value_parser = date_arg)]
    pub date: Option<crate::fs::txn::TimeSet>,
}

#[derive(Args, Debug)]
pub struct TruncateArgs {
    pub image: PathBuf,
    /// [+-<>]SIZE.
    #[arg(short = 's', long, value_name = "SIZE", allow_hyphen_values = true, value_parser = truncate_size)]
    pub size: crate::ops::write::TruncateSize,
    /// Do not make missing files.
    #[arg(short = 'c', long)]
    pub no_create: bool,
    #[arg(required = true)]
    pub paths: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct StatArgs {
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<OsString>,
    /// One JSON object per path, in a list.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ReadlinkArgs {
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct MvArgs {
    pub image: PathBuf,
    pub src: OsString,
    pub dst: OsString,
}

#[derive(Args, Debug)]
pub struct LnArgs {
    pub image: PathBuf,
    /// Existing path (hard link) or link target text (-s).
    pub target: OsString,
    pub link: OsString,
    /// Make a symbolic link.
    #[arg(short = 's', long)]
    pub symbolic: bool,
}

#[derive(Args, Debug)]
pub struct SetfattrArgs {
    pub image: PathBuf,
    pub path: OsString,
    /// Attribute name, e.g. user.comment, in a namespace the kernel has, with
    /// something after it: user. (regular files and directories only),
    /// trusted., security., btrfs. (properties, below), or
    /// system.posix_acl_access / system.posix_acl_default, whose value must be
    /// a binary POSIX ACL the kernel takes (a default ACL only on a
    /// directory); anything else is refused before anything is written, as
    /// are names over 255 bytes and a name and value too large for one leaf.
    /// `btrfs.compression` is the kernel's
    /// compression property: zlib, lzo or zstd (anything after the name is
    /// ignored, as by the kernel) flags the file or directory COMPRESS, `no`
    /// or `none` flags it NOCOMPRESS, removing it (or an empty value) clears
    /// both; files without checksums refuse it, and other btrfs.* names are
    /// refused. New files and directories inherit it from their directory.
    #[arg(short = 'n', long)]
    pub name: OsString,
    /// Value (absent: empty), read as attr's setfattr reads it: `0x...` hex,
    /// `0s...` base64, `"..."` text with `\NNN` octal escapes, else the
    /// bytes as given.
    #[arg(short = 'v', long)]
    pub value: Option<String>,
    /// Remove the attribute.
    #[arg(short = 'x', long)]
    pub remove: bool,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    pub image: PathBuf,
    /// Host files, directories (copied recursively) or symlinks, then the destination path.
    #[arg(required = true, num_args = 2..)]
    pub paths: Vec<PathBuf>,
}

/// What a btrfs-progs user types by habit, taken as btrs's own: `scrub
/// start [-B] [-r] IMAGE` is `scrub [--readonly] IMAGE` (btrs's scrub
/// always runs in the foreground); `scrub status|cancel|resume` have
/// nothing to act on (an offline scrub keeps no state) and say so.
pub fn progs_habits(mut args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>, String> {
    let Some(at) = args.iter().position(|a| a == "scrub") else { return Ok(args) };
    // Only where `scrub` is the subcommand: everything before it is a global option.
    if args.iter().take(at).skip(1).any(|a| !a.to_string_lossy().starts_with('-')) {
        return Ok(args);
    }
    match args.get(at + 1).and_then(|a| a.to_str()) {
        Some("start") => {
            args.remove(at + 1);
            let mut i = at + 1;
            while i < args.len() {
                match args[i].to_str() {
                    Some("-B") => {
                        args.remove(i);
                        continue;
                    }
                    Some("-r") => args[i] = "--readonly".into(),
                    Some("--") => break,
                    _ => {}
                }
                i += 1;
            }
            Ok(args)
        }
        Some(what @ ("status" | "cancel" | "resume")) => Err(format!(
            "scrub {what}: btrs scrubs offline, in the foreground, and keeps no state between runs: there is no scrub to {}; \
             `btrs scrub IMAGE` scrubs now and prints its result",
            if what == "status" { "report on" } else { what }
        )),
        _ => Ok(args),
    }
}

/// The EXIT STATUS and EXAMPLES sections of a command's man page.
fn man_extras(name: &str) -> (&'static str, &'static [(&'static str, &'static str)]) {
    const PLAIN: &str = "0: done. 1: it failed (the error names what is wrong); a writing command then wrote nothing \
                         since its last commit. 2: a usage error (an unknown option, a value that does not parse).";
    const WRITES: &str = "0: done and committed. 1: refused or failed (the error names the path, device or \
                          limit); nothing of the command is on the images. 2: a usage error, nothing opened.";
    match name {
        "btrs" => (
            PLAIN,
            &[
                ("btrs mkfs -b 1G -d raid1 -m raid1 a.img b.img", "a two-device mirrored filesystem"),
                ("btrs scrub a.img", "verify and compare every copy"),
            ],
        ),
        "mkfs" => (
            "0: the images hold the new filesystem. 1: refused or failed (an existing filesystem without -f, content that \
             does not fit -b, an unreadable source); new images are removed, existing ones left as they were. 2: a usage error.",
            &[
                ("btrs mkfs -b 1G disk.img", "a 1 GiB single-device filesystem"),
                (
                    "btrs mkfs -r rootfs/ --shrink --subvol @:default --subvol @home out.img",
                    "a minimal image of a directory tree with a distribution's subvolumes",
                ),
            ],
        ),
        "dump-super" => (
            "0: printed. 1: unreadable, or a copy without the btrfs magic (unless --force), as progs. 2: a usage error.",
            &[
                ("btrs dump-super -a disk.img", "every superblock copy with its checksum verdict"),
                ("btrs dump-super --json disk.img | jq '.[0].generation'", "one field (the JSON is an array of the copies printed)"),
            ],
        ),
        "dump-tree" => (
            PLAIN,
            &[("btrs dump-tree -t fs disk.img", "the top-level subvolume's tree"), ("btrs dump-tree -t chunk disk.img", "the chunk tree")],
        ),
        "ls" => (PLAIN, &[("btrs ls -lh disk.img /etc", "a long listing with human sizes"), ("btrs ls -R disk.img", "the whole tree")]),
        "cat" => (PLAIN, &[("btrs cat disk.img /etc/hostname", "a file's bytes, every sector checked")]),
        "extract" => (
            "0: everything was extracted. 1: failed, or some entries could not be extracted (listed at the end). 2: a usage error.",
            &[("btrs extract disk.img /home out/", "copy /home out with owners, modes, times, xattrs, hard links and holes")],
        ),
        "scrub" => (
            "0: every copy verified (and what was found was repaired). 3: something wrong remains on the images \
             (uncorrectable or unrepaired findings). 1: the scrub could not run. 2: a usage error.",
            &[
                ("btrs scrub a.img", "verify every copy and compare mirrors, read-only"),
                ("btrs scrub --repair a.img", "rewrite bad copies from verified ones"),
                ("btrs scrub start -B a.img", "progs' habit, the same offline scrub"),
            ],
        ),
        "replace" => (WRITES, &[("btrs replace --degraded a.img 2 new.img", "rebuild missing devid 2 onto new.img")]),
        "resize" => (
            WRITES,
            &[("btrs resize disk.img +1G", "grow devid 1 by 1 GiB"), ("btrs resize disk.img min", "shrink to what the chunks need")],
        ),
        "device" => (
            WRITES,
            &[
                ("btrs device add a.img c.img --size 1G", "add a device"),
                ("btrs device remove a.img 2", "move everything off devid 2 and drop it"),
            ],
        ),
        "balance" => (WRITES, &[("btrs balance a.img --convert data=raid1,metadata=raid1c3", "convert profiles offline")]),
        "completions" => (PLAIN, &[("btrs completions bash > /etc/bash_completion.d/btrs", "bash completion")]),
        "write" => (
            WRITES,
            &[
                ("btrs write disk.img /etc/motd --from motd", "write a host file's bytes"),
                ("echo hi | btrs write disk.img /log --offset 100", "from standard input at an offset"),
            ],
        ),
        "subvolume" => (
            WRITES,
            &[
                ("btrs subvolume snapshot -r disk.img /@ /@snapshots/factory", "a read-only snapshot"),
                ("btrs subvolume list -p disk.img", "as btrfs subvolume list prints it"),
                ("btrs subvolume set-default disk.img /@", "what a mount without subvol= shows"),
            ],
        ),
        "filesystem" => (
            PLAIN,
            &[("btrs fi show disk.img", "devices and sizes"), ("btrs fi df --raw disk.img", "space per type and profile, in bytes")],
        ),
        "property" => (
            WRITES,
            &[
                ("btrs property set disk.img /@snap ro true", "make a snapshot read-only"),
                ("btrs property get disk.img / label", "the label"),
            ],
        ),
        "chattr" => (WRITES, &[("btrs chattr disk.img /var/lib/db +C", "nodatacow for what is made in it")]),
        "lsattr" => (PLAIN, &[("btrs lsattr disk.img /var", "flags of /var's entries")]),
        "mkdir" => (WRITES, &[("btrs mkdir -p -m 700 disk.img /root/.ssh", "with parents, mode 0700")]),
        "rm" => (WRITES, &[("btrs rm -rf disk.img /tmp/build", "a tree, no error when missing")]),
        "mv" => (WRITES, &[("btrs mv disk.img /a /b/", "move into a directory")]),
        "ln" => (WRITES, &[("btrs ln -s disk.img /usr/bin/python3 /usr/bin/python", "a symbolic link")]),
        "setfattr" => (WRITES, &[("btrs setfattr disk.img /f -n user.k -v 0x00ff", "a binary value in hex")]),
        "getfattr" => (
            "0: printed. 1: failed, or an attribute asked for with -n is missing (named on stderr). 2: a usage error.",
            &[
                ("btrs getfattr -d -m - disk.img /f", "every attribute with its value"),
                ("btrs getfattr --only-values -n user.k disk.img /f", "one raw value"),
            ],
        ),
        "chmod" => {
            (WRITES, &[("btrs chmod disk.img u+x,go-w /usr/local/bin/tool", "symbolic"), ("btrs chmod disk.img 0640 /etc/shadow", "octal")])
        }
        "chown" => (WRITES, &[("btrs chown disk.img 1000:1000 /home/user", "numeric owner and group")]),
        "touch" => (WRITES, &[("btrs touch disk.img -d '2024-01-01 00:00:00' /etc/stamp", "a reproducible time (UTC)")]),
        "truncate" => (
            WRITES,
            &[("btrs truncate disk.img -s 1G /var/swap", "a 1 GiB hole"), ("btrs truncate disk.img -s -4K /log", "drop the last 4 KiB")],
        ),
        "stat" => (
            PLAIN,
            &[("btrs stat disk.img /etc/passwd", "coreutils' layout, times in UTC"), ("btrs stat --json disk.img /a /b", "for scripts")],
        ),
        "readlink" => (PLAIN, &[("btrs readlink disk.img /usr/bin/python", "the target text")]),
        "put" => (WRITES, &[("btrs put disk.img build/out /opt/app", "copy a host tree in, with owners and modes")]),
        "fixture" => (
            PLAIN,
            &[("btrs fixture list", "every fixture"), ("btrs fixture raid1-csum-error fx/", "a damaged test filesystem and its manifest")],
        ),
        _ => (PLAIN, &[]),
    }
}

/// roff for a man page's EXIT STATUS and EXAMPLES sections.
fn man_extra_roff(name: &str) -> Vec<u8> {
    let (status, examples) = man_extras(name);
    let esc = |t: &str| t.replace('\\', "\\\\").replace('-', "\\-");
    let mut s = format!(".SH \"EXIT STATUS\"\n{}\n", esc(status));
    if !examples.is_empty() {
        s.push_str(".SH EXAMPLES\n");
        for (cmd, what) in examples {
            s.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", esc(cmd), esc(what)));
        }
    }
    s.into_bytes()
}

#[cfg(test)]
mod man_tests {
    use super::*;
    use clap::Parser;

    /// Words of a shell command line (single quotes only, as the examples use).
    fn words(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let (mut cur, mut quoted, mut any) = (String::new(), false, false);
        for c in line.chars() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    any = true;
                }
                ' ' if !quoted => {
                    if any || !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                    any = false;
                }
                _ => cur.push(c),
            }
        }
        if any || !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    #[test]
    fn every_page_has_exit_status_and_examples_that_parse() {
        let cmd = command();
        let names: Vec<String> =
            std::iter::once("btrs".to_string()).chain(cmd.get_subcommands().map(|s| s.get_name().to_string())).collect();
        for name in names {
            let (status, examples) = man_extras(&name);
            assert!(status.contains("0:") && status.contains("2:"), "{name}: exit status");
            assert!(!examples.is_empty(), "{name} has no example");
            for (line, what) in examples {
                assert!(!what.is_empty());
                // The btrs part of a pipeline or redirection.
                let start = line.find("btrs ").unwrap_or_else(|| panic!("{name}: {line}"));
                let part = line[start..].split(['|', '>']).next().unwrap().trim();
                // Host directories an example names must exist to parse (--rootdir checks).
                let here = std::env::temp_dir();
                let w: Vec<std::ffi::OsString> =
                    words(part).into_iter().map(|x| if x == "rootfs/" { here.clone().into_os_string() } else { x.into() }).collect();
                let w = progs_habits(w).unwrap();
                if let Err(e) = Cli::try_parse_from(&w) {
                    panic!("{name}: example {line:?} does not parse: {e}");
                }
            }
        }
    }
}
