//! `btrs write`, `mkdir`, `rm`, `mv`, `ln`, `setfattr` through the real binary,
//! judged by `btrfs check --readonly` after each step group, by `btrs cat`
//! against an in-memory model, by `btrs scrub` (every mirror byte-identical,
//! every checksum valid) and, where allowed, by the kernel.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::interop::{btrfs_check, interop_enabled, Mounted};

fn btrs(args: &[&str]) -> (i32, String, String) {
    let out = common::btrs_cmd().args(args).output().expect("running btrs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = btrs(args);
    assert_eq!(code, 0, "btrs {args:?} failed: {out}{err}");
    out
}

fn cat(img: &str, path: &str) -> Vec<u8> {
    let out = common::btrs_cmd().args(["cat", img, path]).output().expect("btrs cat");
    assert!(out.status.success(), "btrs cat {path}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn pseudo(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Write through the binary from a host file.
fn write(dir: &Path, img: &str, path: &str, data: &[u8], extra: &[&str]) {
    let src = dir.join("src.bin");
    std::fs::write(&src, data).unwrap();
    let mut args = vec!["write", img, path, "--from", src.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    ok(&args);
}

fn check(imgs: &[PathBuf]) {
    if let Err(e) = btrfs_check(imgs, &[]) {
        panic!("btrfs check failed:\n{e}");
    }
}

/// Every root item's bytes_used equals the bytes of the tree's blocks (the
/// kernel sizes its global reserve from it; btrfs check does not look).
fn root_bytes_used_match(img: &str) {
    let roots = ok(&["dump-tree", img, "--tree", "root"]);
    let mut tree: Option<String> = None;
    let mut checked = 0;
    for line in roots.lines() {
        if let Some(rest) = line.trim().strip_prefix("item ") {
            tree = rest.split_once("key (").and_then(|(_, k)| k.split_once(" ROOT_ITEM ")).map(|(id, _)| id.to_string());
        } else if let (Some(id), Some(used)) = (&tree, line.split_once("bytes_used ").map(|(_, v)| v.trim())) {
            let name = match id.as_str() {
                "EXTENT_TREE" => "extent".to_string(),
                "DEV_TREE" => "dev".to_string(),
                "FS_TREE" => "5".to_string(),
                "CSUM_TREE" => "csum".to_string(),
                "UUID_TREE" => "uuid".to_string(),
                "FREE_SPACE_TREE" => "free-space".to_string(),
                "DATA_RELOC_TREE" => "data-reloc".to_string(),
                "BLOCK_GROUP_TREE" => "block-group".to_string(),
                other => other.to_string(),
            };
            let dump = ok(&["dump-tree", img, "--tree", &name]);
            let blocks = dump.lines().filter(|l| (l.starts_with("leaf ") || l.starts_with("node ")) && l.contains(" owner ")).count();
            let nodesize = 16384;
            assert_eq!(used.parse::<u64>().unwrap(), blocks as u64 * nodesize, "tree {id}: bytes_used vs {blocks} blocks");
            checked += 1;
            tree = None;
        }
    }
    assert!(checked >= 5, "only {checked} root items checked:\n{roots}");
}

fn scrub_clean(img: &str) {
    let (code, out, err) = btrs(&["scrub", "--no-progress", img]);
    assert_eq!(code, 0, "scrub not clean: {out}{err}");
}

/// Apply `data` at `off` to the model file.
fn model_write(m: &mut BTreeMap<String, Vec<u8>>, path: &str, off: usize, data: &[u8], truncate: bool) {
    let f = m.entry(path.to_string()).or_default();
    if truncate {
        f.truncate(off);
    }
    if f.len() < off + data.len() {
        f.resize(off + data.len(), 0);
    }
    f[off..off + data.len()].copy_from_slice(data);
}

fn verify(img: &str, m: &BTreeMap<String, Vec<u8>>) {
    // One extract of the whole tree, not a process per file (10k files).
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("x");
    ok(&["extract", img, "/", dest.to_str().unwrap()]);
    for (p, want) in m {
        let got = std::fs::read(dest.join(p.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(got == *want, "{p}: content differs (len {} vs {})", got.len(), want.len());
    }
}

/// The whole sequence on one filesystem; `imgs[0]` is named on the command line.
fn sequence(dir: &Path, imgs: &[PathBuf]) -> BTreeMap<String, Vec<u8>> {
    let img = imgs[0].to_str().unwrap();
    let mut m = BTreeMap::new();
    // Sizes around sector and extent edges, buffered and direct.
    for (name, len, extra) in [
        ("/empty", 0usize, &[][..]),
        ("/one", 1, &[][..]),
        ("/d/s4095", 4095, &["-p"][..]),
        ("/d/m1", 1 << 20, &["--direct"][..]),
        ("/d/m1p1", (1 << 20) + 1, &[][..]),
        ("/d/m1p1d", (1 << 20) + 1, &["--direct", "--max-bio", "64K"][..]),
        ("/nosum", 300_000, &["--nodatasum"][..]),
        ("/nocow", 200_000, &["--nodatacow"][..]),
    ] {
        let data = pseudo(len, len as u64 + name.len() as u64);
        write(dir, img, name, &data, extra);
        model_write(&mut m, name, 0, &data, false);
    }
    check(imgs);
    verify(img, &m);
    // Overwrite in the middle (unaligned), append, sparse beyond EOF, in-place nocow.
    let mid = pseudo(10_000, 9);
    write(dir, img, "/d/m1", &mid, &["--offset", "5000"]);
    model_write(&mut m, "/d/m1", 5000, &mid, false);
    write(dir, img, "/d/m1p1", &mid, &["--offset", "1048577", "--direct"]);
    model_write(&mut m, "/d/m1p1", 1048577, &mid, false);
    write(dir, img, "/one", b"far", &["--offset", "3000000"]);
    model_write(&mut m, "/one", 3000000, b"far", false);
    write(dir, img, "/nocow", &mid, &["--offset", "4096"]);
    model_write(&mut m, "/nocow", 4096, &mid, false);
    write(dir, img, "/nosum", b"xyz", &["--offset", "7", "--truncate"]);
    model_write(&mut m, "/nosum", 7, b"xyz", true);
    check(imgs);
    verify(img, &m);
    // Namespace: mkdir, rename, links, xattrs, delete.
    ok(&["mkdir", img, "/a/b/c", "-p"]);
    ok(&["mv", img, "/d/s4095", "/a/b/renamed"]);
    let v = m.remove("/d/s4095").unwrap();
    m.insert("/a/b/renamed".into(), v.clone());
    ok(&["ln", img, "/a/b/renamed", "/hard"]);
    m.insert("/hard".into(), v);
    ok(&["ln", "-s", img, "../target/x", "/a/sym"]);
    ok(&["setfattr", img, "/hard", "-n", "user.test", "-v", "value"]);
    ok(&["rm", img, "/empty"]);
    m.remove("/empty");
    ok(&["mkdir", img, "/gone/deeper", "-p"]);
    write(dir, img, "/gone/deeper/f", b"bye", &[]);
    ok(&["rm", "-r", img, "/gone"]);
    check(imgs);
    verify(img, &m);
    let (code, _, _) = btrs(&["cat", img, "/gone/deeper/f"]);
    assert_ne!(code, 0, "removed file still readable");
    m
}

fn mkfs_progs(dir: &Path, n: usize, size: u64, profile: &str) -> Vec<PathBuf> {
    let imgs: Vec<PathBuf> = (1..=n).map(|i| dir.join(format!("dev{i}.img"))).collect();
    for p in &imgs {
        std::fs::File::create(p).unwrap().set_len(size).unwrap();
    }
    let mut cmd = Command::new("mkfs.btrfs");
    cmd.arg("-q");
    if n > 1 {
        cmd.args(["-d", profile, "-m", profile]);
    }
    let o = cmd.args(&imgs).output().expect("mkfs.btrfs");
    assert!(o.status.success(), "mkfs.btrfs: {}", String::from_utf8_lossy(&o.stderr));
    imgs
}

/// `btrs mkfs -b SIZE -d PROFILE -m PROFILE` on `n` new images in `dir`.
fn mkfs_btrs(dir: &Path, n: usize, size: &str, profile: &str) -> Vec<PathBuf> {
    let imgs: Vec<PathBuf> = (1..=n).map(|i| dir.join(format!("dev{i}.img"))).collect();
    let mut args = vec!["mkfs", "-b", size, "-d", profile, "-m", profile];
    args.extend(imgs.iter().map(|p| p.to_str().unwrap()));
    ok(&args);
    imgs
}

#[test]
fn write_sequence_on_mkfs_btrfs_image() {
    if !common::interop::progs_for("write_sequence_on_mkfs_btrfs_image", false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 1, 256 << 20, "");
    sequence(tmp.path(), &imgs);
    scrub_clean(imgs[0].to_str().unwrap());
}

#[test]
fn write_sequence_on_btrs_mkfs_raid1_pair() {
    if !common::interop::progs_for("write_sequence_on_btrs_mkfs_raid1_pair", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_btrs(tmp.path(), 2, "256M", "raid1");
    sequence(tmp.path(), &imgs);
    // Every mirror of every block identical, every checksum valid.
    scrub_clean(imgs[0].to_str().unwrap());
}

#[test]
fn kernel_reads_btrs_writes_and_btrs_reads_kernel_writes() {
    if !interop_enabled("kernel_reads_btrs_writes_and_btrs_reads_kernel_writes") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 2, 256 << 20, "raid1");
    let m = sequence(tmp.path(), &imgs);
    let mnt = tmp.path().join("mnt");
    let mounted = Mounted::mount(&mnt, &imgs, "").expect("mount");
    for (p, want) in &m {
        let got = std::fs::read(mnt.join(p.trim_start_matches('/'))).unwrap();
        assert!(got == *want, "kernel sees different bytes in {p}");
    }
    assert_eq!(std::fs::read_link(mnt.join("a/sym")).unwrap(), PathBuf::from("../target/x"));
    assert_eq!(xattr::get(mnt.join("hard"), "user.test").unwrap().as_deref(), Some(&b"value"[..]));
    let kdata = pseudo(700_000, 77);
    std::fs::write(mnt.join("a/kernel.bin"), &kdata).unwrap();
    std::fs::write(mnt.join("one"), b"rewritten by the kernel").unwrap();
    mounted.unmount().expect("umount");
    check(&imgs);
    let img = imgs[0].to_str().unwrap();
    assert_eq!(cat(img, "/a/kernel.bin"), kdata);
    assert_eq!(cat(img, "/one"), b"rewritten by the kernel");
    // And btrs can keep writing on what the kernel left.
    write(tmp.path(), img, "/a/kernel.bin", b"btrs again", &["--offset", "100"]);
    check(&imgs);
    let mut want = kdata.clone();
    want[100..110].copy_from_slice(b"btrs again");
    assert_eq!(cat(img, "/a/kernel.bin"), want);
}

/// Concurrency: while another process writes (holds the exclusive lock), a
/// second writer and scrub are refused with a clear message, and the
/// read-only commands see the last committed state; with a real btrs writer
/// running, every `ls` shows the new file either not at all or complete.
#[test]
fn writers_exclude_each_other_readers_see_the_last_commit() {
    if !common::interop::progs_for("writers_exclude_each_other_readers_see_the_last_commit", false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 1, 512 << 20, "");
    let img = imgs[0].to_str().unwrap();
    let old = pseudo(100_000, 1);
    write(tmp.path(), img, "/old", &old, &[]);
    {
        let f = std::fs::File::open(&imgs[0]).unwrap();
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let (code, _, err) = btrs(&["mkdir", img, "/x"]);
        assert_ne!(code, 0);
        assert!(err.contains("in use by another process"), "{err}");
        let (code, _, err) = btrs(&["scrub", "--no-progress", img]);
        assert_ne!(code, 0);
        assert!(err.contains("being written by another process"), "{err}");
        assert!(cat(img, "/old") == old);
        assert!(ok(&["ls", img, "/"]).contains("old"));
    }
    let big = pseudo(200 << 20, 2);
    let src = tmp.path().join("big.bin");
    std::fs::write(&src, &big).unwrap();
    let mut writer = common::btrs_cmd().args(["write", img, "/new", "--from", src.to_str().unwrap(), "--quiet"]).spawn().unwrap();
    let (mut before, mut after) = (0, 0);
    loop {
        let done = writer.try_wait().unwrap().is_some();
        let listing = ok(&["ls", "-l", img, "/"]);
        match listing.lines().find(|l| l.ends_with(" new")) {
            None => before += 1,
            Some(line) => {
                assert!(line.contains(&(200u64 << 20).to_string()), "new file visible before its commit was complete: {line}");
                after += 1;
            }
        }
        assert!(cat(img, "/old") == old, "committed file changed under a reader");
        if done {
            break;
        }
    }
    assert!(writer.wait().unwrap().success());
    eprintln!("{before} listings before the commit, {after} after");
    assert!(after > 0);
    assert!(cat(img, "/new") == big);
    check(&imgs);
}

#[test]
fn enospc_is_clear_and_leaves_image_unchanged() {
    if !common::interop::progs_for("enospc_is_clear_and_leaves_image_unchanged", false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 1, 256 << 20, "");
    let before = std::fs::read(&imgs[0]).unwrap();
    let src = tmp.path().join("big.bin");
    std::fs::write(&src, vec![1u8; 300 << 20]).unwrap();
    let (code, _, err) = btrs(&["write", imgs[0].to_str().unwrap(), "/big", "--from", src.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("no space left"), "{err}");
    // The space check comes before any data is written: not one byte changed.
    assert!(std::fs::read(&imgs[0]).unwrap() == before, "image changed");
    check(&imgs);
    // A write that fits still goes in: btrs adds data chunks until the devices are full.
    let fits = pseudo(150 << 20, 5);
    write(tmp.path(), imgs[0].to_str().unwrap(), "/fits", &fits, &[]);
    check(&imgs);
    assert!(cat(imgs[0].to_str().unwrap(), "/fits") == fits);
}

/// (data, metadata) chunk counts from the chunk tree.
fn chunk_counts(img: &str) -> (usize, usize) {
    let dump = ok(&["dump-tree", img, "--tree", "chunk"]);
    let kinds: Vec<&str> = dump.lines().filter(|l| l.contains(" type ") && l.contains("stripe_len")).collect();
    (kinds.iter().filter(|l| l.contains("type DATA")).count(), kinds.iter().filter(|l| l.contains("type METADATA")).count())
}

/// When the block groups fill up, btrs adds chunks in the filesystem's
/// profile (chunk item, dev items, dev extents, block group, free space), on
/// a btrs-made RAID1 pair and on a mkfs.btrfs image; `btrfs check`, btrs's
/// scrub (mirrors identical) and the kernel accept them, and the kernel keeps
/// writing into them.
#[test]
fn chunks_are_added_as_block_groups_fill() {
    if !interop_enabled("chunks_are_added_as_block_groups_fill") {
        return;
    }
    // 80k empty files (about 29 MiB of metadata) overflow the first
    // metadata block group (16 MiB for btrs, 32 MiB for mkfs.btrfs).
    let host = tempfile::tempdir().unwrap();
    let src = host.path().join("many");
    std::fs::create_dir(&src).unwrap();
    for i in 0..80_000 {
        std::fs::File::create(src.join(format!("f{i:05}"))).unwrap();
    }
    for maker in ["btrs", "mkfs.btrfs"] {
        let tmp = tempfile::tempdir().unwrap();
        let imgs = if maker == "btrs" { mkfs_btrs(tmp.path(), 2, "128M", "raid1") } else { mkfs_progs(tmp.path(), 1, 300 << 20, "") };
        let img = imgs[0].to_str().unwrap();
        let (data0, meta0) = chunk_counts(img);
        ok(&["put", img, src.to_str().unwrap(), "/many"]);
        let big = pseudo(40 << 20, 3);
        write(tmp.path(), img, "/big", &big, &[]);
        let (data1, meta1) = chunk_counts(img);
        assert!(data1 > data0, "{maker}: no data chunk added ({data0} -> {data1})");
        assert!(meta1 > meta0, "{maker}: no metadata chunk added ({meta0} -> {meta1})");
        check(&imgs);
        scrub_clean(img);
        assert!(cat(img, "/big") == big, "{maker}: /big differs");
        let mnt = tmp.path().join("mnt");
        let mounted = Mounted::mount(&mnt, &imgs, "").expect("mount");
        assert!(std::fs::read(mnt.join("big")).unwrap() == big, "{maker}: kernel reads different bytes");
        assert_eq!(std::fs::read_dir(mnt.join("many")).unwrap().count(), 80_000);
        let k = pseudo(20 << 20, 4);
        std::fs::write(mnt.join("kernel.bin"), &k).unwrap();
        let sc = Command::new("btrfs").args(["scrub", "start", "-B"]).arg(&mnt).output().unwrap();
        assert!(
            sc.status.success(),
            "{maker}: kernel scrub: {}{}",
            String::from_utf8_lossy(&sc.stdout),
            String::from_utf8_lossy(&sc.stderr)
        );
        mounted.unmount().expect("umount");
        check(&imgs);
        assert!(cat(img, "/kernel.bin") == k);
    }
}

/// 4 KiB nodes (deep trees, and the kernel turns fragmented free space into
/// bitmaps) without NO_HOLES (explicit hole items): btrs writes, the kernel
/// rewrites, btrs writes again over the kernel's bitmaps.
#[test]
fn small_nodes_explicit_holes_and_kernel_bitmaps() {
    if !interop_enabled("small_nodes_explicit_holes_and_kernel_bitmaps") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img_path = tmp.path().join("dev1.img");
    std::fs::File::create(&img_path).unwrap().set_len(256 << 20).unwrap();
    let o = Command::new("mkfs.btrfs").args(["-q", "-n", "4096", "-O", "^no-holes"]).arg(&img_path).output().unwrap();
    assert!(o.status.success());
    let imgs = vec![img_path.clone()];
    let img = img_path.to_str().unwrap();
    let mut m = BTreeMap::new();
    write(tmp.path(), img, "/sparse", b"a", &["--offset", "1000000"]);
    model_write(&mut m, "/sparse", 1000000, b"a", false);
    write(tmp.path(), img, "/sparse", b"b", &["--offset", "5000000"]);
    model_write(&mut m, "/sparse", 5000000, b"b", false);
    for i in 0..120 {
        let p = format!("/many/d{}/f{i}", i % 5);
        let data = pseudo(100 + i * 37, i as u64);
        write(tmp.path(), img, &p, &data, &["-p"]);
        model_write(&mut m, &p, 0, &data, false);
    }
    check(&imgs);
    verify(img, &m);
    let mnt = tmp.path().join("mnt");
    let mounted = Mounted::mount(&mnt, &imgs, "").expect("mount");
    for (p, want) in &m {
        assert!(std::fs::read(mnt.join(p.trim_start_matches('/'))).unwrap() == *want, "kernel sees different {p}");
    }
    std::fs::remove_dir_all(mnt.join("many/d1")).unwrap();
    mounted.unmount().expect("umount");
    m.retain(|p, _| !p.starts_with("/many/d1/"));
    check(&imgs);
    ok(&["rm", "-r", img, "/many"]);
    m.retain(|p, _| !p.starts_with("/many/"));
    check(&imgs);
    verify(img, &m);
}

#[test]
fn put_copies_a_host_tree() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    if !interop_enabled("put_copies_a_host_tree") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 1, 256 << 20, "");
    let src = tmp.path().join("tree");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    let big = pseudo(3 << 20, 5);
    std::fs::write(src.join("sub/big.bin"), &big).unwrap();
    std::fs::write(src.join("sub/deeper/small"), b"small").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("sub/big.bin", src.join("link")).unwrap();
    // What mkfs --rootdir keeps, put keeps: holes, hard links, special files,
    // set-id modes, owners, xattrs, nanosecond times.
    let sparse = std::fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    sparse.write_all_at(b"middle", 20 << 20).unwrap();
    sparse.write_all_at(b"end", (64 << 20) - 3).unwrap();
    drop(sparse);
    std::fs::File::create(src.join("all-hole")).unwrap().set_len(5 << 20).unwrap();
    std::fs::hard_link(src.join("sub/deeper/small"), src.join("small-again")).unwrap();
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    mknodat(CWD, src.join("fifo"), FileType::Fifo, Mode::from_raw_mode(0o640), 0).unwrap();
    mknodat(CWD, src.join("tty"), FileType::CharacterDevice, Mode::from_raw_mode(0o620), rustix::fs::makedev(4, 70_000)).unwrap();
    std::fs::write(src.join("suid"), b"#!/bin/true").unwrap();
    xattr::set(src.join("suid"), "user.note", b"binary\0value").unwrap();
    xattr::set(src.join("sub"), "user.dir", b"d").unwrap();
    xattr::set(src.join("suid"), "security.capability", &[1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    std::os::unix::fs::lchown(src.join("sub/big.bin"), Some(1234), Some(4321)).unwrap();
    std::fs::set_permissions(src.join("suid"), std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    let mut all = vec![src.clone()];
    let mut i = 0;
    while i < all.len() {
        if std::fs::symlink_metadata(&all[i]).unwrap().is_dir() {
            let mut kids: Vec<_> = std::fs::read_dir(&all[i]).unwrap().map(|e| e.unwrap().path()).collect();
            kids.sort();
            all.extend(kids);
        }
        i += 1;
    }
    for (n, p) in all.iter().rev().enumerate() {
        let t = rustix::fs::Timespec { tv_sec: 1_600_000_000 + n as i64 * 100, tv_nsec: 123_456_789 - n as i64 };
        rustix::fs::utimensat(
            CWD,
            p,
            &rustix::fs::Timestamps { last_access: t, last_modification: t },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
    let img = imgs[0].to_str().unwrap();
    ok(&["put", img, src.to_str().unwrap(), "/copy"]);
    check(&imgs);
    assert_eq!(cat(img, "/copy/sub/big.bin"), big);
    assert_eq!(cat(img, "/copy/sub/deeper/small"), b"small");
    assert_eq!(cat(img, "/copy/empty"), b"");
    scrub_clean(img);
    root_bytes_used_match(img);
    // The holes stay holes: 64 + 5 MiB of file in far less data.
    let used: u64 = {
        let out = Command::new("btrfs").args(["inspect-internal", "dump-super", img]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find(|l| l.starts_with("bytes_used")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert!(used < 8 << 20, "bytes_used {used}: holes were written as data");
    let out = tmp.path().join("out");
    ok(&["extract", img, "/copy", out.to_str().unwrap()]);
    for rel in ["suid", "sub/big.bin", "tty", "fifo", "link", "sparse", "sub"] {
        let (a, b) = (std::fs::symlink_metadata(src.join(rel)).unwrap(), std::fs::symlink_metadata(out.join(rel)).unwrap());
        assert_eq!((a.mode(), a.uid(), a.gid(), a.rdev()), (b.mode(), b.uid(), b.gid(), b.rdev()), "{rel}");
        assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()), "mtime of {rel}");
        // Reading a symlink or listing a directory updates its atime on the
        // host (files are read with O_NOATIME): compare files' atimes only.
        if !a.is_dir() && !a.file_type().is_symlink() {
            assert_eq!((a.atime(), a.atime_nsec()), (b.atime(), b.atime_nsec()), "atime of {rel}");
        }
    }
    assert_eq!(xattr::get(out.join("suid"), "security.capability").unwrap().map(|v| v.len()), Some(20));
    assert_eq!(std::fs::metadata(out.join("small-again")).unwrap().ino(), std::fs::metadata(out.join("sub/deeper/small")).unwrap().ino());
    // Last: hashing the files updates their atimes.
    common::fixtures::assert_manifest_eq(&common::fixtures::walk_manifest(&src), &common::fixtures::walk_manifest(&out));
}

fn generation(img: &str) -> u64 {
    let out = ok(&["dump-super", img]);
    out.lines()
        .find_map(|l| l.strip_prefix("generation").map(|v| v.trim().parse::<u64>().expect("generation number")))
        .expect("generation line")
}

/// A long write commits every --commit-every bytes (memory stays bounded
/// whatever the size); each commit is a whole, checkable filesystem, and an
/// input ending exactly on a commit leaves no empty extra generation.
#[test]
fn long_write_commits_in_steps() {
    if !common::interop::progs_for("long_write_commits_in_steps", false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 1, 256 << 20, "");
    let img = imgs[0].to_str().unwrap();
    let g0 = generation(img);
    let data = pseudo(48 << 20, 11);
    write(tmp.path(), img, "/steps", &data, &["--commit-every", "16M"]);
    assert_eq!(generation(img), g0 + 3, "one commit per 16 MiB");
    check(&imgs);
    assert!(cat(img, "/steps") == data);
    // Not a multiple: the tail gets the final commit.
    let data2 = pseudo((20 << 20) + 123, 12);
    write(tmp.path(), img, "/steps2", &data2, &["--commit-every", "16M", "--direct"]);
    assert_eq!(generation(img), g0 + 5);
    check(&imgs);
    assert!(cat(img, "/steps2") == data2);
}

/// SIGKILL at many points of a write (buffered and direct, overwrite of an
/// existing file and a new file, several commits in one run): after each,
/// `btrfs check` is clean, btrs's scrub finds every reachable mirror and
/// checksum good, and each file holds its content as of some commit — never
/// a mix inside one transaction.
#[test]
fn sigkill_at_random_points_keeps_old_or_new_content() {
    if !common::interop::progs_for("sigkill_at_random_points_keeps_old_or_new_content", false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 1, 256 << 20, "");
    let img = imgs[0].to_str().unwrap();
    let old = pseudo(32 << 20, 21);
    write(tmp.path(), img, "/f", &old, &[]);
    let new = pseudo(32 << 20, 22);
    let src = tmp.path().join("new.bin");
    std::fs::write(&src, &new).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["write", img, "/f", "--from", src.to_str().unwrap(), "--quiet"];
        args.extend_from_slice(extra);
        common::btrs_cmd().args(&args).spawn().expect("spawn btrs")
    };
    // How long an unkilled write takes: kills are spread over that time.
    let t0 = std::time::Instant::now();
    assert!(run(&[]).wait().unwrap().success());
    let full = t0.elapsed().as_micros() as u64;
    write(tmp.path(), img, "/f", &old, &[]);
    let (mut olds, mut news, mut steps) = (0, 0, 0);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    // The span kills are spread over, from the unkilled run's time; a busy
    // machine starts and runs the writer slower or faster than that run
    // did, so past the first 16 kills, while every kill landed on one side
    // of the commit, the span moves toward the other side (at most 48 more).
    let mut span = (full + full / 4).max(1);
    let mut kills = 0;
    for i in 0..64 {
        if i >= 16 && olds > 0 && news + steps > 0 {
            break;
        }
        if i >= 16 && i % 8 == 0 {
            span = if news + steps == 0 { span.saturating_mul(2) } else { (span / 2).max(1) };
        }
        kills += 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let extra: &[&str] = match i % 4 {
            0 => &[],
            1 => &["--direct"],
            2 => &["--commit-every", "16M"],
            _ => &["--direct", "--commit-every", "16M"],
        };
        let mut child = run(extra);
        std::thread::sleep(std::time::Duration::from_micros(x % span));
        let _ = child.kill();
        let _ = child.wait();
        check(&imgs);
        scrub_clean(img);
        let got = cat(img, "/f");
        assert_eq!(got.len(), old.len(), "kill {i}: size changed");
        if got == old {
            olds += 1;
        } else if got == new {
            news += 1;
        } else {
            // Only a write that commits every 16 MiB may stop between commits:
            // then the first half is new and the second old.
            let half = 16 << 20;
            assert!(extra.contains(&"--commit-every"), "kill {i}: a mix inside one transaction");
            assert!(got[..half] == new[..half] && got[half..] == old[half..], "kill {i}: not a commit boundary");
            steps += 1;
        }
        // Back to the old content for the next round.
        if got != old {
            write(tmp.path(), img, "/f", &old, &[]);
        }
    }
    eprintln!(
        "{kills} kills (an unkilled write took {full} µs, last span {span} µs): {olds} old, {news} new, {steps} at a commit boundary"
    );
    // Kills are spread from process start to past the end: some must land
    // before the commit and some after, or the test did not test anything.
    assert!(olds > 0 && news + steps > 0, "kills all landed on one side of the commit");
}

/// The issue's long script, on a btrs-made RAID1 pair and on a mkfs.btrfs
/// pair the kernel has filled: btrs writes every kind of change (the edge
/// sizes of `sequence`, a 300 MiB file crossing chunk boundaries, 10k small
/// files, truncate down and up, deletes and renames) → `btrfs check` → the
/// kernel reads every byte and scrubs → the kernel writes, deletes and runs
/// a full balance (every chunk relocated) → `btrfs check` → btrs reads the
/// kernel's result, writes again on the relocated chunks, and `btrfs check`
/// and btrs's scrub are clean.
#[test]
fn long_interop_script_with_kernel_balance() {
    if !interop_enabled("long_interop_script_with_kernel_balance") {
        return;
    }
    for maker in ["btrs", "mkfs.btrfs+kernel"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut m: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let imgs = if maker == "btrs" {
            mkfs_btrs(tmp.path(), 2, "2G", "raid1")
        } else {
            let imgs = mkfs_progs(tmp.path(), 2, 2 << 30, "raid1");
            let mnt = tmp.path().join("mnt");
            let mounted = Mounted::mount(&mnt, &imgs, "").expect("mount");
            std::fs::create_dir(mnt.join("k")).unwrap();
            for (i, len) in [0usize, 1, 5000, 3 << 20, 50 << 20].into_iter().enumerate() {
                let data = pseudo(len, 100 + i as u64);
                std::fs::write(mnt.join(format!("k/f{i}")), &data).unwrap();
                m.insert(format!("/k/f{i}"), data);
            }
            mounted.unmount().expect("umount");
            imgs
        };
        let img = imgs[0].to_str().unwrap();
        m.extend(sequence(tmp.path(), &imgs));
        // 300 MiB: larger than any one data chunk of these pairs (10 % of 4 GiB).
        let big = pseudo(300 << 20, 31);
        write(tmp.path(), img, "/big", &big, &["-p"]);
        m.insert("/big".into(), big);
        // 10k small files in one directory.
        let host = tmp.path().join("small");
        std::fs::create_dir(&host).unwrap();
        for i in 0..10_000u64 {
            let data = pseudo((i % 700) as usize, i);
            std::fs::write(host.join(format!("s{i:05}")), &data).unwrap();
            m.insert(format!("/small/s{i:05}"), data);
        }
        ok(&["put", img, host.to_str().unwrap(), "/small"]);
        // Truncate down, then up (the tail reads back as zeros).
        let t = pseudo(1 << 20, 41);
        write(tmp.path(), img, "/trunc", &t, &[]);
        write(tmp.path(), img, "/trunc", b"", &["--offset", "12345", "--truncate"]);
        write(tmp.path(), img, "/trunc", b"end", &["--offset", "700000"]);
        let mut tw = t[..12345].to_vec();
        tw.resize(700000, 0);
        tw.extend_from_slice(b"end");
        m.insert("/trunc".into(), tw);
        check(&imgs);
        scrub_clean(img);
        root_bytes_used_match(img);
        verify(img, &m);

        let mnt = tmp.path().join("mnt");
        let mounted = Mounted::mount(&mnt, &imgs, "").expect("mount");
        for (p, want) in &m {
            let got = std::fs::read(mnt.join(p.trim_start_matches('/'))).unwrap();
            assert!(got == *want, "{maker}: kernel sees different bytes in {p}");
        }
        let sc = Command::new("btrfs").args(["scrub", "start", "-B"]).arg(&mnt).output().unwrap();
        assert!(sc.status.success(), "{maker}: kernel scrub: {}", String::from_utf8_lossy(&sc.stdout));
        // The kernel changes things, then relocates every chunk.
        let kdata = pseudo(20 << 20, 51);
        std::fs::write(mnt.join("kernel.bin"), &kdata).unwrap();
        m.insert("/kernel.bin".into(), kdata);
        std::fs::remove_file(mnt.join("small/s00007")).unwrap();
        m.remove("/small/s00007");
        std::fs::rename(mnt.join("trunc"), mnt.join("renamed-by-kernel")).unwrap();
        let v = m.remove("/trunc").unwrap();
        m.insert("/renamed-by-kernel".into(), v);
        let bal = Command::new("btrfs").args(["balance", "start", "--full-balance"]).arg(&mnt).output().unwrap();
        if !bal.status.success() {
            let usage = Command::new("btrfs").args(["filesystem", "usage", "-T"]).arg(&mnt).output().unwrap();
            let dmesg = Command::new("dmesg").output().unwrap();
            let dmesg = String::from_utf8_lossy(&dmesg.stdout);
            let tail: Vec<&str> = dmesg.lines().rev().take(25).collect();
            panic!(
                "{maker}: balance: {}{}\n{}\n{}",
                String::from_utf8_lossy(&bal.stdout),
                String::from_utf8_lossy(&bal.stderr),
                String::from_utf8_lossy(&usage.stdout),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        mounted.unmount().expect("umount");
        check(&imgs);
        verify(img, &m);
        assert_ne!(btrs(&["cat", img, "/small/s00007"]).0, 0, "{maker}: file the kernel deleted still there");
        // btrs keeps writing on the relocated chunks.
        let after = pseudo(5 << 20, 61);
        write(tmp.path(), img, "/big", &after, &["--offset", "1000"]);
        model_write(&mut m, "/big", 1000, &after, false);
        write(tmp.path(), img, "/after-balance", &after, &["--direct"]);
        m.insert("/after-balance".into(), after);
        check(&imgs);
        scrub_clean(img);
        verify(img, &m);
    }
}

/// Writing into a subvolume whose tree blocks a snapshot shares: btrs copies
/// the shared blocks (the snapshot keeps the originals, with references by
/// parent address where the kernel would put them), `btrfs check` is clean,
/// the snapshot still reads its old bytes, and the kernel agrees — even after
/// it deletes the snapshot and cleans it up, which walks every reference.
#[test]
fn writes_next_to_a_snapshot_leave_it_intact() {
    if !interop_enabled("writes_next_to_a_snapshot_leave_it_intact") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 1, 1 << 30, "");
    let img = imgs[0].to_str().unwrap();
    let mnt = tmp.path().join("mnt");
    let mut old: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    {
        let mounted = Mounted::mount(&mnt, &imgs, "").expect("mount");
        std::fs::create_dir(mnt.join("d")).unwrap();
        // Enough files for a tree of several levels, so nodes are shared too.
        for i in 0..1500u64 {
            let data = pseudo((i as usize * 37) % 3000 + 1, i);
            std::fs::write(mnt.join(format!("d/f{i}")), &data).unwrap();
            old.insert(format!("/d/f{i}"), data);
        }
        let big = pseudo(5 << 20, 9);
        std::fs::write(mnt.join("big"), &big).unwrap();
        old.insert("/big".into(), big);
        let st = Command::new("btrfs").args(["subvolume", "snapshot"]).arg(&mnt).arg(mnt.join("snap")).output().unwrap();
        assert!(st.status.success(), "snapshot: {}", String::from_utf8_lossy(&st.stderr));
        mounted.unmount().expect("umount");
    }
    let mut now = old.clone();
    let patch = pseudo(100_000, 10);
    write(tmp.path(), img, "/big", &patch, &["--offset", "1000000"]);
    model_write(&mut now, "/big", 1_000_000, &patch, false);
    ok(&["rm", img, "/d/f7"]);
    now.remove("/d/f7");
    write(tmp.path(), img, "/d/new", &patch, &[]);
    now.insert("/d/new".into(), patch.clone());
    for i in (0..1500).step_by(50) {
        write(tmp.path(), img, &format!("/d/f{i}"), b"changed", &["--truncate"]);
        now.insert(format!("/d/f{i}"), b"changed".to_vec());
    }
    check(&imgs);
    scrub_clean(img);
    verify(img, &now);
    let snap: BTreeMap<String, Vec<u8>> = old.iter().map(|(k, v)| (format!("/snap{k}"), v.clone())).collect();
    verify(img, &snap);

    let mounted = Mounted::mount(&mnt, &imgs, "").expect("mount");
    for (p, want) in now.iter().chain(snap.iter()) {
        let got = std::fs::read(mnt.join(p.trim_start_matches('/'))).unwrap();
        assert!(got == *want, "kernel sees different bytes in {p}");
    }
    let st = Command::new("btrfs").args(["subvolume", "delete", "-c"]).arg(mnt.join("snap")).output().unwrap();
    assert!(st.status.success(), "subvolume delete: {}", String::from_utf8_lossy(&st.stderr));
    // Wait for the cleaner to drop the snapshot's tree (it frees every
    // block and data reference the snapshot held).
    let st = Command::new("btrfs").args(["subvolume", "sync"]).arg(&mnt).output().unwrap();
    assert!(st.status.success(), "subvolume sync: {}", String::from_utf8_lossy(&st.stderr));
    let sc = Command::new("btrfs").args(["scrub", "start", "-B"]).arg(&mnt).output().unwrap();
    assert!(sc.status.success(), "kernel scrub: {}", String::from_utf8_lossy(&sc.stdout));
    mounted.unmount().expect("umount");
    check(&imgs);
    verify(img, &now);
}

/// Small files go inline in their leaf, as the kernel's buffered writes put
/// them; growing past max_inline (2048) turns the inline extent into a
/// regular one; truncating back down makes it inline again.
#[test]
fn small_files_are_inline_like_the_kernel() {
    if !common::interop::progs_for("small_files_are_inline_like_the_kernel", false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 1, 256 << 20, "");
    let img = imgs[0].to_str().unwrap();
    let inline_sizes = || -> Vec<u64> {
        ok(&["dump-tree", img, "--tree", "5"])
            .lines()
            .filter_map(|l| l.trim().strip_prefix("inline extent data size "))
            .map(|r| r.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    };
    let a = pseudo(100, 1);
    write(tmp.path(), img, "/small", &a, &[]);
    assert_eq!(inline_sizes(), vec![100]);
    let b = pseudo(3000, 2);
    write(tmp.path(), img, "/small", &b, &["--offset", "100"]);
    assert_eq!(inline_sizes(), Vec::<u64>::new(), "3100 bytes is past max_inline");
    let mut want = a.clone();
    want.extend_from_slice(&b);
    assert!(cat(img, "/small") == want);
    write(tmp.path(), img, "/small", b"xy", &["--offset", "10", "--truncate"]);
    assert_eq!(inline_sizes(), vec![12]);
    want.truncate(10);
    want.extend_from_slice(b"xy");
    assert!(cat(img, "/small") == want);
    check(&imgs);
    scrub_clean(img);
}

fn keyed_data_refs(img: &str) -> usize {
    let out = Command::new("btrfs").args(["inspect-internal", "dump-tree", "-t", "extent", img]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).matches("EXTENT_DATA_REF").count()
}

/// Sixty reflinks of one extent: the kernel keeps the first few dozen back
/// references inline in the extent item and the rest as keyed
/// EXTENT_DATA_REF items. btrs drops and adds references of both kinds.
#[test]
fn keyed_back_references_from_many_reflinks() {
    if !interop_enabled("keyed_back_references_from_many_reflinks") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 1, 512 << 20, "");
    let img = imgs[0].to_str().unwrap();
    let mnt = tmp.path().join("mnt");
    let orig = pseudo(1 << 20, 77);
    let mut now: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    {
        let mounted = Mounted::mount(&mnt, &imgs, "").expect("mount");
        std::fs::write(mnt.join("orig"), &orig).unwrap();
        now.insert("/orig".into(), orig.clone());
        for i in 1..=60 {
            let st = Command::new("cp").arg("--reflink=always").arg(mnt.join("orig")).arg(mnt.join(format!("c{i}"))).output().unwrap();
            assert!(st.status.success(), "cp --reflink: {}", String::from_utf8_lossy(&st.stderr));
            now.insert(format!("/c{i}"), orig.clone());
        }
        mounted.unmount().expect("umount");
    }
    let keyed = keyed_data_refs(img);
    assert!(keyed >= 10, "the kernel made only {keyed} keyed data refs; the test needs them");
    // Every copy goes or changes: each of its references, inline or keyed, is dropped.
    for i in (1..=60).step_by(2) {
        ok(&["rm", img, &format!("/c{i}")]);
        now.remove(&format!("/c{i}"));
    }
    let patch = pseudo(100_000, 78);
    for i in (2..=60).step_by(6) {
        // The middle overwritten: the extent keeps two references from this file.
        write(tmp.path(), img, &format!("/c{i}"), &patch, &["--offset", "300000"]);
        model_write(&mut now, &format!("/c{i}"), 300_000, &patch, false);
    }
    check(&imgs);
    let left = keyed_data_refs(img);
    assert!(left < keyed, "keyed refs {keyed} -> {left}: none was dropped");
    verify(img, &now);
    root_bytes_used_match(img);
    let mounted = Mounted::mount(&mnt, &imgs, "").expect("mount");
    for (p, want) in &now {
        assert!(std::fs::read(mnt.join(p.trim_start_matches('/'))).unwrap() == *want, "kernel reads other bytes in {p}");
    }
    // The kernel drops the rest: the references btrs left must be the ones it finds.
    for p in now.keys().filter(|p| p.as_str() != "/orig") {
        std::fs::remove_file(mnt.join(p.trim_start_matches('/'))).unwrap();
    }
    mounted.unmount().expect("umount");
    check(&imgs);
    assert_eq!(keyed_data_refs(img), 0, "references are left after every copy went");
    assert!(cat(img, "/orig") == orig);
}

fn file_sha(p: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

/// Writes inside subvolumes and snapshots the kernel made: nested ones,
/// forty writable snapshots sharing one leaf (so the file's extent carries
/// keyed back references), and a read-only snapshot btrs must refuse.
#[test]
fn writes_inside_subvolumes_and_snapshots() {
    if !interop_enabled("writes_inside_subvolumes_and_snapshots") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 1, 1 << 30, "");
    let img = imgs[0].to_str().unwrap();
    let mnt = tmp.path().join("mnt");
    let base = pseudo(1 << 20, 90);
    let mut now: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let subvol = |args: &[&str]| {
        let st = Command::new("btrfs").arg("subvolume").args(args).output().unwrap();
        assert!(st.status.success(), "btrfs subvolume {args:?}: {}", String::from_utf8_lossy(&st.stderr));
    };
    {
        let mounted = Mounted::mount(&mnt, &imgs, "").expect("mount");
        let m = |p: &str| mnt.join(p).to_str().unwrap().to_string();
        subvol(&["create", &m("sv")]);
        std::fs::write(mnt.join("sv/f"), &base).unwrap();
        subvol(&["create", &m("sv/inner")]);
        std::fs::write(mnt.join("sv/inner/g"), b"inner").unwrap();
        subvol(&["snapshot", "-r", &m("sv"), &m("ro")]);
        for i in 1..=40 {
            subvol(&["snapshot", &m("sv"), &m(&format!("s{i}"))]);
            now.insert(format!("/s{i}/f"), base.clone());
        }
        mounted.unmount().expect("umount");
    }
    now.insert("/sv/f".into(), base.clone());
    now.insert("/ro/f".into(), base.clone());
    now.insert("/sv/inner/g".into(), b"inner".to_vec());
    let patch = pseudo(50_000, 91);
    for i in 1..=40 {
        write(tmp.path(), img, &format!("/s{i}/f"), &patch, &["--offset", &(i * 8192).to_string()]);
        model_write(&mut now, &format!("/s{i}/f"), i as usize * 8192, &patch, false);
    }
    write(tmp.path(), img, "/sv/f", &patch, &["--offset", "500000"]);
    model_write(&mut now, "/sv/f", 500_000, &patch, false);
    write(tmp.path(), img, "/sv/inner/new/deep", b"nested", &["-p"]);
    now.insert("/sv/inner/new/deep".into(), b"nested".to_vec());
    ok(&["mv", img, "/s3/f", "/s3/moved"]);
    let moved = now.remove("/s3/f").unwrap();
    now.insert("/s3/moved".into(), moved.clone());
    ok(&["ln", img, "/s3/moved", "/s3/hard"]);
    now.insert("/s3/hard".into(), moved);
    ok(&["rm", img, "/s4/f"]);
    now.remove("/s4/f");
    ok(&["setfattr", img, "/s5/f", "--name", "user.k", "--value", "v"]);
    check(&imgs);

    // Refused, image untouched: a read-only snapshot, moves and links across
    // subvolumes, removing a subvolume.
    let before = file_sha(&imgs[0]);
    for (args, want) in [
        (vec!["write", img, "/ro/f", "--from", "/dev/null"], "read-only"),
        (vec!["mkdir", img, "/ro/d"], "read-only"),
        (vec!["mv", img, "/s1/f", "/s2/other"], "different subvolumes"),
        (vec!["ln", img, "/s1/f", "/sv/link"], "different subvolumes"),
        (vec!["rm", img, "-r", "/s7"], "is a subvolume"),
    ] {
        let (code, _, err) = btrs(&args);
        assert!(code != 0 && err.contains(want), "{args:?}: want {want:?}, got {code}: {err}");
    }
    assert_eq!(file_sha(&imgs[0]), before, "a refused command changed the image");
    verify(img, &now);
    root_bytes_used_match(img);
    scrub_clean(img);

    let mounted = Mounted::mount(&mnt, &imgs, "").expect("mount");
    for (p, want) in &now {
        assert!(std::fs::read(mnt.join(p.trim_start_matches('/'))).unwrap() == *want, "kernel reads other bytes in {p}");
    }
    assert_eq!(xattr::get(mnt.join("s5/f"), "user.k").unwrap(), Some(b"v".to_vec()));
    let list = Command::new("btrfs").args(["subvolume", "list"]).arg(&mnt).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 43, "{}", String::from_utf8_lossy(&list.stdout));
    // The kernel goes on writing in them and drops half the snapshots.
    std::fs::write(mnt.join("sv/inner/new/after"), b"kernel").unwrap();
    for i in (1..=40).step_by(2) {
        subvol(&["delete", "-c", mnt.join(format!("s{i}")).to_str().unwrap()]);
    }
    subvol(&["sync", mnt.to_str().unwrap()]);
    let sc = Command::new("btrfs").args(["scrub", "start", "-B"]).arg(&mnt).output().unwrap();
    assert!(sc.status.success(), "kernel scrub: {}", String::from_utf8_lossy(&sc.stdout));
    mounted.unmount().expect("umount");
    check(&imgs);
    now.retain(|p, _| !(1..=40).step_by(2).any(|i| p.starts_with(&format!("/s{i}/"))));
    now.insert("/sv/inner/new/after".into(), b"kernel".to_vec());
    verify(img, &now);
}

fn qgroup_status_flags(img: &str) -> String {
    let out = Command::new("btrfs").args(["inspect-internal", "dump-tree", "-t", "quota", img]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().skip_while(|l| !l.contains("QGROUP_STATUS")).nth(1).unwrap_or_else(|| panic!("no qgroup status: {text}"));
    line.split("flags ").nth(1).and_then(|f| f.split_whitespace().next()).unwrap().to_string()
}

/// Quota groups on: btrs cannot keep their counts exact, so a commit marks
/// them inconsistent (with a notice) for a rescan, as the kernel does when it
/// cannot account an operation. `btrfs check` accepts that; after the
/// kernel's rescan it verifies the recounted numbers.
#[test]
fn quota_groups_are_left_for_a_rescan() {
    if !interop_enabled("quota_groups_are_left_for_a_rescan") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img_path = tmp.path().join("q.img");
    std::fs::File::create(&img_path).unwrap().set_len(512 << 20).unwrap();
    let o = Command::new("mkfs.btrfs").args(["-q", "-R", "quota"]).arg(&img_path).output().unwrap();
    assert!(o.status.success(), "mkfs.btrfs -R quota: {}", String::from_utf8_lossy(&o.stderr));
    let imgs = vec![img_path];
    let img = imgs[0].to_str().unwrap();
    let mnt = tmp.path().join("mnt");
    {
        let m = Mounted::mount(&mnt, &imgs, "").expect("mount");
        let st = Command::new("btrfs").args(["subvolume", "create"]).arg(mnt.join("sv")).output().unwrap();
        assert!(st.status.success());
        std::fs::write(mnt.join("big"), pseudo(3 << 20, 1)).unwrap();
        std::fs::write(mnt.join("sv/f"), pseudo(2 << 20, 2)).unwrap();
        m.unmount().expect("umount");
    }
    assert_eq!(qgroup_status_flags(img), "ON");
    let src = tmp.path().join("src");
    std::fs::write(&src, pseudo(100_000, 3)).unwrap();
    let (code, _, err) = btrs(&["write", img, "/sv/new", "--from", src.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("quota group counts are now marked inconsistent"), "{err}");
    ok(&["rm", img, "/big"]);
    assert_eq!(qgroup_status_flags(img), "ON|INCONSISTENT");
    check(&imgs);
    let m = Mounted::mount(&mnt, &imgs, "").expect("mount");
    let st = Command::new("btrfs").args(["quota", "rescan", "-w"]).arg(&mnt).output().unwrap();
    assert!(st.status.success(), "rescan: {}", String::from_utf8_lossy(&st.stderr));
    let show = Command::new("btrfs").args(["qgroup", "show", "--raw"]).arg(&mnt).output().unwrap();
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    let sv: Vec<u64> =
        show.lines().find(|l| l.starts_with("0/256")).unwrap().split_whitespace().skip(1).take(2).map(|v| v.parse().unwrap()).collect();
    // sv holds 2 MiB + 100,000 bytes (rounded to a sector) of data and its tree leaf.
    assert_eq!(sv[0], (2 << 20) + 102_400 + 16_384, "{show}");
    m.unmount().expect("umount");
    // Consistent again: check now compares every count with its own.
    assert_eq!(qgroup_status_flags(img), "ON");
    check(&imgs);
}

/// Standard input arrives in uneven pieces and with pauses; the reader
/// thread fills whole steps ahead of the engine, buffered and direct, at an
/// aligned and an unaligned offset (the copying path), and a step that ends
/// mid-sector inside the file.
#[test]
fn write_from_standard_input_in_uneven_pieces() {
    use std::io::Write;
    if !common::interop::progs_for("write_from_standard_input_in_uneven_pieces", false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 1, 512 << 20, "");
    let img = imgs[0].to_str().unwrap();
    let data = pseudo(37 << 20 | 4567, 31);
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (path, extra) in [("/buffered", &[][..]), ("/direct", &["--direct"][..]), ("/odd", &["--offset", "5001"][..])] {
        let mut child =
            common::btrs_cmd().args(["write", img, path, "--quiet"]).args(extra).stdin(std::process::Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut at = 0;
        for (n, piece) in [1usize, 4095, 3 << 20, 17, 20 << 20, 100_000].iter().cycle().enumerate() {
            if at >= data.len() {
                break;
            }
            let end = (at + piece).min(data.len());
            stdin.write_all(&data[at..end]).unwrap();
            at = end;
            if n % 4 == 3 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        drop(stdin);
        assert!(child.wait().unwrap().success(), "{path}");
        let off = if path == "/odd" { 5001 } else { 0 };
        model_write(&mut model, path, off, &data, false);
    }
    // Overwrite inside a file, ending mid-sector before its end.
    let mut child = common::btrs_cmd()
        .args(["write", img, "/buffered", "--quiet", "--offset", "4096"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data[..(16 << 20) + 77]).unwrap();
    assert!(child.wait().unwrap().success());
    model_write(&mut model, "/buffered", 4096, &data[..(16 << 20) + 77], false);
    check(&imgs);
    verify(img, &model);
    scrub_clean(img);
}

/// A chunk as btrfs-progs prints it: logical start, length, sub_stripes,
/// and its stripes (devid, physical).
struct ProgsChunk {
    start: u64,
    len: u64,
    kind: String,
    sub_stripes: u64,
    stripes: Vec<(u64, u64)>,
}

fn progs_chunks(imgs: &[PathBuf]) -> Vec<ProgsChunk> {
    let out = common::interop::btrfs_on(imgs, &["inspect-internal", "dump-tree", "-t", "chunk"]).unwrap_or_else(|e| panic!("{e}"));
    let mut chunks: Vec<ProgsChunk> = Vec::new();
    let field =
        |l: &str, name: &str| -> Option<u64> { l.split_whitespace().skip_while(|w| *w != name).nth(1).and_then(|v| v.parse().ok()) };
    for l in out.lines().map(str::trim) {
        if let Some(rest) = l.strip_prefix("item ").and_then(|r| r.split_once("(FIRST_CHUNK_TREE CHUNK_ITEM ")) {
            let start = rest.1.split(')').next().unwrap().parse().unwrap();
            chunks.push(ProgsChunk { start, len: 0, kind: String::new(), sub_stripes: 1, stripes: Vec::new() });
        } else if let Some(c) = chunks.last_mut() {
            if l.starts_with("length ") {
                c.len = field(l, "length").unwrap();
                c.kind = l.rsplit(' ').next().unwrap().to_string();
            } else if l.starts_with("num_stripes ") {
                c.sub_stripes = field(l, "sub_stripes").unwrap();
            } else if l.starts_with("stripe ") {
                c.stripes.push((field(l, "devid").unwrap(), field(l, "offset").unwrap()));
            }
        }
    }
    chunks
}

/// Where copy `mirror` of `logical` lives, computed from btrfs-progs' view
/// of the chunk (the stripe arithmetic of the kernel's btrfs_map_block),
/// independently of btrs's chunk mapper.
fn progs_map(c: &ProgsChunk, logical: u64, mirror: u64) -> (u64, u64) {
    const STRIPE_LEN: u64 = 64 << 10;
    let off = logical - c.start;
    if c.kind.contains("RAID10") || c.kind.contains("RAID0") {
        let sub = c.sub_stripes.max(1);
        let factor = c.stripes.len() as u64 / sub;
        let nr = off / STRIPE_LEN;
        let (devid, phys) = c.stripes[((nr % factor) * sub + mirror) as usize];
        (devid, phys + (nr / factor) * STRIPE_LEN + off % STRIPE_LEN)
    } else {
        let (devid, phys) = c.stripes[mirror as usize];
        (devid, phys + off)
    }
}

/// `btrs write -v` lines: (stage, logical, len, devid, physical, mirror 0-based).
fn bio_lines(out: &str) -> Vec<(String, u64, u64, u64, u64, u64)> {
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() != 12 || w[0] != "bio" {
                return None;
            }
            let n = |i: usize| w[i].parse::<u64>().unwrap_or_else(|_| panic!("bad bio line {l:?}"));
            Some((w[1].to_string(), n(3), n(5), n(7), n(9), n(11) - 1))
        })
        .collect()
}

/// The direct writer's bios, seen with `-v`: none larger than `--max-bio`
/// (default 256 pages of 4 KiB), none across a 64 KiB stripe unit (RAID10)
/// or a chunk boundary (a 200 MiB write on RAID1 that fills one data chunk
/// and goes on in the next), each at the device address btrfs-progs' chunk
/// items give for its copy, every submitted bio completed, and together
/// every sector of the file once per copy. Then check, content and scrub.
#[test]
fn direct_bios_respect_max_bio_stripes_and_chunks() {
    if !common::interop::progs_for("direct_bios_respect_max_bio_stripes_and_chunks", true) {
        return;
    }
    for (profile, ndev, len, max_bio, extra) in
        [("raid10", 4usize, (5usize << 20) + 3, 48u64 << 10, &["--max-bio", "48K"][..]), ("raid1", 2, 200 << 20, 1 << 20, &[][..])]
    {
        let tmp = tempfile::tempdir().unwrap();
        let imgs = mkfs_btrs(tmp.path(), ndev, "512M", profile);
        let names: Vec<&str> = imgs.iter().map(|p| p.to_str().unwrap()).collect();
        let data = pseudo(len, len as u64);
        let src = tmp.path().join("src.bin");
        std::fs::write(&src, &data).unwrap();
        let mut args = vec!["write", names[0], "/f", "--from", src.to_str().unwrap(), "--direct", "-v"];
        args.extend_from_slice(extra);
        let out = ok(&args);
        let bios = bio_lines(&out);
        let chunks = progs_chunks(&imgs);
        let copies = if profile == "raid10" || profile == "raid1" { 2 } else { 1 };
        let submitted: Vec<_> = bios.iter().filter(|b| b.0 == "submit").map(|b| (b.1, b.2, b.3, b.4, b.5)).collect();
        let mut done: Vec<_> = bios.iter().filter(|b| b.0 == "done").map(|b| (b.1, b.2, b.3, b.4, b.5)).collect();
        assert!(!bios.iter().any(|b| b.0 != "submit" && b.0 != "done"), "{profile}: a bio failed:\n{out}");
        let mut want_done = submitted.clone();
        want_done.sort();
        done.sort();
        assert_eq!(done, want_done, "{profile}: every submitted bio completes once");
        let mut per_mirror: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        let mut data_chunks = std::collections::BTreeSet::new();
        for &(logical, n, devid, physical, mirror) in &submitted {
            assert!(n > 0 && n <= max_bio && n % 4096 == 0, "{profile}: bio of {n} bytes (max {max_bio})");
            let c = chunks
                .iter()
                .find(|c| c.start <= logical && logical < c.start + c.len)
                .unwrap_or_else(|| panic!("{profile}: no chunk holds logical {logical}"));
            assert!(c.kind.starts_with("DATA"), "{profile}: data bio in a {} chunk", c.kind);
            assert!(logical + n <= c.start + c.len, "{profile}: bio {logical}+{n} crosses the end of chunk {}", c.start);
            if profile == "raid10" {
                let unit = |x: u64| (x - c.start) / (64 << 10);
                assert_eq!(unit(logical), unit(logical + n - 1), "{profile}: bio {logical}+{n} crosses a stripe unit");
            }
            assert_eq!((devid, physical), progs_map(c, logical, mirror), "{profile}: bio {logical}+{n} copy {mirror}");
            per_mirror.entry(mirror).or_default().push((logical, n));
            data_chunks.insert(c.start);
        }
        assert_eq!(per_mirror.len(), copies, "{profile}: bios for {} copies", per_mirror.len());
        for (m, ranges) in per_mirror.iter_mut() {
            ranges.sort();
            assert!(ranges.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "{profile}: overlapping bios on copy {m}");
            let total: u64 = ranges.iter().map(|r| r.1).sum();
            assert_eq!(total, (len as u64).div_ceil(4096) * 4096, "{profile}: bytes written to copy {m}");
        }
        if profile == "raid1" {
            assert!(data_chunks.len() >= 2, "the 200 MiB write stayed in one chunk: {data_chunks:?}");
        }
        check(&imgs);
        assert!(cat(names[0], "/f") == data, "{profile}: content differs");
        scrub_clean(names[0]);
    }
}

/// Images in use are refused by every command that writes, with an error
/// naming the loop device, and left byte-identical: a pair mounted
/// (read-only) by the kernel, and a pair of which only the second image is
/// attached to a loop device (named through the first).
#[test]
fn write_commands_refuse_images_in_use() {
    if !interop_enabled("write_commands_refuse_images_in_use") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 2, 256 << 20, "raid1");
    let img = imgs[0].to_str().unwrap();
    write(tmp.path(), img, "/f", b"before", &[]);
    let src = tmp.path().join("src.bin");
    let attempts = |loopdev: &str| {
        let runs: [&[&str]; 6] = [
            &["write", img, "/f", "--from", src.to_str().unwrap()],
            &["write", img, "/g", "--from", src.to_str().unwrap(), "--direct"],
            &["mkdir", img, "/d"],
            &["rm", img, "/f"],
            &["setfattr", img, "/f", "-n", "user.x", "-v", "1"],
            &["scrub", "--no-progress", "--repair", img],
        ];
        for args in runs {
            let (code, out, err) = btrs(args);
            assert_eq!(code, 1, "btrs {args:?} on an image in use: {out}{err}");
            assert!(err.contains(loopdev) && err.contains("attached"), "btrs {args:?}: the error does not name {loopdev}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    };
    let mnt = tmp.path().join("mnt");
    let mounted = Mounted::mount(&mnt, &imgs, "ro").expect("mount");
    let dev = {
        let out = common::interop::must(Command::new("findmnt").args(["-n", "-o", "SOURCE"]).arg(&mnt));
        out.trim().to_string()
    };
    let before: Vec<Vec<u8>> = imgs.iter().map(|p| file_sha(p)).collect();
    attempts(&dev);
    let after: Vec<Vec<u8>> = imgs.iter().map(|p| file_sha(p)).collect();
    assert!(before == after, "a refused command changed a mounted image");
    mounted.unmount().expect("umount");

    let before: Vec<Vec<u8>> = imgs.iter().map(|p| file_sha(p)).collect();
    {
        let _lock = common::interop::kernel_lock();
        let loops = common::interop::Loops::attach(&imgs[1..], true).expect("losetup");
        attempts(&loops.devs[0]);
    }
    let after: Vec<Vec<u8>> = imgs.iter().map(|p| file_sha(p)).collect();
    assert!(before == after, "a refused command changed an image");
    check(&imgs);
    assert_eq!(cat(img, "/f"), b"before");
}

/// A file put cannot read is refused before any byte reaches the image
/// (the space pre-pass checks that each file can be read; it opens only
/// sparse ones): run as nobody, with a readable file ahead of it in name order.
#[test]
fn put_refuses_an_unreadable_file_before_writing_anything() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = d.join("a.img");
    ok(&["mkfs", "-b", "200M", img.to_str().unwrap()]);
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
    let src = d.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), common::pseudo(2 << 20, 3)).unwrap();
    for (name, sparse) in [("z", false), ("z-sparse", true)] {
        let f = src.join(name);
        std::fs::write(&f, b"secret").unwrap();
        if sparse {
            std::fs::File::options().write(true).open(&f).unwrap().set_len(8 << 20).unwrap();
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
        let before = std::fs::read(&img).unwrap();
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_btrs"), "put"])
            .args([&img, &src])
            .arg("/tree")
            .output()
            .expect("setpriv (util-linux)");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(&format!("{}", f.display())) && err.contains("ermission denied"), "{name}: {err}");
        assert!(std::fs::read(&img).unwrap() == before, "{name}: the image changed");
        std::fs::remove_file(&f).unwrap();
    }
}

/// put checks before it writes what it would otherwise find half way, with
/// data of earlier files already in the image's free space (attacker's pass
/// on b6d0e8b): a file holding bytes past its size (a /proc file), and tree
/// items the metadata space cannot hold. Both fail with the image file
/// unchanged, byte for byte.
#[test]
fn put_fails_before_writing_when_a_late_error_is_foreseeable() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("a.img");
    ok(&["mkfs", "-b", "300M", img.to_str().unwrap()]);
    std::fs::write(d.join("big"), common::pseudo(20 << 20, 9)).unwrap();
    let before = std::fs::read(&img).unwrap();
    let (c, _, err) = btrs(&["put", img.to_str().unwrap(), d.join("big").to_str().unwrap(), "/proc/self/status", "/"]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("/proc/self/status: holds bytes past its size"), "{err}");
    assert!(std::fs::read(&img).unwrap() == before, "a file with bytes past its size: the image changed");
    // 4 KiB nodes, the data chunk nearly full, then 20,000 files with
    // 200-byte names: their names alone take more than the metadata left.
    let small = d.join("small.img");
    ok(&["mkfs", "-b", "120M", "-n", "4096", small.to_str().unwrap()]);
    std::fs::write(d.join("fill"), common::pseudo(70 << 20, 10)).unwrap();
    ok(&["put", small.to_str().unwrap(), d.join("fill").to_str().unwrap(), "/fill"]);
    let many = d.join("many");
    std::fs::create_dir(&many).unwrap();
    std::fs::write(many.join("0-data"), common::pseudo(3 << 20, 11)).unwrap();
    for i in 0..20_000 {
        std::fs::File::create(many.join(format!("{i:06}{}", "x".repeat(194)))).unwrap();
    }
    let before = std::fs::read(&small).unwrap();
    let (c, _, err) = btrs(&["put", small.to_str().unwrap(), many.to_str().unwrap(), "/many"]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("bytes of metadata do not fit"), "{err}");
    assert!(std::fs::read(&small).unwrap() == before, "metadata that cannot fit: the image changed");
}
