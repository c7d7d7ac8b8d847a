//! Compressed writes, as the kernel makes them: `btrs write --compress`
//! (the `compress=` mount option: a file that does not compress is marked
//! NOCOMPRESS and no longer tried) and `--compress-force` (every 128 KiB
//! tried, nothing marked); files with the compression flag (chattr +c) or
//! the `btrfs.compression` property compressed without asking, new files
//! and directories inheriting both from their directory; compressed
//! extents of at most 128 KiB of data, kept only when they save a sector,
//! checksums over the compressed bytes; small files compressed inline;
//! direct writes never compressed. Judged by `btrfs check
//! --check-data-csum`, btrs reading the same bytes, and the kernel (mount,
//! read, write more, scrub, check again).

use std::path::Path;
use std::process::Command;

use crate::util::*;

const NOCOMPRESS: u64 = 1 << 3;
const COMPRESS: u64 = 1 << 11;
const NODATASUM: u64 = 1 << 0;
const NODATACOW: u64 = 1 << 1;

/// What a file looks like inside: inode flags, its btrfs.compression
/// property, and its extents as (file offset, compression, inline, ram_bytes,
/// num_bytes, disk_num_bytes).
struct Facts {
    flags: u64,
    prop: Option<String>,
    extents: Vec<(u64, u8, bool, u64, u64, u64)>,
}

impl Facts {
    fn compressed(&self, kind: u8) -> usize {
        self.extents.iter().filter(|e| e.1 == kind).count()
    }
    fn plain(&self) -> usize {
        self.compressed(0)
    }
}

fn facts(img: &Path, path: &str) -> Facts {
    // The other devices of the filesystem are the images beside it.
    let devices: Vec<_> = std::fs::read_dir(img.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "img"))
        .collect();
    let opts = btrs::volumes::OpenOptions { image: img.to_path_buf(), devices, ..Default::default() };
    let fs = btrs::Filesystem::open(&opts).unwrap();
    let id = fs.resolve(path).unwrap().id;
    let inode = fs.inode(id).unwrap();
    let prop = fs.xattrs(id).unwrap().into_iter().find(|(n, _)| n == b"btrfs.compression").map(|(_, v)| String::from_utf8(v).unwrap());
    let extents = fs
        .file_extents(id)
        .unwrap()
        .into_iter()
        .map(|(off, fe)| match fe.kind {
            btrs::format::items::FileExtentKind::Inline { ref data } => {
                (off, fe.compression, true, fe.ram_bytes, fe.ram_bytes, data.len() as u64)
            }
            btrs::format::items::FileExtentKind::Regular { num_bytes, disk_num_bytes, .. } => {
                (off, fe.compression, false, fe.ram_bytes, num_bytes, disk_num_bytes)
            }
        })
        .collect();
    Facts { flags: inode.flags, prop, extents }
}

fn incompat(img: &Path) -> String {
    String::from_utf8(ok(&["dump-super", s(img)])).unwrap()
}

/// Every compressed extent covers at most 128 KiB and saves at least a sector.
fn sane_compressed(f: &Facts, what: &str) {
    for &(off, c, inline, ram, num, disk) in &f.extents {
        if c != 0 && !inline {
            assert!(ram <= 128 << 10 && num <= ram, "{what}: compressed extent at {off}: ram {ram}, num_bytes {num}");
            assert!(disk + 4096 <= ram, "{what}: compressed extent at {off} saves less than a sector ({disk} of {ram})");
        }
    }
}

/// Text, then `random` bytes of noise at `at`, then text again.
fn mixed(len: usize, at: usize, random: usize, seed: u64) -> Vec<u8> {
    let mut v = text(len, seed);
    v[at..at + random].copy_from_slice(&pseudo(random, seed + 100));
    v
}

#[test]
fn write_compress_and_compress_force() {
    let test = "write_compress_and_compress_force";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A RAID1 pair: every compressed extent goes to both copies.
    let imgs = mkfs(dir, 2, "256M", "raid1", &[]);
    let img = &imgs[0];
    let mut m = Model::new();
    for (i, (arg, kind)) in
        [("--compress", 1u8), ("--compress=zlib:9", 1), ("--compress=lzo", 2), ("--compress=zstd", 3), ("--compress=zstd:-5", 3)]
            .iter()
            .enumerate()
    {
        let p = format!("/c{i}");
        write_at(dir, img, &mut m, &p, 0, &text((1 << 20) + 5, i as u64), &[arg]);
        let f = facts(img, &p);
        assert!(f.compressed(*kind) >= 8, "{arg}: {:?}", f.extents);
        assert_eq!(f.flags & NOCOMPRESS, 0, "{arg}");
        sane_compressed(&f, arg);
    }
    let sb = incompat(img);
    assert!(sb.contains("COMPRESS_LZO") && sb.contains("COMPRESS_ZSTD"), "{sb}");
    judged(test, &imgs, &m, "compressed writes");

    // compress=: a file whose data does not compress is marked NOCOMPRESS,
    // and later writes to it are not compressed.
    write_at(dir, img, &mut m, "/noise", 0, &mixed(1 << 20, 0, 200_000, 7), &["--compress=zstd"]);
    let f = facts(img, "/noise");
    assert_ne!(f.flags & NOCOMPRESS, 0, "not marked NOCOMPRESS: {:#x}", f.flags);
    assert_eq!(f.compressed(3), 0, "{:?}", f.extents);
    write_at(dir, img, &mut m, "/noise", 1 << 20, &text(500_000, 8), &["--compress=zstd"]);
    assert_eq!(facts(img, "/noise").compressed(3), 0, "a NOCOMPRESS file was compressed");
    // compress-force=: every chunk tried, the noise written plain, nothing marked.
    write_at(dir, img, &mut m, "/forced", 0, &mixed(1 << 20, 262_144, 262_144, 9), &["--compress-force=zstd"]);
    let f = facts(img, "/forced");
    assert_eq!(f.flags & NOCOMPRESS, 0);
    assert!(f.compressed(3) == 6 && f.plain() == 1, "{:?}", f.extents);
    sane_compressed(&f, "forced");
    write_at(dir, img, &mut m, "/noise", 100_000, &text(300_000, 10), &["--compress-force=lzo"]);
    assert!(facts(img, "/noise").compressed(2) >= 2, "compress-force leaves NOCOMPRESS files alone");
    // Small files: compressed inline when that fits in max_inline.
    write_at(dir, img, &mut m, "/small", 0, &text(4000, 11), &["--compress=zlib"]);
    let f = facts(img, "/small");
    assert!(f.extents.len() == 1 && f.extents[0].2 && f.extents[0].1 == 1 && f.extents[0].3 == 4000, "{:?}", f.extents);
    // One sector or less at a file offset past 0 never compresses (it saves nothing).
    write_at(dir, img, &mut m, "/c0", 5 << 20, &text(4096, 12), &["--compress"]);
    assert_eq!(facts(img, "/c0").flags & NOCOMPRESS, 0);
    // Unaligned appends and overwrites into compressed files.
    write_at(dir, img, &mut m, "/c3", 777_777, &text(333_333, 13), &["--compress=zstd"]);
    write_at(dir, img, &mut m, "/c3", 1000, &pseudo(10_000, 14), &[]);
    judged(test, &imgs, &m, "compress= and compress-force=");

    // Direct writes are never compressed: refused together, and a file with
    // the property written directly gets plain extents.
    let err = fails(&["write", s(img), "/x", "--from", "/dev/null", "--direct", "--compress"], 2);
    assert!(err.contains("--direct"), "{err}");
    ok(&["setfattr", s(img), "/c1", "-n", "btrfs.compression", "-v", "zstd"]);
    let before = facts(img, "/c1").plain();
    write_at(dir, img, &mut m, "/c1", 2 << 20, &text(1 << 20, 15), &["--direct"]);
    assert_eq!(facts(img, "/c1").compressed(3), 0, "a direct write was compressed");
    assert!(facts(img, "/c1").plain() > before);
    ok(&["scrub", "--no-progress", s(img)]);
    if kernel_judge(test, dir, &imgs, &mut m, |mnt, m| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(mnt.join("c3")).unwrap();
        let data = text(200_000, 16);
        f.write_all_at(&data, 50_000).unwrap();
        model_write(m, "/c3", 50_000, &data, false);
    }) {
        write_at(dir, img, &mut m, "/c3", 60_000, &text(70_000, 17), &["--compress=lzo"]);
        judged(test, &imgs, &m, "btrs after the kernel");
    }
}

/// Flags and properties the kernel set, honoured and inherited by btrs; the
/// kernel honours what btrs set.
#[test]
fn compression_flag_and_property_like_the_kernel() {
    let test = "compression_flag_and_property_like_the_kernel";
    if !crate::common::interop::interop_enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs_progs(dir, 256 << 20, &[]);
    let img = &imgs[0];
    let mnt = dir.join("mnt");
    let mut m = Model::new();
    {
        let mounted = crate::common::interop::Mounted::mount(&mnt, &imgs, "").unwrap();
        for d in ["p", "c", "n"] {
            std::fs::create_dir(mnt.join(d)).unwrap();
        }
        crate::common::interop::must(Command::new("setfattr").args(["-n", "btrfs.compression", "-v", "zstd"]).arg(mnt.join("p")));
        crate::common::interop::must(Command::new("chattr").arg("+c").arg(mnt.join("c")));
        crate::common::interop::must(Command::new("chattr").arg("+C").arg(mnt.join("n")));
        let data = text(300_000, 1);
        std::fs::write(mnt.join("p/existing"), &data).unwrap();
        m.insert("/p/existing".into(), data);
        std::fs::write(mnt.join("plain"), b"plain\n").unwrap();
        m.insert("/plain".into(), b"plain\n".to_vec());
        mounted.unmount().unwrap();
    }
    // New files inherit the property and the flag; the property's algorithm.
    write_at(dir, img, &mut m, "/p/new", 0, &text(1 << 20, 2), &[]);
    let f = facts(img, "/p/new");
    assert_eq!(f.prop.as_deref(), Some("zstd"));
    assert_ne!(f.flags & COMPRESS, 0);
    assert!(f.compressed(3) >= 8, "{:?}", f.extents);
    write_at(dir, img, &mut m, "/c/new", 0, &text(1 << 20, 3), &[]);
    assert!(facts(img, "/c/new").compressed(1) >= 8, "chattr +c directory: zlib expected");
    // With the property, data that does not compress marks nothing.
    write_at(dir, img, &mut m, "/p/noise", 0, &pseudo(500_000, 4), &[]);
    let f = facts(img, "/p/noise");
    assert_eq!(f.flags & NOCOMPRESS, 0);
    assert_eq!(f.compressed(3), 0);
    // NODATACOW directories: files inherit NODATACOW and NODATASUM, never compressed.
    write_at(dir, img, &mut m, "/n/new", 0, &text(500_000, 5), &["--compress-force=zstd"]);
    let f = facts(img, "/n/new");
    assert_eq!(f.flags & (NODATACOW | NODATASUM), NODATACOW | NODATASUM);
    assert_eq!(f.plain(), f.extents.len());
    // Subdirectories inherit too, and pass it on.
    ok(&["mkdir", s(img), "/p/sub"]);
    assert_eq!(facts(img, "/p/sub").prop.as_deref(), Some("zstd"));
    write_at(dir, img, &mut m, "/p/sub/f", 0, &text(400_000, 6), &[]);
    assert!(facts(img, "/p/sub/f").compressed(3) >= 3);
    // The kernel-made file keeps being compressed.
    write_at(dir, img, &mut m, "/p/existing", 300_000, &text(300_000, 7), &[]);
    assert!(facts(img, "/p/existing").compressed(3) >= 5);
    // setfattr btrfs.compression applies the property as the kernel does.
    ok(&["setfattr", s(img), "/plain", "-n", "btrfs.compression", "-v", "lzo"]);
    assert_ne!(facts(img, "/plain").flags & COMPRESS, 0);
    write_at(dir, img, &mut m, "/plain", 0, &text(600_000, 8), &[]);
    assert!(facts(img, "/plain").compressed(2) >= 4);
    assert!(incompat(img).contains("COMPRESS_LZO"));
    let err = fails(&["setfattr", s(img), "/plain", "-n", "btrfs.compression", "-v", "bzip2"], 1);
    assert!(err.contains("btrfs.compression"), "{err}");
    fails(&["setfattr", s(img), "/plain", "-n", "btrfs.nosuch", "-v", "1"], 1);
    fails(&["setfattr", s(img), "/n/new", "-n", "btrfs.compression", "-v", "zstd"], 1);
    ok(&["setfattr", s(img), "/p/sub/f", "-n", "btrfs.compression", "-v", "none"]);
    let f = facts(img, "/p/sub/f");
    assert_eq!((f.flags & (COMPRESS | NOCOMPRESS), f.prop.as_deref()), (NOCOMPRESS, Some("none")));
    let before = f.compressed(3);
    write_at(dir, img, &mut m, "/p/sub/f", 400_000, &text(400_000, 9), &[]);
    assert_eq!(facts(img, "/p/sub/f").compressed(3), before, "compression \"none\" was compressed");
    ok(&["setfattr", s(img), "/p/sub/f", "-x", "-n", "btrfs.compression"]);
    assert_eq!(facts(img, "/p/sub/f").flags & (COMPRESS | NOCOMPRESS), 0);
    judged(test, &imgs, &m, "flags and properties");
    kernel_judge(test, dir, &imgs, &mut m, |mnt, m| {
        // The kernel sees btrs's properties and compresses by them.
        let out = Command::new("getfattr").args(["-n", "btrfs.compression", "--only-values"]).arg(mnt.join("p/sub")).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "zstd");
        let data = text(500_000, 10);
        std::fs::write(mnt.join("p/sub/kernel"), &data).unwrap();
        m.insert("/p/sub/kernel".into(), data);
    });
    assert!(facts(img, "/p/sub/kernel").compressed(3) >= 3, "the kernel did not compress by btrs's property");
}

/// A directory with the compression flag and no property (what kernels
/// before the property wrote): new files compress with zlib, and one that
/// does not compress is marked NOCOMPRESS.
#[test]
fn compression_flag_without_property() {
    let test = "compression_flag_without_property";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 1, "128M", "single", &[]);
    let img = &imgs[0];
    ok(&["mkdir", s(img), "/old"]);
    // Inode 257 is the first one btrs makes; flags are at byte 64 of the inode item.
    patch_item(
        &imgs,
        5,
        |k, _| k.objectid == 257 && k.item_type == btrs::format::INODE_ITEM_KEY,
        |b, r| {
            let at = r.start + 64;
            b[at..at + 8].copy_from_slice(&COMPRESS.to_le_bytes());
        },
    );
    progs_check(test, &imgs, &[]);
    let mut m = Model::new();
    write_at(dir, img, &mut m, "/old/f", 0, &text(600_000, 1), &[]);
    let f = facts(img, "/old/f");
    assert_ne!(f.flags & COMPRESS, 0);
    assert!(f.compressed(1) >= 4, "{:?}", f.extents);
    write_at(dir, img, &mut m, "/old/r", 0, &mixed(600_000, 0, 200_000, 2), &[]);
    let f = facts(img, "/old/r");
    // Marked as the kernel marks it: NOCOMPRESS beside the inherited COMPRESS.
    assert_eq!(f.flags & (COMPRESS | NOCOMPRESS), COMPRESS | NOCOMPRESS, "{:#x}", f.flags);
    assert_eq!(f.compressed(1), 0, "{:?}", f.extents);
    judged(test, &imgs, &m, "flag without property");
    kernel_judge(test, dir, &imgs, &mut m, |_, _| {});
}
