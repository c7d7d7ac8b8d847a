//! `btrs mkfs`, judged by btrfs-progs (`btrfs check --readonly`), by btrs's own read
//! path, and (gated by `BTRS_INTEROP`, see tests/common/interop.rs) by the kernel.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixtures::{assert_manifest_eq, diff_manifests, walk_manifest};
use common::interop::{btrfs_check, interop_enabled, is_root, must, progs_available, Mounted};
use serde_json::Value;

fn btrs(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = common::btrs_cmd().args(args).envs(envs.iter().copied()).output().expect("running btrs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn images(dir: &Path, n: usize) -> Vec<PathBuf> {
    (1..=n).map(|i| dir.join(format!("dev{i}.img"))).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `btrs mkfs ARGS IMAGES`, which must succeed; returns the JSON summary.
fn mkfs(args: &[&str], imgs: &[PathBuf]) -> Value {
    mkfs_env(args, imgs, &[])
}

fn mkfs_env(args: &[&str], imgs: &[PathBuf], envs: &[(&str, &str)]) -> Value {
    let mut a = vec!["mkfs", "--json"];
    a.extend_from_slice(args);
    a.extend(imgs.iter().map(|p| s(p)));
    let (code, out, err) = btrs(&a, envs);
    assert_eq!(code, 0, "btrs {a:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON summary ({e}): {out}"))
}

/// btrfs check must pass; multi-image checks need loop devices (root), else they are skipped.
fn assert_check(imgs: &[PathBuf], what: &str) -> bool {
    let required = std::env::var("BTRS_INTEROP").as_deref() == Ok("require");
    if !progs_available() {
        assert!(!required, "{what}: BTRS_INTEROP=require but btrfs-progs is not installed");
        eprintln!("skipped: {what}: btrfs-progs not installed");
        return false;
    }
    if imgs.len() > 1 && !is_root() {
        assert!(!required, "{what}: BTRS_INTEROP=require but checking several images needs root");
        eprintln!("skipped: {what}: checking several images needs root (loop devices)");
        return false;
    }
    if let Err(e) = btrfs_check(imgs, &["--check-data-csum"]) {
        panic!("{what}: btrfs check fails:\n{e}");
    }
    true
}

// ---- btrfs check on fresh filesystems ----

#[test]
fn empty_single_image_matrix_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    for csum in ["crc32c", "xxhash", "sha256", "blake2"] {
        for data in ["single", "dup"] {
            for ns in ["4K", "16K", "64K"] {
                let imgs = images(dir.path(), 1);
                let _ = fs::remove_file(&imgs[0]);
                mkfs(&["-b", "256M", "--csum", csum, "-n", ns, "-d", data], &imgs);
                if !assert_check(&imgs, &format!("{csum} data={data} nodesize={ns}")) {
                    return;
                }
            }
        }
    }
}

#[test]
fn empty_multi_image_matrix_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let layouts: &[(usize, &str, &str)] = &[
        (2, "", ""),
        (2, "raid1", "raid1"),
        (3, "raid1c3", "raid1c3"),
        (4, "raid10", "raid10"),
        (2, "raid0", "raid0"),
        (4, "raid1c4", "raid1c4"),
        (3, "raid0", "raid1c3"),
    ];
    let sizes = ["4K", "16K", "64K"];
    let mut n = 0;
    for csum in ["crc32c", "xxhash", "sha256", "blake2"] {
        for &(ndev, d, m) in layouts {
            let ns = sizes[n % sizes.len()];
            n += 1;
            let imgs = images(dir.path(), ndev);
            for i in &imgs {
                let _ = fs::remove_file(i);
            }
            let mut args = vec!["-b", "256M", "--csum", csum, "-n", ns];
            if !d.is_empty() {
                args.extend(["-d", d, "-m", m]);
            }
            let sum = mkfs(&args, &imgs);
            assert_eq!(sum["devices"].as_array().map(Vec::len), Some(ndev));
            // One profile per block group type: no leftover temporary chunks.
            for c in sum["chunks"].as_array().unwrap() {
                let want = if c["kind"] == "data" {
                    if d.is_empty() {
                        "single"
                    } else {
                        d
                    }
                } else if m.is_empty() {
                    "raid1"
                } else {
                    m
                };
                assert_eq!(c["profile"], want, "{c}");
            }
            if !assert_check(&imgs, &format!("{csum} {ndev} images d={d} m={m} n={ns}")) {
                return;
            }
        }
    }
}

#[test]
fn feature_variants_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    for features in ["block-group-tree", "^no-holes,^free-space-tree", "^no-holes"] {
        let imgs = images(dir.path(), 1);
        let _ = fs::remove_file(&imgs[0]);
        mkfs(&["-b", "256M", "-O", features, "-L", "lbl"], &imgs);
        if !assert_check(&imgs, features) {
            return;
        }
    }
}

// ---- --rootdir ----

fn set_times(p: &Path, secs: u64, nsec: u32) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nsec);
    let f = fs::File::options().write(true).open(p).or_else(|_| fs::File::open(p)).unwrap();
    // atime "now" (newer than mtime): relatime then leaves it alone when mkfs reads the
    // tree, so runs over the same tree see the same times.
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(std::time::SystemTime::now())).unwrap();
}

/// A small host tree with every kind of thing mkfs must carry over.
fn make_source(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("small"), b"hello, btrfs\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    let big: Vec<u8> = (0..700_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    fs::write(root.join("dir/big"), &big).unwrap();
    let text: String = (0..40_000).map(|i| format!("line {i}\n")).collect();
    fs::write(root.join("dir/sub/text"), text).unwrap();
    // A sparse file: data, a hole, data, and a hole up to the end.
    let f = fs::File::create(root.join("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(&[7u8; 5000], 3 << 20).unwrap();
    f.set_len(9 << 20).unwrap();
    drop(f);
    fs::hard_link(root.join("dir/big"), root.join("big-link")).unwrap();
    symlink("dir/sub/text", root.join("link")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::set_permissions(root.join("small"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("dir/sub"), fs::Permissions::from_mode(0o700)).unwrap();
    let _ = xattr::set(root.join("small"), "user.comment", b"a value");
    let _ = xattr::set(root.join("dir"), "user.empty", b"");
    must(Command::new("mkfifo").arg(root.join("fifo")));
    if is_root() {
        must(Command::new("mknod").arg(root.join("chr")).args(["c", "4", "5"]));
        must(Command::new("mknod").arg(root.join("blk")).args(["b", "259", "70000"]));
        std::os::unix::fs::chown(root.join("dir/sub/text"), Some(1234), Some(5678)).unwrap();
    }
    for (i, p) in ["small", "empty", "sparse", "dir/big", "dir/sub/text"].iter().enumerate() {
        set_times(&root.join(p), 1_600_000_000 + i as u64, 123_456_789 + i as u32);
    }
    for p in ["dir/sub", "dir", ""] {
        set_times(&root.join(p), 1_500_000_000, 987_654_321);
    }
}

fn extract_manifest(imgs: &[PathBuf], dest: &Path) -> Value {
    let mut args = vec!["extract".to_string(), s(&imgs[0]).to_string(), s(dest).to_string()];
    for d in &imgs[1..] {
        args.push("--device".into());
        args.push(s(d).to_string());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = btrs(&a, &[]);
    assert_eq!(code, 0, "extract failed: {err}");
    walk_manifest(dest)
}

#[test]
fn rootdir_reads_back_equal_to_source() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let expected = walk_manifest(&src);
    for (n, extra) in [(1usize, vec![]), (2, vec!["-d", "raid1", "-n", "4K"]), (4, vec!["-d", "raid10", "--csum", "sha256"])] {
        let imgs = images(dir.path(), n);
        let mut args = vec!["-b", "256M", "-r", s(&src)];
        args.extend(extra.iter().copied());
        let sum = mkfs(&args, &imgs);
        assert!(sum["rootdir"]["hardlinks"].as_u64() == Some(1), "{sum}");
        assert_check(&imgs, &format!("rootdir on {n} images"));
        let out = dir.path().join(format!("out{n}"));
        assert_manifest_eq(&expected, &extract_manifest(&imgs, &out));
        for i in &imgs {
            fs::remove_file(i).unwrap();
        }
    }
}

#[test]
fn rootdir_compressed_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let expected = walk_manifest(&src);
    for algo in ["zlib", "lzo", "zstd", "zstd:9"] {
        let imgs = images(dir.path(), 1);
        let _ = fs::remove_file(&imgs[0]);
        mkfs(&["-b", "256M", "-r", s(&src), "--compress", algo], &imgs);
        assert_check(&imgs, algo);
        let out = dir.path().join(format!("out-{}", algo.replace(':', "-")));
        assert_manifest_eq(&expected, &extract_manifest(&imgs, &out));
    }
}

#[test]
fn rootdir_keeps_holes_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let imgs = images(dir.path(), 1);
    mkfs(&["-b", "256M", "-r", s(&src)], &imgs);
    if common::interop::progs_for("rootdir_keeps_holes_sparse", false) {
        // "sparse" has two data ranges; with NO_HOLES its holes have no extent items at all.
        let out = must(Command::new("btrfs").args(["inspect-internal", "dump-tree", "-t", "fs"]).arg(&imgs[0]));
        let lines: Vec<&str> = out.lines().collect();
        let ino = lines
            .windows(4)
            .find(|w| w[0].contains("DIR_INDEX") && w[3].trim() == "name: sparse")
            .and_then(|w| w[1].split("location key (").nth(1))
            .and_then(|x| x.split_whitespace().next())
            .expect("DIR_INDEX of sparse")
            .to_string();
        let extents = out.matches(&format!("key ({ino} EXTENT_DATA ")).count();
        assert_eq!(extents, 2, "sparse file should have 2 extents:\n{out}");
    }
    let extract = dir.path().join("out");
    extract_manifest(&imgs, &extract);
    let blocks = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(extract.join("sparse")).unwrap());
    assert!(blocks * 512 < 1 << 20, "extracted sparse file is not sparse: {blocks} blocks");
}

/// Blocks a file holds need not be its data: blocks preallocated past its
/// end (fallocate --keep-size) or an xattr block can make up for its holes.
/// mkfs asks such files for their data ranges rather than trusting st_blocks
/// (an attacker's pass found the holes stored as zeros).
#[test]
fn rootdir_asks_for_holes_when_blocks_are_not_only_data() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let prealloc = fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(src.join("prealloc")).unwrap();
    prealloc.set_len(1 << 20).unwrap();
    prealloc.write_all_at(&[7u8; 4096], (1 << 20) - 4096).unwrap();
    rustix::fs::fallocate(&prealloc, rustix::fs::FallocateFlags::KEEP_SIZE, 1 << 20, 1 << 20).unwrap();
    let md = prealloc.metadata().unwrap();
    assert!(std::os::unix::fs::MetadataExt::blocks(&md) * 512 >= md.len(), "the preallocation did not take");
    let tagged = fs::OpenOptions::new().create(true).truncate(true).write(true).open(src.join("tagged")).unwrap();
    tagged.write_all_at(&[9u8; 4096], 4096).unwrap();
    xattr::set(src.join("tagged"), "user.big", &[b'a'; 3000]).unwrap();
    let imgs = images(dir.path(), 1);
    mkfs(&["-b", "256M", "-r", s(&src)], &imgs);
    let fs = btrs::Filesystem::open(&btrs::volumes::OpenOptions { image: imgs[0].clone(), ..Default::default() }).unwrap();
    for (name, size) in [("prealloc", 1u64 << 20), ("tagged", 8192)] {
        let id = fs.resolve(format!("/{name}").as_str()).unwrap().id;
        let data: Vec<(u64, u64)> = fs
            .file_extents(id)
            .unwrap()
            .iter()
            .filter_map(|(pos, e)| match e.kind {
                btrs::format::items::FileExtentKind::Regular { disk_bytenr, num_bytes, .. } if disk_bytenr != 0 => Some((*pos, num_bytes)),
                _ => None,
            })
            .collect();
        assert_eq!(data, vec![(size - 4096, 4096)], "{name}: only its last 4 KiB is data");
    }
    let out = dir.path().join("out");
    extract_manifest(&imgs, &out);
    assert_eq!(fs::read(out.join("prealloc")).unwrap(), fs::read(src.join("prealloc")).unwrap());
    assert_eq!(fs::read(out.join("tagged")).unwrap(), fs::read(src.join("tagged")).unwrap());
}

#[test]
fn ten_thousand_entry_directory_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..10_000 {
        fs::write(src.join(format!("d/entry-{i:05}")), if i % 1000 == 0 { b"x".as_slice() } else { b"" }).unwrap();
    }
    for ns in ["4K", "16K"] {
        let imgs = images(dir.path(), 1);
        let _ = fs::remove_file(&imgs[0]);
        mkfs(&["-b", "256M", "-n", ns, "-r", s(&src)], &imgs);
        assert_check(&imgs, &format!("10k entries, nodesize {ns}"));
        let (code, out, err) = btrs(&["ls", s(&imgs[0]), "/d"], &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().count(), 10_000);
    }
}

// ---- reproducibility ----

#[test]
fn fixed_uuid_and_epoch_give_identical_images() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let mut hashes = Vec::new();
    // Run 0 is a warm-up: reading the tree may update atimes once (relatime; readdir and
    // readlink cannot avoid it), and the images record the source's atimes.
    for run in 0..3 {
        let sub = dir.path().join(format!("run{run}"));
        fs::create_dir(&sub).unwrap();
        let imgs = images(&sub, 2);
        mkfs_env(&["-b", "200M", "-U", "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0", "-r", s(&src)], &imgs, &env);
        let h: Vec<String> =
            imgs.iter().map(|p| must(Command::new("sha256sum").arg(p)).split_whitespace().next().unwrap_or("").to_string()).collect();
        if run > 0 {
            hashes.push(h);
        }
    }
    assert_eq!(hashes[0], hashes[1]);
    // And the images really carry the requested UUID.
    let (_, out, _) = btrs(&["dump-super", s(&images(&dir.path().join("run0"), 1)[0])], &[]);
    assert!(out.contains("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0"), "{out}");
}

// ---- errors ----

fn mkfs_fails(args: &[&str], want: &str) {
    let mut a = vec!["mkfs"];
    a.extend_from_slice(args);
    let (code, _, err) = btrs(&a, &[]);
    assert_ne!(code, 0, "btrs {a:?} should fail");
    assert!(err.contains(want), "btrs {a:?}: expected {want:?} in: {err}");
}

fn has_valid_super(img: &Path) -> bool {
    let (code, _, _) = btrs(&["dump-super", s(img)], &[]);
    code == 0 && {
        let b = fs::read(img).unwrap_or_default();
        b.len() > 0x10048 && &b[0x10040..0x10048] == b"_BHRfS_M"
    }
}

#[test]
fn bad_requests_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let i = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    mkfs_fails(&["-b", "10M", &i("tiny")], "needs at least");
    assert!(!dir.path().join("tiny").exists(), "a failed mkfs must not leave the image it created");
    fs::File::create(dir.path().join("small")).unwrap().set_len(10 << 20).unwrap();
    mkfs_fails(&[&i("small")], "needs at least");
    assert_eq!(fs::metadata(dir.path().join("small")).unwrap().len(), 10 << 20, "existing images stay");
    mkfs_fails(&[&i("missing")], "does not exist");
    mkfs_fails(&["-b", "256M", "-s", "8192", &i("a")], "sectorsize");
    mkfs_fails(&["-b", "256M", "-n", "3000", &i("a")], "nodesize");
    mkfs_fails(&["-b", "256M", "-d", "raid7", &i("a")], "invalid value 'raid7' for '--data <PROFILE>'");
    mkfs_fails(&["-b", "256M", "-m", "raid1", &i("a")], "needs at least 2 devices");
    mkfs_fails(&["-b", "256M", "-d", "raid10", &i("a"), &i("b")], "needs at least 4 devices");
    mkfs_fails(&["-b", "256M", "--csum", "md5", &i("a")], "invalid value 'md5' for '--csum <TYPE>'");
    mkfs_fails(&["-b", "256M", "-O", "frobnicate", &i("a")], "unknown feature");
    mkfs_fails(&["-b", "256M", "-r", &i("no-such-dir"), &i("a")], "no-such-dir");
}

#[test]
fn existing_filesystems_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    mkfs(&["-b", "256M"], std::slice::from_ref(&img));
    mkfs_fails(&[s(&img)], "--force");
    assert!(has_valid_super(&img), "a refused mkfs must leave the old filesystem alone");
    // ext4 and xfs signatures too.
    let ext = dir.path().join("ext.img");
    let mut b = vec![0u8; 1 << 20];
    b[1080] = 0x53;
    b[1081] = 0xef;
    fs::write(&ext, &b).unwrap();
    mkfs_fails(&["-b", "256M", s(&ext)], "ext2/3/4");
    let xfs = dir.path().join("xfs.img");
    let mut b = vec![0u8; 1 << 20];
    b[..4].copy_from_slice(b"XFSB");
    fs::write(&xfs, &b).unwrap();
    mkfs_fails(&["-b", "256M", s(&xfs)], "xfs");
    mkfs(&["-f"], std::slice::from_ref(&img));
    mkfs(&["-f", "-b", "256M"], std::slice::from_ref(&xfs));
    assert!(has_valid_super(&xfs));
    // The old signature is gone (the wipe punches a hole or writes zeros): blkid
    // and mount must not see an xfs any more.
    let head = fs::read(&xfs).unwrap();
    assert_eq!(&head[..4], &[0u8; 4], "xfs magic survived mkfs -f");
    // A device whose first MiB is noise: everything before the superblock and
    // between it and the first chunk reads back as zeros.
    let noisy = dir.path().join("noisy.img");
    let mut b = vec![0u8; 300 << 20];
    let mut x = 0x9e3779b97f4a7c15u64;
    for byte in b[..1 << 20].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8 | 1;
    }
    fs::write(&noisy, &b).unwrap();
    mkfs(&["-f"], std::slice::from_ref(&noisy));
    let head = fs::read(&noisy).unwrap();
    assert!(head[..64 << 10].iter().all(|&v| v == 0), "bytes before the superblock were not wiped");
    assert!(head[(64 << 10) + 4096..1 << 20].iter().all(|&v| v == 0), "bytes after the superblock were not wiped");
    assert_check(std::slice::from_ref(&noisy), "mkfs -f over noise");
}

#[test]
fn existing_file_keeps_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    fs::File::create(&img).unwrap().set_len(300 << 20).unwrap();
    let sum = mkfs(&[], std::slice::from_ref(&img));
    assert_eq!(sum["total_bytes"].as_u64(), Some(300 << 20));
    assert_eq!(fs::metadata(&img).unwrap().len(), 300 << 20);
}

// ---- kernel interop ----

fn mount_write_scrub(imgs: &[PathBuf], mnt: &Path, what: &str) {
    let m = Mounted::mount(mnt, imgs, "").unwrap_or_else(|e| panic!("{what}: {e}"));
    must(Command::new("dd").arg("if=/dev/urandom").arg(format!("of={}", mnt.join("data").display())).args([
        "bs=1M",
        "count=64",
        "status=none",
    ]));
    must(&mut Command::new("sync"));
    let out = must(Command::new("btrfs").args(["scrub", "start", "-B"]).arg(mnt));
    assert!(out.contains("no errors found"), "{what}: scrub: {out}");
    m.unmount().unwrap_or_else(|e| panic!("{what}: {e}"));
    btrfs_check(imgs, &["--check-data-csum"]).unwrap_or_else(|e| panic!("{what}: check after kernel writes: {e}"));
}

#[test]
fn kernel_mounts_writes_and_scrubs() {
    if !interop_enabled("kernel_mounts_writes_and_scrubs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    // The full matrix: every checksum x {single/dup on one image, raid1 on two,
    // raid1c3 on three, raid10 on four} x nodesize {4K, 16K, 64K}, plus the
    // block group tree.
    let layouts: &[(usize, &[&str])] =
        &[(1, &[]), (2, &["-d", "raid1", "-m", "raid1"]), (3, &["-d", "raid1c3", "-m", "raid1c3"]), (4, &["-d", "raid10", "-m", "raid10"])];
    let mut cases: Vec<(usize, Vec<&str>)> = vec![(1, vec!["-O", "block-group-tree"])];
    for csum in ["crc32c", "xxhash", "sha256", "blake2"] {
        for (n, layout) in layouts {
            for ns in ["4K", "16K", "64K"] {
                let mut a = vec!["--csum", csum, "-n", ns];
                a.extend_from_slice(layout);
                cases.push((*n, a));
            }
        }
    }
    for (n, args) in &cases {
        let sub = dir.path().join(format!("case{n}-{}", args.join("")));
        fs::create_dir(&sub).unwrap();
        let imgs = images(&sub, *n);
        let mut a = vec!["-b", "512M"];
        a.extend_from_slice(args);
        mkfs(&a, &imgs);
        mount_write_scrub(&imgs, &mnt, &format!("{n} images {args:?}"));
    }
}

#[test]
fn kernel_mounts_raid1_pair_degraded() {
    if !interop_enabled("kernel_mounts_raid1_pair_degraded") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let imgs = images(dir.path(), 2);
    mkfs(&["-b", "512M", "-d", "raid1"], &imgs);
    btrfs_check(&imgs, &[]).unwrap();
    // Only the first image: SYSTEM must be mirrored on both for this to mount.
    let m = Mounted::mount_checked_elsewhere(&dir.path().join("mnt"), &imgs[..1], "degraded,ro");
    let m = m.unwrap_or_else(|e| panic!("degraded mount of the first image alone: {e}"));
    m.unmount().unwrap();
    let m = Mounted::mount_checked_elsewhere(&dir.path().join("mnt"), &imgs[1..], "degraded,ro")
        .unwrap_or_else(|e| panic!("degraded mount of the second image alone: {e}"));
    m.unmount().unwrap();
}

#[test]
fn kernel_sees_rootdir_like_the_source() {
    if !interop_enabled("kernel_sees_rootdir_like_the_source") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    // What the issue asks of the round trip on top of the small tree: a
    // directory of 10k+ entries (leaf boundaries in the dir index) and a
    // 100 MiB file, half incompressible and half compressible.
    fs::create_dir(src.join("many")).unwrap();
    for i in 0..10_050 {
        fs::write(src.join(format!("many/entry-{i:05}")), format!("{i}\n")).unwrap();
    }
    let mut big: Vec<u8> = (0..50u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
    big.extend((0..50u32 << 20).map(|i| b"btrs "[(i % 5) as usize]));
    fs::write(src.join("hundred-mib"), &big).unwrap();
    drop(big);
    set_times(&src.join("many"), 1_500_000_000, 5);
    set_times(&src, 1_500_000_000, 987_654_321);
    let expected = walk_manifest(&src);
    for (n, profile) in [(1usize, "single"), (2, "raid1")] {
        for compress in ["", "zlib", "lzo", "zstd"] {
            let what = format!("{n} image(s) {profile} compress={compress:?}");
            let imgs = images(dir.path(), n);
            for i in &imgs {
                let _ = fs::remove_file(i);
            }
            let mut a = vec!["-b", "512M", "-r", s(&src), "-d", profile];
            if !compress.is_empty() {
                a.extend(["--compress", compress]);
            }
            mkfs(&a, &imgs);
            let mnt = dir.path().join("mnt");
            let m = Mounted::mount(&mnt, &imgs, "ro").unwrap_or_else(|e| panic!("{what}: {e}"));
            let seen = walk_manifest(&mnt);
            m.unmount().unwrap();
            let diffs = diff_manifests(&expected, &seen);
            assert!(diffs.is_empty(), "{what}: kernel view differs: {:?}", &diffs[..diffs.len().min(20)]);
        }
    }
}

// ---- layout ----

/// (physical, length) of every DEV_EXTENT, as btrfs-progs reads them.
fn dev_extents(img: &Path) -> Vec<(u64, u64)> {
    let out = must(Command::new("btrfs").args(["inspect-internal", "dump-tree", "-t", "dev"]).arg(img));
    let mut v = Vec::new();
    let mut phys = None;
    for line in out.lines() {
        if let Some(rest) = line.split("DEV_EXTENT ").nth(1) {
            phys = rest.split(')').next().and_then(|x| x.trim().parse::<u64>().ok());
        }
        if let (Some(p), Some(rest)) = (phys, line.split(" length ").nth(1)) {
            let len: u64 = rest.split_whitespace().next().and_then(|x| x.parse().ok()).expect("length");
            v.push((p, len));
            phys = None;
        }
    }
    v
}

#[test]
fn superblock_copies_and_dev_extents_keep_apart() {
    if !common::interop::progs_for("superblock_copies_and_dev_extents_keep_apart", false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    // 2 GiB with 1 GiB-ish chunks: the 64 MiB mirror falls inside the chunk area.
    mkfs(&["-b", "2G", "-d", "dup"], std::slice::from_ref(&img));
    let bytes = |off: u64, len: usize| {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; len];
        fs::File::open(&img).unwrap().read_exact_at(&mut b, off).unwrap();
        b
    };
    for off in [64u64 << 10, 64 << 20] {
        let sb = bytes(off, 4096);
        assert_eq!(&sb[64..72], b"_BHRfS_M", "no superblock copy at {off}");
        assert_eq!(u64::from_le_bytes(sb[48..56].try_into().unwrap()), off, "bytenr of the copy at {off}");
    }
    let exts = dev_extents(&img);
    assert!(exts.len() >= 4, "{exts:?}");
    for (p, l) in &exts {
        assert!(*p >= 1 << 20, "dev extent at {p} inside the reserved first MiB");
        for sb in [64u64 << 20, 256 << 30] {
            assert!(!(*p <= sb && sb < p + l), "dev extent [{p}, +{l}) covers the superblock copy at {sb}");
        }
    }
    // A file made by --size stays sparse.
    let blocks = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&img).unwrap());
    assert!(blocks * 512 < 16 << 20, "image is not sparse: {blocks} blocks");
    // `btrfs check` also reads every superblock copy's generation.
    assert_check(std::slice::from_ref(&img), "2G dup");
}

#[test]
fn images_attached_to_loop_devices_are_refused() {
    if !interop_enabled("images_attached_to_loop_devices_are_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    mkfs(&["-b", "256M"], std::slice::from_ref(&img));
    let _lock = common::interop::kernel_lock();
    let loops = common::interop::Loops::attach(std::slice::from_ref(&img), true).unwrap();
    let (code, _, err) = btrs(&["mkfs", "-f", s(&img)], &[]);
    assert_ne!(code, 0);
    assert!(err.contains(&loops.devs[0]), "{err}");
}

#[test]
fn many_hardlinks_in_one_directory_spill_into_extrefs() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"shared").unwrap();
    // 4 KiB tree blocks hold about 60 of these names in one INODE_REF item.
    for i in 0..300 {
        fs::hard_link(src.join("d/f"), src.join(format!("d/a-rather-long-hard-link-name-{i:04}"))).unwrap();
    }
    let imgs = images(dir.path(), 1);
    mkfs(&["-b", "256M", "-n", "4K", "-r", s(&src)], &imgs);
    assert_check(&imgs, "300 hard links");
    assert_manifest_eq(&walk_manifest(&src), &extract_manifest(&imgs, &dir.path().join("out")));
}

/// `mkfs -b` smaller than an existing file (that holds no filesystem) is
/// refused without --force, the file untouched; with it, the file is cut
/// (issue 19: it was cut silently).
#[test]
fn an_existing_file_is_cut_only_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("big.img");
    std::fs::File::create(&img).unwrap().set_len(1 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&std::fs::OpenOptions::new().write(true).open(&img).unwrap(), b"keep", (1 << 30) - 4).unwrap();
    let (c, _, err) = common::btrs(&["mkfs", "-b", "100M", img.to_str().unwrap()]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("--force") && err.contains("1073741824"), "{err}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 30);
    let mut tail = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&img).unwrap(), &mut tail, (1 << 30) - 4).unwrap();
    assert_eq!(&tail, b"keep");
    common::ok(&["mkfs", "-f", "-b", "100M", img.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 100 << 20);
}

/// The summary speaks mkfs.btrfs's layout and units: every line of
/// mkfs.btrfs's summary for the same options is btrs's too, but the ones
/// that differ on purpose (the UUID; the data chunk, which btrs sizes
/// otherwise; SSD and zoned detection, which an image file has not).
#[test]
fn summary_speaks_mkfs_btrfs_units() {
    let test = "summary_speaks_mkfs_btrfs_units";
    let tmp = tempfile::tempdir().unwrap();
    let mine = tmp.path().join("mine.img");
    let (code, out, err) = btrs(&["mkfs", "-b", "256M", "-L", "lbl", mine.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Filesystem size:    256.00MiB\n"), "{out}");
    assert!(out.contains("  Metadata:         DUP              32.00MiB\n"), "{out}");
    if !common::interop::progs_for(test, false) {
        return;
    }
    let theirs = tmp.path().join("theirs.img");
    fs::File::create(&theirs).unwrap().set_len(256 << 20).unwrap();
    let progs = must(Command::new("mkfs.btrfs").args(["-f", "-L", "lbl"]).arg(&theirs));
    let skip = |l: &&str| ["UUID:", "SSD detected:", "Zoned device:", "  Data:"].iter().any(|p| l.starts_with(p)) || l.is_empty();
    let summary = |t: &str, img: &Path| -> Vec<String> {
        t.lines().skip_while(|l| !l.starts_with("Label:")).filter(|l| !skip(l)).map(|l| l.replace(img.to_str().unwrap(), "IMG")).collect()
    };
    assert_eq!(summary(&out.replace(mine.to_str().unwrap(), "IMG"), &mine), summary(&progs, &theirs));
}
