//! Interop: fresh filesystems made by mkfs.btrfs and filled by the kernel,
//! read back by btrs. The kernel's view (walked while mounted) must equal
//! `btrs extract`'s. Covers combinations the checked-in fixtures do not
//! (RAID1C4, 64 KiB and 8 KiB nodes, zstd written by the kernel on mount).

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixtures::{assert_manifest_eq, walk_manifest};
use common::interop::{interop_enabled, must, Mounted};

/// A varied tree: sizes around sector and inline limits, holes, symlinks,
/// hardlinks, xattrs, a fifo, a device node, odd modes, owners and ns times.
fn populate(root: &Path) {
    let w = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
    std::fs::create_dir_all(root.join("d/e/f")).unwrap();
    w("empty", b"");
    w("one", b"x");
    for (name, len) in [("s4095", 4095usize), ("s4096", 4096), ("s4097", 4097), ("m1", 1 << 20), ("m3", 3 << 20)] {
        let data: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] % 7).collect();
        w(&format!("d/{name}"), &data);
    }
    let sparse = std::fs::File::create(root.join("sparse")).unwrap();
    sparse.write_all_at(b"middle", 5 << 20).unwrap();
    sparse.set_len(9 << 20).unwrap();
    std::os::unix::fs::symlink("d/m1", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("d/s4096"), root.join("d/e/hard")).unwrap();
    xattr::set(root.join("one"), "user.note", b"hello").unwrap();
    xattr::set(root.join("d"), "user.empty", b"").unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o640), 0).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("chr"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(10, 200),
    )
    .unwrap();
    std::fs::set_permissions(root.join("one"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::lchown(root.join("d/e"), Some(1234), Some(5678)).unwrap();
    for name in 0..300 {
        w(&format!("d/e/f/n{name:04}"), format!("entry {name}").as_bytes());
    }
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: 1_600_000_000, tv_nsec: 1 },
        last_modification: rustix::fs::Timespec { tv_sec: 1_600_000_123, tv_nsec: 987_654_321 },
    };
    rustix::fs::utimensat(rustix::fs::CWD, root.join("d/m3"), &t, rustix::fs::AtFlags::empty()).unwrap();
    rustix::fs::utimensat(rustix::fs::CWD, root.join("link"), &t, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn round_trip(test: &str, ndev: usize, mkfs_args: &[&str], mount_opts: &str) {
    if !interop_enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs: Vec<PathBuf> = (1..=ndev).map(|i| tmp.path().join(format!("dev{i}.img"))).collect();
    for img in &imgs {
        std::fs::File::create(img).unwrap().set_len(300 << 20).unwrap();
    }
    must(Command::new("mkfs.btrfs").arg("-q").args(mkfs_args).args(&imgs));
    let mnt = tmp.path().join("mnt");
    let m = Mounted::mount(&mnt, &imgs, mount_opts).unwrap();
    populate(&mnt);
    must(Command::new("sync").arg("-f").arg(&mnt));
    let kernel_view = walk_manifest(&mnt);
    m.unmount().unwrap();

    let dest = tmp.path().join("out");
    let out = common::btrs_cmd().arg("extract").arg(&imgs[ndev - 1]).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{test}: {}", String::from_utf8_lossy(&out.stderr));
    assert_manifest_eq(&kernel_view, &walk_manifest(&dest));
}

#[test]
fn kernel_written_single_zstd() {
    round_trip("kernel_written_single_zstd", 1, &[], "compress=zstd");
}

#[test]
fn kernel_written_raid1c4_blake2_64k() {
    round_trip("kernel_written_raid1c4_blake2_64k", 4, &["-d", "raid1c4", "-m", "raid1c4", "--csum", "blake2", "-n", "65536"], "");
}

#[test]
fn kernel_written_raid10_sha256_8k() {
    round_trip("kernel_written_raid10_sha256_8k", 4, &["-d", "raid10", "-m", "raid10", "--csum", "sha256", "-n", "8192"], "compress=lzo");
}

#[test]
fn kernel_written_raid1_xxhash_dup_data() {
    round_trip(
        "kernel_written_raid1_xxhash_dup_data",
        1,
        &["-d", "dup", "-m", "dup", "--csum", "xxhash", "-n", "4096"],
        "compress-force=zlib",
    );
}
