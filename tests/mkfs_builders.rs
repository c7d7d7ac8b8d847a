//! `btrs mkfs` for image builders: ownership without root (`--all-root`,
//! `--owner-map`, `--manifest`), sizing (`--shrink`, `--slack`, exact `-b`,
//! `--print-size`) and SOURCE_DATE_EPOCH time handling. Kernel checks are gated
//! by `BTRS_INTEROP` (tests/common/interop.rs); the rootless runs need root to
//! drop to `nobody` and are skipped otherwise.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::interop::{btrfs_check, interop_enabled, is_root, progs_available, Mounted};

const BIN: &str = env!("CARGO_BIN_EXE_btrs");
const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("spawn");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn btrs(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    run(common::btrs_cmd().args(args).envs(envs.iter().copied()))
}

fn btrs_ok(args: &[&str]) -> String {
    let (code, out, err) = btrs(args, &[]);
    assert_eq!(code, 0, "btrs {args:?} failed: {err}");
    out
}

/// btrs as the unprivileged user `nobody` (when we are root; else as ourselves,
/// who are unprivileged anyway).
fn btrs_rootless(args: &[&str]) -> (i32, String, String) {
    if is_root() {
        run(Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]).args(args))
    } else {
        btrs(args, &[])
    }
}

/// A temp dir under /tmp that `nobody` can write (mode 0777).
fn shared_tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("btrs-builders-").tempdir_in("/tmp").expect("tempdir");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    d
}

/// A small root filesystem tree, world-readable, owned by 1234:1234 when we may chown.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("etc/hostname"), b"builder\n").unwrap();
    fs::write(root.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    fs::write(root.join("usr/bin/tool"), &big).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-alias")).unwrap();
    let f = fs::File::create(root.join("sparse.img")).unwrap();
    f.set_len(64 * MIB).unwrap();
    for e in walk(root) {
        let m = fs::symlink_metadata(&e).unwrap();
        let mode = if m.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&e, fs::Permissions::from_mode(mode)).unwrap();
        if is_root() {
            std::os::unix::fs::lchown(&e, Some(1234), Some(1234)).unwrap();
        }
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() && !out[i].is_symlink() {
            let mut kids: Vec<PathBuf> = fs::read_dir(&out[i]).unwrap().map(|e| e.unwrap().path()).collect();
            kids.sort();
            out.extend(kids);
        }
        i += 1;
    }
    out
}

fn has_valid_super(img: &Path) -> bool {
    let b = fs::read(img).unwrap_or_default();
    b.len() > 0x10048 && &b[0x10040..0x10048] == b"_BHRfS_M"
}

/// `btrs ls -l` line of a path: (mode string, uid, gid).
fn ls_owner(img: &Path, dir: &str, name: &str) -> (String, u32, u32) {
    let out = btrs_ok(&["ls", "-l", s(img), dir]);
    let line =
        out.lines().find(|l| l.split_whitespace().last() == Some(name)).unwrap_or_else(|| panic!("{name} not in ls of {dir}: {out}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[0].to_string(), f[2].parse().unwrap(), f[3].parse().unwrap())
}

fn check_clean(img: &Path, what: &str) {
    if progs_available() {
        btrfs_check(&[img.to_path_buf()], &[]).unwrap_or_else(|e| panic!("{what}: btrfs check: {e}"));
    }
}

#[test]
fn rootless_all_root_image_is_owned_by_root() {
    let d = shared_tempdir();
    let src = d.path().join("src");
    make_tree(&src);
    let img = d.path().join("img");
    let (code, _, err) = btrs_rootless(&["mkfs", "--shrink", "--all-root", "-r", s(&src), s(&img)]);
    assert_eq!(code, 0, "rootless mkfs failed: {err}");
    check_clean(&img, "all-root");
    assert_eq!(ls_owner(&img, "/usr/bin", "tool").1, 0);
    if !interop_enabled("rootless_all_root_image_is_owned_by_root") {
        return;
    }
    let mnt = d.path().join("mnt");
    let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "ro").expect("mount");
    for p in walk(&mnt) {
        let md = fs::symlink_metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (0, 0), "{} is not root-owned", p.display());
    }
    // The hard link stays one inode.
    let a = fs::metadata(mnt.join("usr/bin/tool")).unwrap();
    let b = fs::metadata(mnt.join("usr/bin/tool-alias")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    m.unmount().expect("umount");
}

#[test]
fn manifest_sets_modes_owners_and_xattrs() {
    let d = shared_tempdir();
    let src = d.path().join("src");
    make_tree(&src);
    let manifest = d.path().join("manifest");
    fs::write(
        &manifest,
        "# mode uid gid\n\
         / 0755 0 0\n\
         /etc 0750 0 42\n\
         etc/passwd 0644 - -\n\
         /usr/bin/tool 4755 0 7\n\
         /etc/hostname xattr security.selinux=system_u:object_r:etc_t:s0\n\
         /usr/bin/tool xattr security.capability=0x0100000200200000000000000000000000000000\n\
         /usr/bin/tool xattr user.note=has spaces = and equals\n",
    )
    .unwrap();
    let img = d.path().join("img");
    let (code, _, err) =
        btrs_rootless(&["mkfs", "--shrink", "--owner-map", "1234:5000:10", "--manifest", s(&manifest), "-r", s(&src), s(&img)]);
    assert_eq!(code, 0, "rootless mkfs failed: {err}");
    check_clean(&img, "manifest");
    let (mode, uid, gid) = ls_owner(&img, "/", "etc");
    assert_eq!((mode.as_str(), uid, gid), ("drwxr-x---", 0, 42));
    assert_eq!(ls_owner(&img, "/usr/bin", "tool"), ("-rwsr-xr-x".to_string(), 0, 7));
    // No manifest line: --owner-map applies (only when the source had 1234, i.e. as root).
    let want = if is_root() { 5000 } else { rustix::process::getuid().as_raw() };
    assert_eq!(ls_owner(&img, "/etc", "hostname").1, want);
    assert_eq!(ls_owner(&img, "/etc", "passwd").1, want);

    // A manifest path that is not in the tree is an error, not a silent no-op.
    fs::write(d.path().join("bad"), "/nope 0644 0 0\n").unwrap();
    let (code, _, err) = btrs(&["mkfs", "--shrink", "--manifest", s(&d.path().join("bad")), "-r", s(&src), s(&d.path().join("x"))], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");
    fs::write(d.path().join("bad2"), "/etc 0999 0 0\n").unwrap();
    let (code, _, err) = btrs(&["mkfs", "--shrink", "--manifest", s(&d.path().join("bad2")), "-r", s(&src), s(&d.path().join("x"))], &[]);
    assert!(code != 0 && err.contains("line 1"), "{err}");

    if !interop_enabled("manifest_sets_modes_owners_and_xattrs") {
        return;
    }
    let mnt = d.path().join("mnt");
    let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "ro").expect("mount");
    let md = fs::metadata(mnt.join("usr/bin/tool")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o4755, 0, 7));
    let md = fs::metadata(mnt.join("etc")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o750, 0, 42));
    // The kernel reports the stored label whether or not an SELinux policy is loaded.
    let label = xattr::get(mnt.join("etc/hostname"), "security.selinux").unwrap();
    assert_eq!(label.as_deref(), Some(&b"system_u:object_r:etc_t:s0"[..]));
    let out = Command::new("getfattr").args(["-n", "security.selinux"]).arg(mnt.join("etc/hostname")).output();
    if let Ok(o) = out {
        if o.status.success() {
            assert!(String::from_utf8_lossy(&o.stdout).contains("system_u:object_r:etc_t:s0"));
        }
    }
    let cap = xattr::get(mnt.join("usr/bin/tool"), "security.capability").unwrap().unwrap();
    assert_eq!(cap.len(), 20);
    assert_eq!(&cap[..4], &[1, 0, 0, 2]);
    let note = xattr::get(mnt.join("usr/bin/tool"), "user.note").unwrap();
    assert_eq!(note.as_deref(), Some(&b"has spaces = and equals"[..]));
    m.unmount().expect("umount");
}

#[test]
fn shrink_ignores_the_starting_size_and_matches_print_size() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tree(&src);
    let small = d.path().join("small.img");
    let huge = d.path().join("huge.img");
    fs::File::create(&small).unwrap().set_len(10 * MIB).unwrap();
    fs::File::create(&huge).unwrap().set_len(10 << 30).unwrap();
    let fresh = d.path().join("fresh.img");
    let printed: u64 = btrs_ok(&["mkfs", "--print-size", "-r", s(&src), s(&fresh)]).trim().parse().expect("a number");
    assert!(!fresh.exists(), "--print-size must write nothing");
    for img in [&small, &huge, &fresh] {
        btrs_ok(&["mkfs", "--shrink", "-r", s(&src), s(img)]);
        check_clean(img, "shrink");
    }
    let len = |p: &Path| fs::metadata(p).unwrap().len();
    assert_eq!(len(&small), len(&huge));
    assert_eq!(len(&small), len(&fresh));
    // Hard links once, holes as nothing: far below tool twice plus the 64 MiB sparse file.
    assert!(len(&small) < 3 * 3_000_000 + 16 * MIB, "shrunk image is {} bytes", len(&small));
    let diff = (printed as f64 - len(&small) as f64).abs() / len(&small) as f64;
    assert!(diff < 0.01, "--print-size {printed} vs --shrink {}", len(&small));

    // Compression as written: compressible content shrinks the image.
    let zsrc = d.path().join("zsrc");
    fs::create_dir(&zsrc).unwrap();
    fs::write(zsrc.join("zeros-ish"), vec![b'a'; 20 << 20]).unwrap();
    let z = d.path().join("z.img");
    let zp: u64 = btrs_ok(&["mkfs", "--print-size", "--compress", "zstd", "-r", s(&zsrc), s(&z)]).trim().parse().unwrap();
    btrs_ok(&["mkfs", "--shrink", "--compress", "zstd", "-r", s(&zsrc), s(&z)]);
    check_clean(&z, "shrink compressed");
    assert_eq!(zp, len(&z));
    assert!(len(&z) < 16 * MIB, "compressed shrunk image is {} bytes", len(&z));

    // --slack leaves usable room.
    let sl = d.path().join("slack.img");
    btrs_ok(&["mkfs", "--shrink", "--slack", "32M", "-r", s(&src), s(&sl)]);
    check_clean(&sl, "slack");
    assert!(len(&sl) >= len(&small) + 32 * MIB);
    let sp = d.path().join("slackp.img");
    btrs_ok(&["mkfs", "--shrink", "--slack", "50%", "-r", s(&src), s(&sp)]);
    assert!(len(&sp) >= len(&small) * 3 / 2);

    if interop_enabled("shrink_ignores_the_starting_size_and_matches_print_size") {
        let mnt = d.path().join("mnt");
        let m = Mounted::mount(&mnt, std::slice::from_ref(&huge), "").expect("mount shrunk image");
        assert_eq!(fs::read(mnt.join("usr/bin/tool")).unwrap(), fs::read(src.join("usr/bin/tool")).unwrap());
        m.unmount().expect("umount");
        let m = Mounted::mount(&mnt, std::slice::from_ref(&sl), "").expect("mount slack image");
        fs::write(mnt.join("new"), vec![7u8; 16 << 20]).expect("write into the slack");
        m.unmount().expect("umount");
        check_clean(&sl, "slack after kernel write");
    }
}

#[test]
fn exact_size_too_small_fails_naming_the_size() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tree(&src);
    // A fresh image: error, and no file left behind.
    let img = d.path().join("new.img");
    let (code, _, err) = btrs(&["mkfs", "-b", "6M", "-r", s(&src), s(&img)], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("needs at least"), "{err}");
    assert!(!img.exists());
    // An existing file: error, its length kept, no valid superblock in it.
    let old = d.path().join("old.img");
    btrs_ok(&["mkfs", "-b", "256M", s(&old)]);
    assert!(has_valid_super(&old));
    let (code, _, err) = btrs(&["mkfs", "-f", "-b", "6M", "-r", s(&src), s(&old)], &[]);
    assert_ne!(code, 0);
    let need: u64 = err
        .split("needs at least ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in: {err}"));
    assert_eq!(fs::metadata(&old).unwrap().len(), 256 * MIB, "a failed mkfs must not resize the image");
    // Not a half-made filesystem: the old one is still whole (nothing was wiped) ...
    check_clean(&old, "untouched old image");
    // ... and the size named is enough, exactly.
    let exact = d.path().join("exact.img");
    btrs_ok(&["mkfs", "-b", &need.to_string(), "-r", s(&src), s(&exact)]);
    assert_eq!(fs::metadata(&exact).unwrap().len(), need);
    check_clean(&exact, "exact size");
    let (code, _, _) = btrs(&["mkfs", "-b", &(need - MIB).to_string(), "-r", s(&src), s(&d.path().join("less.img"))], &[]);
    assert_ne!(code, 0, "one MiB less than the size named must not fit");
}

#[test]
fn source_date_epoch_fixes_host_times() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tree(&src);
    // A file from the future gets clamped; an old one keeps its mtime.
    let future = fs::File::options().write(true).open(src.join("etc/hostname")).unwrap();
    future.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(4_000_000_000)).unwrap();
    let old = fs::File::options().write(true).open(src.join("etc/passwd")).unwrap();
    old.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(500_000_000)).unwrap();
    let env = [("SOURCE_DATE_EPOCH", "1000000000")];
    let uuid = "0a1b2c3d-0000-4000-8000-000000000001";
    let a = d.path().join("a.img");
    let b = d.path().join("b.img");
    let mk = |img: &Path| {
        let (code, _, err) = btrs(&["mkfs", "--shrink", "-U", uuid, "-r", s(&src), s(img)], &env);
        assert_eq!(code, 0, "{err}");
    };
    mk(&a);
    // Touch the tree's atimes and ctimes (not content or mtimes): same image.
    let _ = fs::read(src.join("usr/bin/tool")).unwrap();
    fs::set_permissions(src.join("etc/passwd"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(src.join("etc/passwd"), fs::Permissions::from_mode(0o644)).unwrap();
    mk(&b);
    assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "images differ after touching atime/ctime only");
    let out = btrs_ok(&["ls", "-l", s(&a), "/etc"]);
    let line = |n: &str| out.lines().find(|l| l.ends_with(n)).unwrap_or_else(|| panic!("{n}: {out}")).to_string();
    assert!(line("hostname").contains("2001-09-09 01:46:40"), "{out}");
    assert!(line("passwd").contains("1985-11-05"), "{out}");
    check_clean(&a, "reproducible");
}

/// Unmounts and detaches a loop device on drop, holding the kernel lock.
struct LoopMount {
    dev: String,
    mnt: Option<PathBuf>,
    _lock: common::interop::KernelLock,
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if let Some(m) = self.mnt.take() {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn offset_puts_the_filesystem_inside_a_partitioned_disk() {
    if !interop_enabled("offset_puts_the_filesystem_inside_a_partitioned_disk") {
        return;
    }
    if Command::new("sgdisk").arg("--version").output().is_err() {
        eprintln!("skipped: sgdisk not installed (apt-get install gdisk)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tree(&src);
    let disk = d.path().join("disk.img");
    fs::File::create(&disk).unwrap().set_len(256 * MIB).unwrap();
    let (code, _, err) = run(Command::new("sgdisk").args(["-n", "1:2048:+200M", "-t", "1:8300"]).arg(&disk));
    assert_eq!(code, 0, "sgdisk: {err}");
    let (start, size) = (2048 * 512u64, 200 * MIB);
    let before = fs::read(&disk).unwrap();
    let out = btrs_ok(&["mkfs", "--offset", &start.to_string(), "-b", &size.to_string(), "-r", s(&src), s(&disk)]);
    assert!(out.contains("UUID"), "{out}");
    let after = fs::read(&disk).unwrap();
    assert_eq!(after.len(), before.len(), "the disk image keeps its size");
    assert!(before[..start as usize] == after[..start as usize], "bytes before the partition changed");
    let end = (start + size) as usize;
    assert!(before[end..] == after[end..], "bytes after the partition (backup GPT) changed");
    let (code, out, err) = run(Command::new("sgdisk").arg("-v").arg(&disk));
    assert_eq!(code, 0, "sgdisk -v: {out}{err}");
    assert!(out.contains("No problems found"), "{out}");

    let lock = common::interop::kernel_lock();
    let (code, dev, err) =
        run(Command::new("losetup").args(["--find", "--show", "-o", &start.to_string(), "--sizelimit", &size.to_string()]).arg(&disk));
    assert_eq!(code, 0, "losetup: {err}");
    let mut lm = LoopMount { dev: dev.trim().to_string(), mnt: None, _lock: lock };
    let (code, out, err) = run(Command::new("btrfs").args(["check", "--readonly", &lm.dev]));
    assert_eq!(code, 0, "btrfs check on the partition: {out}{err}");
    let mnt = d.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let (code, _, err) = run(Command::new("mount").args(["-t", "btrfs", "-o", "ro", &lm.dev]).arg(&mnt));
    assert_eq!(code, 0, "mount: {err}");
    lm.mnt = Some(mnt.clone());
    assert_eq!(fs::read(mnt.join("usr/bin/tool")).unwrap(), fs::read(src.join("usr/bin/tool")).unwrap());
    assert_eq!(fs::read(mnt.join("etc/hostname")).unwrap(), b"builder\n");
    drop(lm);
}

/// A shared temp dir holding `src`, a tree whose `etc/secret` only root can
/// read.
fn tree_with_unreadable_entry() -> (tempfile::TempDir, PathBuf) {
    let d = shared_tempdir();
    let src = d.path().join("src");
    make_tree(&src);
    let secret = src.join("etc/secret");
    fs::write(&secret, b"no peeking").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    (d, src)
}

/// An entry the walk cannot read is named in the error, and no filesystem is
/// left behind. Needs an unprivileged user: root reads everything.
#[test]
fn unreadable_rootdir_entry_is_named() {
    let (d, src) = tree_with_unreadable_entry();
    let img = d.path().join("img");
    let (code, _, err) = btrs_rootless(&["mkfs", "-b", "256M", "-r", s(&src), s(&img)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("etc/secret"), "error must name the entry: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!has_valid_super(&img), "no valid filesystem left behind");
}

/// What the images say against a mkfs is said before the root directory is
/// scanned (a scan of a million files takes seconds): a root directory whose
/// scan fails (an entry its user cannot read) shows which came first. An
/// image made for a scan that then fails is removed again.
#[test]
fn images_are_refused_before_the_root_directory_is_scanned() {
    let (d, src) = tree_with_unreadable_entry();
    let img = d.path().join("new.img");
    let (code, _, err) = btrs_rootless(&["mkfs", "-q", "-r", s(&src), s(&img)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not exist; give --size or --shrink"), "the image's error first: {err}");
    assert!(!img.exists(), "nothing created");

    let made = d.path().join("made.img");
    let (code, _, err) = btrs_rootless(&["mkfs", "-q", "-b", "128M", s(&made)]);
    assert_eq!(code, 0, "{err}");
    let before = fs::read(&made).unwrap();
    let (code, _, err) = btrs_rootless(&["mkfs", "-q", "-r", s(&src), s(&made)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("contains a btrfs filesystem; use --force"), "the image's error first: {err}");
    assert!(fs::read(&made).unwrap() == before, "the image is unchanged");

    let (code, _, err) = btrs_rootless(&["mkfs", "-q", "-b", "128M", "-r", s(&src), s(&img)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("etc/secret"), "then the root directory's: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!img.exists(), "the image made for it is removed again");
}

// ---------------------------------------------------------------------------
// --subvol

/// A varied tree for the subvolume tests: files inline and not, compressible
/// and not, a sparse file, symlinks, a fifo, odd modes, an empty directory, a
/// hard link inside `a` and one from `c` into `a` (across the boundary).
fn make_subvol_tree(root: &Path) {
    for d in ["a/b/deep", "a/empty", "c/sub", "top"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("top/readme"), b"top level\n").unwrap();
    fs::write(root.join("a/small"), b"in a\n").unwrap();
    fs::write(root.join("a/text"), "compress me ".repeat(50_000)).unwrap();
    let noise: Vec<u8> = (0..700_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    fs::write(root.join("a/b/noise"), &noise).unwrap();
    fs::write(root.join("a/b/raw"), &noise[..200_000]).unwrap();
    fs::write(root.join("a/b/deep/leaf"), b"deep\n").unwrap();
    let f = fs::File::create(root.join("a/b/sparse")).unwrap();
    f.set_len(8 * MIB).unwrap();
    f.write_all_at(b"middle", 4 * MIB).unwrap();
    std::os::unix::fs::symlink("../small", root.join("a/b/link")).unwrap();
    fs::write(root.join("c/sub/file"), b"in c\n").unwrap();
    fs::write(root.join("c/secret"), b"0600\n").unwrap();
    fs::set_permissions(root.join("c/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("c/tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("c/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, root.join("c/fifo"), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
        .unwrap();
    fs::hard_link(root.join("a/small"), root.join("a/small-link")).unwrap();
    fs::hard_link(root.join("a/small"), root.join("c/small-from-a")).unwrap();
}

/// Every entry under `src` has the same type, permission bits, size, content
/// and symlink target under `dst` (a mount or an extracted copy).
fn assert_same_tree(src: &Path, dst: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let mut n = 0;
    for p in walk(src).into_iter().skip(1) {
        let rel = p.strip_prefix(src).unwrap();
        let q = dst.join(rel);
        let (a, b) = (fs::symlink_metadata(&p).unwrap(), fs::symlink_metadata(&q).unwrap_or_else(|e| panic!("{}: {e}", q.display())));
        assert_eq!(a.mode(), b.mode(), "mode of {}", rel.display());
        let ft = a.file_type();
        if ft.is_file() {
            assert_eq!(a.len(), b.len(), "size of {}", rel.display());
            assert!(fs::read(&p).unwrap() == fs::read(&q).unwrap(), "content of {}", rel.display());
        } else if ft.is_symlink() {
            assert_eq!(fs::read_link(&p).unwrap(), fs::read_link(&q).unwrap(), "target of {}", rel.display());
        } else {
            assert!(ft.is_dir() || ft.is_fifo() || ft.is_char_device(), "{}", rel.display());
        }
        n += 1;
    }
    assert!(n > 0, "nothing compared under {}", src.display());
}

const SUBVOL_ARGS: [&str; 6] = ["--subvol", "a", "--subvol", "a/b:ro", "--subvol", "c:default"];

#[test]
fn subvolumes_mount_with_default_readonly_and_nesting() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_subvol_tree(&src);
    let img = d.path().join("img");
    let mut args = vec!["mkfs", "--json", "-b", "256M", "-r", s(&src)];
    // Per-subvolume options: zstd in `a` (its nested `b` included), none in
    // the nodatacow file inside the read-only `a/b`.
    args.extend(SUBVOL_ARGS);
    args.extend(["--compress", "zstd:a", "--inode-flags", "nodatacow:a/b/raw", s(&img)]);
    let (code, out, err) = btrs(&args, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("c/small-from-a") && err.contains("separate copy"), "cross-subvolume hard link warning: {err}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect("json");
    let svs: Vec<(u64, u64, String, bool, bool)> = summary["rootdir"]["subvolumes"]
        .as_array()
        .expect("subvolumes")
        .iter()
        .map(|v| {
            let path = v["path"].as_str().unwrap().to_string();
            (v["id"].as_u64().unwrap(), v["parent"].as_u64().unwrap(), path, v["readonly"] == true, v["default"] == true)
        })
        .collect();
    let want = [(256, 5, "a", false, false), (257, 256, "a/b", true, false), (258, 5, "c", false, true)];
    assert_eq!(svs, want.map(|(i, p, n, r, df)| (i, p, n.to_string(), r, df)).to_vec());
    check_clean(&img, "subvolumes");

    // The items, as btrfs-progs reads them.
    if progs_available() {
        let dump = |tree: &str| common::interop::must(Command::new("btrfs").args(["inspect-internal", "dump-tree", "-t", tree]).arg(&img));
        let root = dump("root");
        for want in [
            "key (FS_TREE ROOT_REF 256)",
            "key (256 ROOT_BACKREF 5)",
            "key (256 ROOT_REF 257)",
            "key (257 ROOT_BACKREF 256)",
            "key (FS_TREE ROOT_REF 258)",
            "location key (258 ROOT_ITEM 0) type DIR",
            "flags 0x1(RDONLY)",
        ] {
            assert!(root.contains(want), "root tree lacks {want:?}:\n{root}");
        }
        let uuid_items = dump("uuid").matches("UUID_KEY_SUBVOL").count();
        assert_eq!(uuid_items, 4, "uuid tree: the top level and three subvolumes");
        // Inode numbers restart per subvolume: `a/b`'s top directory is 256 in tree 257.
        let b = dump("257");
        assert!(b.contains("key (256 INODE_REF 256)") && b.contains("name: .."), "{b}");
        assert!(b.contains("NODATASUM|NODATACOW"), "a/b/raw keeps its flags:\n{b}");
        assert!(b.contains("compression 3"), "a/b inherits zstd from --compress zstd:a:\n{b}");
        assert!(!dump("258").contains("compression 3"), "c is not compressed");
        let top = dump("5");
        assert!(top.contains("location key (256 ROOT_ITEM 0) type DIR"), "{top}");
        let super_ = common::interop::must(Command::new("btrfs").args(["inspect-internal", "dump-super"]).arg(&img));
        assert!(super_.contains("DEFAULT_SUBVOL"), "{super_}");
    }

    // btrs's own reader crosses the subvolume boundaries.
    let ls = btrs_ok(&["ls", "-R", s(&img)]);
    for p in ["/a/b:", "/a/b/deep:", "/c/sub:", "leaf", "small-from-a"] {
        assert!(ls.lines().any(|l| l == p), "ls -R lacks {p}:\n{ls}");
    }
    let ex = d.path().join("extracted");
    btrs_ok(&["extract", s(&img), s(&ex)]);
    assert_same_tree(&src, &ex);

    if !interop_enabled("subvolumes_mount_with_default_readonly_and_nesting") {
        return;
    }
    let mnt = d.path().join("mnt");
    // No subvol= option: the default subvolume, `c`, is the top.
    let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "").expect("mount default");
    assert_same_tree(&src.join("c"), &mnt);
    assert!(!mnt.join("a").exists() && mnt.join("sub/file").exists());
    let def = common::interop::must(Command::new("btrfs").args(["subvolume", "get-default"]).arg(&mnt));
    assert!(def.starts_with("ID 258 "), "{def}");
    m.unmount().expect("umount");

    let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "subvolid=5").expect("mount subvolid=5");
    assert_same_tree(&src, &mnt);
    let list = common::interop::must(Command::new("btrfs").args(["subvolume", "list", "-p"]).arg(&mnt));
    // Drop "gen N": mounting `c` above already committed a transaction in it.
    let rows: Vec<String> = list
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let gen = w.iter().position(|x| *x == "gen").unwrap_or(w.len());
            w[..gen].iter().chain(w.iter().skip(gen + 2)).copied().collect::<Vec<_>>().join(" ")
        })
        .collect();
    assert_eq!(
        rows,
        ["ID 256 parent 5 top level 5 path a", "ID 257 parent 256 top level 256 path a/b", "ID 258 parent 5 top level 5 path c"],
        "{list}"
    );
    let ro = |p: &str| common::interop::must(Command::new("btrfs").args(["property", "get"]).arg(mnt.join(p)).arg("ro"));
    assert_eq!(ro("a/b").trim(), "ro=true");
    assert_eq!(ro("a").trim(), "ro=false");
    // Hard links: one inode inside `a`, a copy of its own in `c`.
    let ino = |p: &str| fs::metadata(mnt.join(p)).unwrap();
    assert_eq!((ino("a/small").ino(), ino("a/small").nlink()), (ino("a/small-link").ino(), 2));
    assert_eq!(ino("c/small-from-a").nlink(), 1);
    // Each subvolume is its own inode number space (and st_dev).
    assert_eq!(ino("a").ino(), 256);
    assert_eq!(ino("a/b").ino(), 256);
    assert_ne!(ino("a").dev(), ino("a/b").dev());
    fs::write(mnt.join("a/new"), b"written by the kernel").expect("write into rw subvolume a");
    let e = fs::write(mnt.join("a/b/new"), b"x").expect_err("a/b is read-only");
    assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::ROFS.raw_os_error()), "{e}");
    m.unmount().expect("umount");
    btrfs_check(std::slice::from_ref(&img), &[]).expect("btrfs check after the kernel wrote");
}

#[test]
fn subvolume_images_are_reproducible_and_sized_right() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_subvol_tree(&src);
    let env = [("SOURCE_DATE_EPOCH", "1000000000")];
    let mk = |img: &Path, extra: &[&str]| {
        let mut args = vec!["mkfs", "--shrink", "-U", "0a1b2c3d-0000-4000-8000-000000000002", "-r", s(&src)];
        args.extend(SUBVOL_ARGS);
        args.extend(extra);
        args.push(s(img));
        let (code, _, err) = btrs(&args, &env);
        assert_eq!(code, 0, "{err}");
    };
    let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
    mk(&a, &[]);
    mk(&b, &[]);
    assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "two runs with -U and SOURCE_DATE_EPOCH differ");
    check_clean(&a, "reproducible subvolumes");
    // The subvolume UUIDs derive from the fsid too.
    let out = btrs(
        &[
            "mkfs",
            "--json",
            "--shrink",
            "-U",
            "0a1b2c3d-0000-4000-8000-000000000002",
            "-r",
            s(&src),
            "--subvol",
            "a",
            s(&d.path().join("j.img")),
        ],
        &env,
    )
    .1;
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let again = btrs(
        &[
            "mkfs",
            "--json",
            "--shrink",
            "-U",
            "0a1b2c3d-0000-4000-8000-000000000002",
            "-r",
            s(&src),
            "--subvol",
            "a",
            s(&d.path().join("k.img")),
        ],
        &env,
    )
    .1;
    let k: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(j["rootdir"]["subvolumes"][0]["uuid"], k["rootdir"]["subvolumes"][0]["uuid"]);
    assert_ne!(j["rootdir"]["subvolumes"][0]["uuid"], serde_json::Value::Null);

    // --print-size counts the subvolume trees, and matches --shrink.
    let mut args = vec!["mkfs", "--print-size", "-r", s(&src)];
    args.extend(SUBVOL_ARGS);
    let fresh = d.path().join("fresh.img");
    args.push(s(&fresh));
    let printed: u64 = btrs_ok(&args).trim().parse().expect("a number");
    assert!(!fresh.exists());
    assert_eq!(printed, fs::metadata(&a).unwrap().len());
    // Many subvolumes: the shrunk image still holds every tree.
    let many = d.path().join("many");
    let mut args: Vec<String> = ["mkfs", "--shrink", "-n", "4K", "-r", s(&many)].map(String::from).to_vec();
    for i in 0..60 {
        fs::create_dir_all(many.join(format!("sv{i:02}/inner"))).unwrap();
        fs::write(many.join(format!("sv{i:02}/inner/f")), vec![i as u8; 5000]).unwrap();
        args.extend(["--subvol".to_string(), format!("sv{i:02}")]);
    }
    let mimg = d.path().join("many.img");
    args.push(s(&mimg).to_string());
    let (code, _, err) = btrs(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert_eq!(code, 0, "{err}");
    check_clean(&mimg, "60 subvolumes, 4K nodes");
    let ls = btrs_ok(&["ls", "-R", s(&mimg)]);
    assert_eq!(ls.lines().filter(|l| *l == "f").count(), 60);
}

#[test]
fn bad_subvol_options_fail_and_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_subvol_tree(&src);
    std::os::unix::fs::symlink("a", src.join("to-a")).unwrap();
    let img = d.path().join("img");
    // Exit 2: the value itself is not a subvolume path (a usage error); 1: it
    // does not fit the source tree.
    let cases: [(&[&str], i32, &str); 8] = [
        (&["--subvol", "nope"], 1, "nope: no such directory"),
        (&["--subvol", "top/readme"], 1, "top/readme: not a directory"),
        (&["--subvol", "to-a"], 1, "to-a: not a directory"),
        (&["--subvol", "a", "--subvol", "./a/:ro"], 1, "a: given more than once"),
        (&["--subvol", "a:default", "--subvol", "c:default"], 1, "only one subvolume can be the default"),
        (&["--subvol", "../src/a"], 2, "`..` is not allowed"),
        (&["--subvol", "/"], 2, "the root itself is the top-level subvolume"),
        (&["--compress", "zstd:nope"], 1, "--compress for nope: no such path"),
    ];
    for (extra, want, msg) in cases {
        let mut args = vec!["mkfs", "--shrink", "-r", s(&src)];
        args.extend(extra);
        args.push(s(&img));
        let (code, _, err) = btrs(&args, &[]);
        assert_eq!(code, want, "{extra:?}: {err}");
        assert!(err.contains(msg), "{extra:?}: want {msg:?} in: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!img.exists(), "{extra:?}: an image was left behind");
    }
    // An existing image keeps its filesystem.
    btrs_ok(&["mkfs", "-b", "128M", s(&img)]);
    let before = fs::read(&img).unwrap();
    let (code, _, err) = btrs(&["mkfs", "-f", "-r", s(&src), "--subvol", "nope", s(&img)], &[]);
    assert_ne!(code, 0, "{err}");
    assert!(fs::read(&img).unwrap() == before, "a refused mkfs changed the image");
    // Without --rootdir there is nothing to make subvolumes of.
    let none = d.path().join("none.img");
    let (code, _, err) = btrs(&["mkfs", "-b", "128M", "--subvol", "a", s(&none)], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--rootdir"), "{err}");
    assert!(!none.exists());
}

// ---------------------------------------------------------------------------
// --rootdir-tar

/// A varied tree for the tar tests: a multi-MiB file, an empty one, a sparse
/// one (unless `sparse` is false), nested and empty directories, a symlink,
/// hard links, a fifo, a character device (as root), a set-uid mode, user
/// xattrs, nanosecond mtimes and (as root) owners other than the test user.
fn make_tar_tree(root: &Path, sparse: bool) {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    for d in ["etc/empty-dir", "usr/bin", "var/lib/deep"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("etc/hostname"), b"tarred\n").unwrap();
    fs::write(root.join("etc/empty"), b"").unwrap();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    fs::write(root.join("usr/bin/tool"), &big).unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-alias")).unwrap();
    fs::hard_link(root.join("etc/hostname"), root.join("var/lib/deep/hostname-link")).unwrap();
    fs::write(root.join("var/lib/deep/leaf"), "text ".repeat(3000)).unwrap();
    if sparse {
        let f = fs::File::create(root.join("var/sparse")).unwrap();
        f.set_len(16 * MIB).unwrap();
        f.write_all_at(b"middle", 8 * MIB).unwrap();
    }
    std::os::unix::fs::symlink("../usr/bin/tool", root.join("etc/tool-link")).unwrap();
    rustix::fs::mknodat(CWD, root.join("var/fifo"), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o620), 0).unwrap();
    if is_root() {
        let dev = rustix::fs::makedev(4, 70_000);
        rustix::fs::mknodat(CWD, root.join("var/tty"), rustix::fs::FileType::CharacterDevice, rustix::fs::Mode::from_raw_mode(0o600), dev)
            .unwrap();
    }
    xattr::set(root.join("etc/hostname"), "user.origin", b"builder\0binary\n").unwrap();
    xattr::set(root.join("usr/bin"), "user.dir", b"d").unwrap();
    // Children before parents, so a directory's time is set after its entries change.
    let mut all = walk(root);
    all.reverse();
    for (n, p) in all.iter().enumerate() {
        // chown would clear the set-uid bit of the tool (and its other name).
        if is_root() && !p.file_name().is_some_and(|n| n.as_bytes().starts_with(b"tool")) {
            std::os::unix::fs::lchown(p, Some(1234 + n as u32 % 3), Some(4321)).unwrap();
        }
        let t = Timespec { tv_sec: 1_600_000_000 + n as i64 * 1000, tv_nsec: 123_456_789 - n as i64 * 7 };
        utimensat(CWD, p, &Timestamps { last_access: t, last_modification: t }, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }
}

/// `tar` of a whole tree as GNU tar writes it for image builders: PAX format
/// (nanosecond times), every xattr.
fn tar_of(tree: &Path, out: &Path) {
    let (code, _, err) =
        run(Command::new("tar").args(["--xattrs", "--xattrs-include=*", "--format=posix", "-C", s(tree), "-cf", s(out), "."]));
    assert_eq!(code, 0, "tar: {err}");
}

const TAR_UUID: &str = "0a1b2c3d-0000-4000-8000-0000000000a7";

/// `btrs mkfs` with -U and SOURCE_DATE_EPOCH (after every source mtime, so
/// none is clamped), stdin from `input` when given.
fn mkfs_repro(args: &[&str], input: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["mkfs", "-U", TAR_UUID]).args(args).env("SOURCE_DATE_EPOCH", "1700000000");
    if let Some(i) = input {
        cmd.stdin(fs::File::open(i).unwrap());
    }
    run(&mut cmd)
}

#[test]
fn tar_source_equals_the_same_tree_unpacked() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tar_tree(&src, true);
    let tar = d.path().join("t.tar");
    tar_of(&src, &tar);
    let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
    for (args, img) in [(["-r", s(&src)], &a), (["--rootdir-tar", s(&tar)], &b)] {
        let (code, _, err) = mkfs_repro(&[&args[..], &["--shrink", s(img)]].concat(), None);
        assert_eq!(code, 0, "{args:?}: {err}");
        check_clean(img, args[0]);
    }
    // The same names, types, modes, link counts, owners, sizes and mtimes ...
    let (la, lb) = (btrs_ok(&["ls", "-R", "-l", s(&a)]), btrs_ok(&["ls", "-R", "-l", s(&b)]));
    assert_eq!(la, lb, "ls -R -l of the directory-made and the tar-made image differ");
    assert!(lb.contains("rwsr-xr-x") && lb.contains("hostname-link") && lb.contains("-> ../usr/bin/tool"), "{lb}");
    // ... the same bytes and xattrs. Not the same image: GNU tar stores the
    // holes of var/sparse as zeros (without --sparse), which become data.
    let (ea, eb) = (d.path().join("ea"), d.path().join("eb"));
    btrs_ok(&["extract", s(&a), s(&ea)]);
    btrs_ok(&["extract", s(&b), s(&eb)]);
    assert_same_tree(&src, &eb);
    for p in walk(&ea).into_iter().skip(1) {
        let q = eb.join(p.strip_prefix(&ea).unwrap());
        let names = |p: &Path| {
            let mut v: Vec<_> = xattr::list(p).unwrap().map(|n| (n.clone(), xattr::get(p, &n).unwrap())).collect();
            v.sort();
            v
        };
        assert_eq!(names(&p), names(&q), "xattrs of {}", q.display());
        let (ma, mb) = (fs::symlink_metadata(&p).unwrap(), fs::symlink_metadata(&q).unwrap());
        assert_eq!(
            (ma.uid(), ma.gid(), ma.rdev(), ma.mtime(), ma.mtime_nsec()),
            (mb.uid(), mb.gid(), mb.rdev(), mb.mtime(), mb.mtime_nsec())
        );
    }
    assert_eq!(xattr::get(eb.join("etc/hostname"), "user.origin").unwrap().as_deref(), Some(&b"builder\0binary\n"[..]));

    // Without a sparse file the two images are byte for byte the same: the walk
    // numbers inodes and orders items alike for both sources. So too with
    // every option that names paths, and from gzip and standard input.
    let src2 = d.path().join("src2");
    make_tar_tree(&src2, false);
    let tar2 = d.path().join("t2.tar");
    tar_of(&src2, &tar2);
    let gz = d.path().join("t2.tar.gz");
    let (code, _, err) = run(Command::new("sh").arg("-c").arg(format!("gzip -c {} > {}", s(&tar2), s(&gz))));
    assert_eq!(code, 0, "gzip: {err}");
    let manifest = d.path().join("manifest");
    fs::write(&manifest, "/etc 0750 0 42\n/usr/bin/tool xattr security.capability=0x0100000200200000000000000000000000000000\n").unwrap();
    let option_sets: [&[&str]; 4] = [
        &["--shrink"],
        &["-b", "300M", "--all-root", "--compress", "zstd", "--compress", "none:usr", "--inode-flags", "nodatacow:var/lib/deep/leaf"],
        &["--shrink", "--subvol", "var:ro", "--subvol", "usr/bin:default", "--owner-map", "1234:0:2"],
        &["--shrink", "-O", "^no-holes", "--manifest", s(&manifest), "-n", "4K"],
    ];
    for opts in option_sets {
        let (x, y) = (d.path().join("x.img"), d.path().join("y.img"));
        let _ = (fs::remove_file(&x), fs::remove_file(&y));
        let (code, _, err) = mkfs_repro(&[opts, &["-r", s(&src2), s(&x)]].concat(), None);
        assert_eq!(code, 0, "{opts:?} -r: {err}");
        for (source, input) in [(s(&tar2), None), (s(&gz), None), ("-", Some(tar2.as_path()))] {
            let _ = fs::remove_file(&y);
            let (code, _, err) = mkfs_repro(&[opts, &["--rootdir-tar", source, s(&y)]].concat(), input);
            assert_eq!(code, 0, "{opts:?} --rootdir-tar {source}: {err}");
            assert!(fs::read(&x).unwrap() == fs::read(&y).unwrap(), "{opts:?}: --rootdir-tar {source} and -r images differ");
        }
        check_clean(&y, &format!("{opts:?}"));
    }
    // --print-size reads the archive as --shrink does.
    let printed: u64 = btrs_ok(&["mkfs", "--print-size", "--rootdir-tar", s(&tar2), s(&d.path().join("p.img"))]).trim().parse().unwrap();
    let (code, _, err) = mkfs_repro(&["--shrink", "--rootdir-tar", s(&tar2), s(&d.path().join("q.img"))], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(printed, fs::metadata(d.path().join("q.img")).unwrap().len());
    assert!(!d.path().join("p.img").exists());
}

#[test]
fn tar_made_image_mounts_with_the_archive_metadata() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tar_tree(&src, true);
    let tar = d.path().join("t.tar");
    tar_of(&src, &tar);
    let img = d.path().join("img");
    // No SOURCE_DATE_EPOCH: every time comes from the archive's PAX records.
    btrs_ok(&["mkfs", "--shrink", "--rootdir-tar", s(&tar), s(&img)]);
    check_clean(&img, "tar-made");
    if !interop_enabled("tar_made_image_mounts_with_the_archive_metadata") {
        return;
    }
    let mnt = d.path().join("mnt");
    let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "ro").expect("mount");
    assert_same_tree(&src, &mnt);
    for p in walk(&src) {
        let rel = p.strip_prefix(&src).unwrap();
        let q = mnt.join(rel);
        let (a, b) = (fs::symlink_metadata(&p).unwrap(), fs::symlink_metadata(&q).unwrap());
        assert_eq!((a.mode(), a.uid(), a.gid(), a.rdev()), (b.mode(), b.uid(), b.gid(), b.rdev()), "{}", rel.display());
        assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()), "mtime of {}", rel.display());
        if !a.is_dir() {
            // btrfs counts a directory's links as 1, whatever its subdirectories.
            assert_eq!(a.nlink(), b.nlink(), "links of {}", rel.display());
        }
        if !a.file_type().is_symlink() {
            for n in xattr::list(&p).unwrap() {
                assert_eq!(xattr::get(&p, &n).unwrap(), xattr::get(&q, &n).unwrap(), "{n:?} of {}", rel.display());
            }
        }
    }
    let ino = |p: &str| fs::metadata(mnt.join(p)).unwrap().ino();
    assert_eq!(ino("usr/bin/tool"), ino("usr/bin/tool-alias"));
    assert_eq!(ino("etc/hostname"), ino("var/lib/deep/hostname-link"));
    m.unmount().expect("umount");
    check_clean(&img, "after the kernel mount");
}

/// Archives GNU tar would not make from a tree: built member by member.
fn tar_member(b: &mut tar::Builder<fs::File>, path: &str, ty: tar::EntryType, mode: u32, data: &[u8], pax: &[(&str, &[u8])]) {
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().copied()).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_uid(2000);
    h.set_gid(3000);
    h.set_mtime(1_500_000_000);
    h.set_size(data.len() as u64);
    if ty == tar::EntryType::Link || ty == tar::EntryType::Symlink {
        h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
        h.set_size(0);
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    } else {
        b.append_data(&mut h, path, data).unwrap();
    }
}

#[test]
fn tar_implicit_dirs_duplicates_links_and_security_xattrs() {
    use tar::EntryType as T;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("hand.tar");
    let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
    let cap: &[u8] = &[1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    tar_member(&mut b, "./deep/er/file", T::Regular, 0o640, b"first", &[("mtime", b"1600000000.000000042")]);
    tar_member(&mut b, "deep/er/alias", T::Link, 0o644, b"./deep/er/file", &[]);
    // A later member of the same path wins; the earlier hard link keeps the first file.
    tar_member(&mut b, "deep/er/file", T::Regular, 0o600, b"second version", &[]);
    tar_member(
        &mut b,
        "bin/ping",
        T::Regular,
        0o755,
        b"#!/bin/true\n",
        &[("SCHILY.xattr.security.capability", cap), ("SCHILY.xattr.security.selinux", b"system_u:object_r:ping_exec_t:s0\0")],
    );
    // Listed after its contents: the directory gets these values, keeps them.
    tar_member(&mut b, "bin/", T::Directory, 0o700, b"", &[("uid", b"70000"), ("atime", b"1.5"), ("ctime", b"2.25")]);
    tar_member(&mut b, "bin/sh", T::Symlink, 0o777, b"ping", &[]);
    b.finish().unwrap();
    drop(b);
    let img = d.path().join("img");
    let (code, _, err) = btrs(&["mkfs", "--shrink", "--rootdir-tar", s(&path), s(&img)], &[("SOURCE_DATE_EPOCH", "1700000000")]);
    assert_eq!(code, 0, "{err}");
    check_clean(&img, "hand-made archive");
    // deep/ and deep/er/ are implied: 0755, root, SOURCE_DATE_EPOCH. The root too.
    let top = btrs_ok(&["ls", "-l", s(&img), "/"]);
    let line = top.lines().find(|l| l.ends_with(" deep")).unwrap_or_else(|| panic!("{top}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((f[0], f[2], f[3], f[5]), ("drwxr-xr-x", "0", "0", "2023-11-14"), "{line}");
    assert!(f[6].starts_with("22:13:20"), "{line}");
    assert_eq!(ls_owner(&img, "/", "bin"), ("drwx------".to_string(), 70000, 3000));
    assert_eq!(btrs_ok(&["cat", s(&img), "/deep/er/file"]), "second version");
    assert_eq!(btrs_ok(&["cat", s(&img), "/deep/er/alias"]), "first");
    assert_eq!(ls_owner(&img, "/deep/er", "alias"), ("-rw-r-----".to_string(), 2000, 3000));
    if progs_available() {
        let dump = common::interop::must(Command::new("btrfs").args(["inspect-internal", "dump-tree", "-t", "5"]).arg(&img));
        assert!(dump.contains("name: security.capability") && dump.contains("name: security.selinux"), "{dump}");
        assert!(dump.contains("mtime 1600000000.42 "), "{dump}");
    }
    if !interop_enabled("tar_implicit_dirs_duplicates_links_and_security_xattrs") {
        return;
    }
    let mnt = d.path().join("mnt");
    let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "ro").expect("mount");
    assert_eq!(xattr::get(mnt.join("bin/ping"), "security.capability").unwrap().as_deref(), Some(cap));
    assert_eq!(fs::symlink_metadata(mnt.join("deep/er/alias")).unwrap().nlink(), 1);
    let md = fs::metadata(mnt.join("deep/er/file")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec(), md.mode() & 0o7777), (1_500_000_000, 0, 0o600));
    m.unmount().expect("umount");
}

#[test]
fn bad_archives_fail_naming_the_member_and_write_nothing() {
    use tar::EntryType as T;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tar_tree(&src, false);
    let good = d.path().join("good.tar");
    tar_of(&src, &good);
    let bytes = fs::read(&good).unwrap();
    let at = |name: &str, data: &[u8]| {
        let p = d.path().join(name);
        fs::write(&p, data).unwrap();
        p
    };
    let hand = |name: &str, members: &[(&str, T, &[u8])]| {
        let p = d.path().join(name);
        let mut b = tar::Builder::new(fs::File::create(&p).unwrap());
        for (path, ty, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            // Raw names: the builder itself refuses `..` and absolute paths.
            h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.finish().unwrap();
        p
    };
    // The tool's data is cut off: the member holding it is named.
    // The header of the member holding the tool's data (whichever of its two
    // names the archive lists first): a regular file ('0') under usr/bin.
    let tool_at = (0..bytes.len()).step_by(512).find(|&p| bytes[p..].starts_with(b"./usr/bin/tool") && bytes[p + 156] == b'0').unwrap();
    let tool_name = String::from_utf8_lossy(&bytes[tool_at..tool_at + 100]).trim_end_matches('\0').to_string();
    let cut_msg = format!("truncated: member {tool_name} has 5000000 bytes");
    // The start of the last header block ("ustar" sits at byte 257 of a header).
    let last_header = bytes.windows(6).rposition(|w| w == b"ustar\0").unwrap() - 257;
    // A PAX 0.1 sparse member whose segments overlap.
    let sparse = d.path().join("sparse.tar");
    let mut b = tar::Builder::new(fs::File::create(&sparse).unwrap());
    tar_member(&mut b, "sp", T::Regular, 0o644, &[7u8; 20], &[("GNU.sparse.size", b"100"), ("GNU.sparse.map", b"0,10,5,10")]);
    b.finish().unwrap();
    drop(b);
    let xz = d.path().join("t.tar.xz");
    let xz_ok = run(Command::new("sh").arg("-c").arg(format!("xz -c {} > {}", s(&good), s(&xz)))).0 == 0;
    let mut cases: Vec<(PathBuf, &str)> = vec![
        (d.path().join("missing.tar"), "no such file"),
        (at("text.tar", &b"hello, not an archive\n".repeat(100)), "not a tar archive"),
        (at("empty.tar", b""), "empty file, not a tar archive"),
        (at("cut-data.tar", &bytes[..tool_at + 4096]), &cut_msg),
        (at("cut-header.tar", &bytes[..last_header + 100]), "damaged or truncated after member"),
        (hand("abs.tar", &[("/etc/passwd", T::Regular, b"x")]), "member /etc/passwd: absolute path"),
        (hand("dotdot.tar", &[("a/../../b", T::Regular, b"x")]), "member a/../../b: `..`"),
        (hand("volume.tar", &[("label", T::new(b'V'), b"")]), "member label: entry type"),
        (hand("dangling.tar", &[("b", T::Link, b"")]), "member b: hard link"),
        (hand("dirfile.tar", &[("a/b", T::Regular, b"x"), ("a", T::Regular, b"y")]), "member a: a replaces a directory"),
        (sparse, "member sp: sparse member: segments overlap or are out of order at file offset 5"),
    ];
    if xz_ok {
        cases.push((xz, "xz-compressed archive"));
    }
    for (archive, msg) in &cases {
        let img = d.path().join("img");
        let (code, _, err) = btrs(&["mkfs", "--shrink", "--rootdir-tar", s(archive), s(&img)], &[]);
        assert_eq!(code, 1, "{}: {err}", archive.display());
        assert!(err.contains(msg), "{}: want {msg:?} in: {err}", archive.display());
        assert!(!err.contains("panicked"), "{err}");
        assert!(!img.exists(), "{}: an image was left behind", archive.display());
    }
    // Both sources at once is a usage error; so is the archive as its own image.
    let (code, _, err) = btrs(&["mkfs", "--shrink", "-r", s(&src), "--rootdir-tar", s(&good), s(&d.path().join("img"))], &[]);
    assert!(code == 2 && err.contains("cannot be used with"), "{err}");
    let (code, _, err) = btrs(&["mkfs", "-f", "--shrink", "--rootdir-tar", s(&good), s(&good)], &[]);
    assert!(code == 1 && err.contains("is one of the images being made"), "{err}");
    assert!(fs::read(&good).unwrap() == bytes, "the archive was written to");
}

/// A posix_acl xattr value as the kernel stores it: version 2, then
/// (tag, perm, id) entries.
fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn tar_acls_and_libarchive_xattrs_become_xattrs() {
    use tar::EntryType as T;
    const NONE: u32 = u32::MAX;
    let d = tempfile::tempdir().unwrap();
    // A tree with POSIX ACLs, archived by GNU tar with --acls only: the ACLs
    // travel as SCHILY.acl.* text, not as raw xattrs.
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"acl'd").unwrap();
    let access = acl_value(&[(1, 6, NONE), (2, 5, 4242), (4, 4, NONE), (0x10, 5, NONE), (0x20, 0, NONE)]);
    let default = acl_value(&[(1, 7, NONE), (4, 5, NONE), (8, 7, 4343), (0x10, 7, NONE), (0x20, 5, NONE)]);
    xattr::set(src.join("f"), "system.posix_acl_access", &access).expect("this test needs a host filesystem with POSIX ACLs");
    xattr::set(&src, "system.posix_acl_default", &default).unwrap();
    let gnu = d.path().join("gnu.tar");
    let (code, _, err) = run(Command::new("tar").args(["--acls", "--format=posix", "-C", s(&src), "-cf", s(&gnu), "."]));
    assert_eq!(code, 0, "tar: {err}");
    let raw = fs::read(&gnu).unwrap();
    assert!(raw.windows(17).any(|w| w == b"SCHILY.acl.access"), "GNU tar stored no ACL text");
    assert!(!raw.windows(18).any(|w| w == b"SCHILY.xattr.syste"), "GNU tar stored raw ACL xattrs: the text path would go untested");

    // bsdtar's records, by hand: LIBARCHIVE.xattr (URL-encoded name, base64
    // value), an ACL with the id as fourth field, one naming a user without
    // an id (left out with a warning), and an NFSv4 ACL (ignored, warned).
    let hand = d.path().join("bsd.tar");
    let mut b = tar::Builder::new(fs::File::create(&hand).unwrap());
    tar_member(&mut b, "x", T::Regular, 0o644, b"x", &[("LIBARCHIVE.xattr.user.odd%3Dname", b"AAECAw==")]);
    tar_member(
        &mut b,
        "both",
        T::Regular,
        0o644,
        b"b",
        // The SCHILY record names the same xattr: it wins.
        &[("LIBARCHIVE.xattr.user.v", b"AAECAw=="), ("SCHILY.xattr.user.v", b"raw")],
    );
    tar_member(
        &mut b,
        "acl4",
        T::Regular,
        0o640,
        b"a",
        &[("SCHILY.acl.access", b"user::rw-,user:alice:r--:1001,group::r--,mask::r--,other::---")],
    );
    tar_member(
        &mut b,
        "named",
        T::Regular,
        0o640,
        b"n",
        &[("SCHILY.acl.access", b"user::rw-,user:nobody-known:r--,group::r--,mask::r--,other::---")],
    );
    tar_member(&mut b, "nfs4", T::Regular, 0o640, b"4", &[("SCHILY.acl.ace", b"owner@:rw-p--aARWcCos:-------:allow")]);
    b.finish().unwrap();
    drop(b);

    let (gi, hi) = (d.path().join("g.img"), d.path().join("h.img"));
    btrs_ok(&["mkfs", "--shrink", "--rootdir-tar", s(&gnu), s(&gi)]);
    let (code, out, err) = btrs(&["mkfs", "--shrink", "--rootdir-tar", s(&hand), s(&hi)], &[]);
    assert_eq!(code, 0, "{err}");
    let said = format!("{out}{err}");
    assert!(said.contains("member named: SCHILY.acl.access ignored") && said.contains("nobody-known"), "{said}");
    assert!(said.contains("NFSv4 ACL records ignored"), "{said}");
    check_clean(&gi, "GNU tar --acls");
    check_clean(&hi, "bsdtar records");
    if progs_available() {
        let dump = common::interop::must(Command::new("btrfs").args(["inspect-internal", "dump-tree", "-t", "5"]).arg(&gi));
        assert!(dump.contains("name: system.posix_acl_access") && dump.contains("name: system.posix_acl_default"), "{dump}");
        let dump = common::interop::must(Command::new("btrfs").args(["inspect-internal", "dump-tree", "-t", "5"]).arg(&hi));
        assert!(dump.contains("name: user.odd=name") && dump.contains("name: system.posix_acl_access"), "{dump}");
        assert_eq!(dump.matches("name: system.posix_acl_access").count(), 1, "only acl4 has an ACL: {dump}");
    }
    if !interop_enabled("tar_acls_and_libarchive_xattrs_become_xattrs") {
        return;
    }
    // The kernel reads back the source's ACLs byte for byte.
    let mnt = d.path().join("mnt");
    let m = Mounted::mount(&mnt, std::slice::from_ref(&gi), "ro").expect("mount");
    assert_eq!(xattr::get(mnt.join("f"), "system.posix_acl_access").unwrap(), Some(access));
    assert_eq!(xattr::get(&mnt, "system.posix_acl_default").unwrap(), Some(default));
    m.unmount().expect("umount");
    let m = Mounted::mount(&mnt, std::slice::from_ref(&hi), "ro").expect("mount");
    assert_eq!(xattr::get(mnt.join("x"), "user.odd=name").unwrap().as_deref(), Some(&[0u8, 1, 2, 3][..]));
    assert_eq!(xattr::get(mnt.join("both"), "user.v").unwrap().as_deref(), Some(&b"raw"[..]));
    let want = acl_value(&[(1, 6, NONE), (2, 4, 1001), (4, 4, NONE), (0x10, 4, NONE), (0x20, 0, NONE)]);
    assert_eq!(xattr::get(mnt.join("acl4"), "system.posix_acl_access").unwrap(), Some(want));
    assert_eq!(xattr::get(mnt.join("named"), "system.posix_acl_access").unwrap(), None);
    m.unmount().expect("umount");
    // --owner-map shifts the named entries of ACLs as it shifts owners.
    let mi = d.path().join("m.img");
    btrs_ok(&["mkfs", "--shrink", "--owner-map", "4000:0:1000", "--rootdir-tar", s(&gnu), s(&mi)]);
    check_clean(&mi, "owner-mapped ACLs");
    let m = Mounted::mount(&mnt, std::slice::from_ref(&mi), "ro").expect("mount");
    let shifted = acl_value(&[(1, 6, NONE), (2, 5, 242), (4, 4, NONE), (0x10, 5, NONE), (0x20, 0, NONE)]);
    assert_eq!(xattr::get(mnt.join("f"), "system.posix_acl_access").unwrap(), Some(shifted));
    let shifted = acl_value(&[(1, 7, NONE), (4, 5, NONE), (8, 7, 343), (0x10, 7, NONE), (0x20, 5, NONE)]);
    assert_eq!(xattr::get(&mnt, "system.posix_acl_default").unwrap(), Some(shifted));
    m.unmount().expect("umount");
}

/// Sparse files: data at odd places, a tail that ends mid-sector, one all
/// hole, one with more segments than an old GNU header holds (4, then
/// extension blocks of 21).
/// (name, (offset, bytes) written, size)
type SparseFile = (&'static str, Vec<(u64, Vec<u8>)>, u64);

fn make_sparse_tree(root: &Path) -> Vec<SparseFile> {
    let files: Vec<SparseFile> = vec![
        ("middle", vec![(8 * MIB, b"middle".to_vec())], 16 * MIB),
        ("ends", vec![(0, vec![1u8; 70_000]), (5 * MIB + 123, vec![2u8; 5000])], 5 * MIB + 5123),
        ("holes-only", vec![], 3 * MIB),
        ("many", (0..40u64).map(|i| (i * 256 * 1024 + i * 4096, vec![i as u8 + 1; 4096 * (1 + i as usize % 3)])).collect(), 11 * MIB),
    ];
    fs::create_dir_all(root).unwrap();
    for (name, segs, size) in &files {
        let f = fs::File::create(root.join(name)).unwrap();
        f.set_len(*size).unwrap();
        for (off, data) in segs {
            f.write_all_at(data, *off).unwrap();
        }
    }
    files
}

#[test]
fn tar_sparse_members_keep_their_holes() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let files = make_sparse_tree(&src);
    // The same tree from the directory: every PAX sparse format must give
    // this very image (the walk sees the same holes through SEEK_DATA).
    let direct = d.path().join("direct.img");
    let (code, _, err) = mkfs_repro(&["--shrink", "-r", s(&src), s(&direct)], None);
    assert_eq!(code, 0, "{err}");
    let formats: [(&str, &[&str]); 4] = [
        ("gnu", &["--format=gnu"]),
        ("pax-1.0", &["--format=posix"]),
        ("pax-0.1", &["--format=posix", "--sparse-version=0.1"]),
        ("pax-0.0", &["--format=posix", "--sparse-version=0.0"]),
    ];
    for (label, args) in formats {
        let tar = d.path().join(format!("{label}.tar"));
        let (code, _, err) = run(Command::new("tar").arg("--sparse").args(args).args(["-C", s(&src), "-cf", s(&tar), "."]));
        assert_eq!(code, 0, "tar {label}: {err}");
        let img = d.path().join(format!("{label}.img"));
        let (code, _, err) = mkfs_repro(&["--shrink", "--rootdir-tar", s(&tar), s(&img)], None);
        assert_eq!(code, 0, "{label}: {err}");
        check_clean(&img, label);
        let out = d.path().join(format!("{label}.out"));
        btrs_ok(&["extract", s(&img), s(&out)]);
        for (name, segs, size) in &files {
            let got = fs::read(out.join(name)).unwrap();
            let mut want = vec![0u8; *size as usize];
            for (off, data) in segs {
                want[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            }
            assert!(got == want, "{label}: {name} differs");
        }
        // Holes stayed holes: the image is small and, for the PAX formats
        // (nanosecond times like the directory), the directory's image itself.
        assert!(fs::metadata(&img).unwrap().len() < 40 * MIB, "{label}: holes were stored as data");
        if label != "gnu" {
            assert!(fs::read(&img).unwrap() == fs::read(&direct).unwrap(), "{label}: differs from the -r image");
        }
    }
    if !interop_enabled("tar_sparse_members_keep_their_holes") {
        return;
    }
    let img = d.path().join("gnu.img");
    let mnt = d.path().join("mnt");
    let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "ro").expect("mount");
    assert_same_tree(&src, &mnt);
    // A hole in the middle of the file is a hole to the kernel too.
    let md = fs::metadata(mnt.join("middle")).unwrap();
    assert!(md.blocks() * 512 <= 64 * 1024, "middle: {} bytes allocated", md.blocks() * 512);
    m.unmount().expect("umount");
}

/// File data for the threads test: larger than one copy piece (4 MiB) and
/// than one compressed extent, compressible and not, with holes and a tail
/// that ends mid-sector; many small files (inline) too.
fn make_data_tree(root: &Path) {
    fs::create_dir_all(root.join("small")).unwrap();
    let text: Vec<u8> =
        (0..3_000_000u32).flat_map(|i| format!("{i:08} line of text\n").into_bytes()).take(9 * MIB as usize + 1234).collect();
    fs::write(root.join("text"), &text).unwrap();
    let noise: Vec<u8> = (0..(6 * MIB as u32 + 77)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    fs::write(root.join("noise"), &noise).unwrap();
    let f = fs::File::create(root.join("holes")).unwrap();
    f.set_len(40 * MIB).unwrap();
    f.write_all_at(&noise[..5 * MIB as usize], 3 * MIB).unwrap();
    f.write_all_at(&text[..2 * MIB as usize], 30 * MIB + 100).unwrap();
    for i in 0..300u32 {
        fs::write(root.join(format!("small/{i}")), format!("{i} ").repeat(i as usize % 700)).unwrap();
    }
}

/// Reading, compressing and checksumming run on worker threads; placing stays
/// in order, so the image is the same for any number of them.
#[test]
fn images_do_not_depend_on_the_thread_count() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_data_tree(&src);
    let tar = d.path().join("src.tar");
    tar_of(&src, &tar);
    for extra in [&[][..], &["--compress", "zstd"], &["--compress", "lzo", "--csum", "sha256", "-m", "single"]] {
        let mut images = Vec::new();
        for threads in ["1", "2", "5"] {
            for source in [["-r", s(&src)], ["--rootdir-tar", s(&tar)]] {
                let img = d.path().join(format!("t{threads}-{}.img", images.len()));
                let (code, _, err) = mkfs_repro(&[extra, &["--shrink", "--threads", threads], &source[..], &[s(&img)]].concat(), None);
                assert_eq!(code, 0, "{extra:?} {threads}: {err}");
                images.push((threads, source[0], img));
            }
        }
        for source in ["-r", "--rootdir-tar"] {
            let same: Vec<_> = images.iter().filter(|i| i.1 == source).collect();
            let first = fs::read(&same[0].2).unwrap();
            for other in &same[1..] {
                assert!(fs::read(&other.2).unwrap() == first, "{extra:?} {source}: {} threads differ from 1", other.0);
            }
            check_clean(&same[0].2, &format!("{extra:?} {source}"));
        }
        let out = d.path().join(format!("out{}", extra.len()));
        btrs_ok(&["extract", s(&images[2].2), s(&out)]);
        assert_same_tree(&src, &out);
        fs::remove_dir_all(&out).unwrap();
        for (_, _, img) in images {
            fs::remove_file(img).unwrap();
        }
    }
}

/// Data stored as is goes from the source file to every copy with
/// copy_file_range where the host allows (here: the same filesystem), and
/// reads back right, checksums included.
#[test]
fn file_data_is_copied_file_to_file() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_data_tree(&src);
    let tar = d.path().join("src.tar");
    tar_of(&src, &tar);
    let copied = |args: &[&str], imgs: &[PathBuf]| -> (u64, u64) {
        let out = btrs_ok(&[&["mkfs", "--json"], args, &imgs.iter().map(|p| s(p)).collect::<Vec<_>>()[..]].concat());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (v["rootdir"]["data_copied_bytes"].as_u64().unwrap(), v["rootdir"]["data_written_bytes"].as_u64().unwrap())
    };
    // Data stored in the image: the files' data ranges, in whole sectors.
    let stored: u64 = 9 * MIB + 4096 + 6 * MIB + 4096 + 5 * MIB + 2 * MIB + 4096;
    let one = [d.path().join("one.img")];
    let (c, w) = copied(&["--shrink", "-r", s(&src)], &one);
    assert!(c > 0, "copy_file_range was not used");
    assert!(c + w >= stored, "{c} + {w} < {stored}");
    check_clean(&one[0], "copy_file_range, one image");
    if progs_available() {
        common::interop::must(Command::new("btrfs").args(["check", "--readonly", "--check-data-csum"]).arg(&one[0]));
    }
    let (code, out, err) = btrs(&["scrub", s(&one[0])], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let x = d.path().join("x");
    btrs_ok(&["extract", s(&one[0]), s(&x)]);
    assert_same_tree(&src, &x);
    // From a tar archive too; on a RAID1 pair every copy is copied.
    let pair = [d.path().join("p1.img"), d.path().join("p2.img")];
    for p in &pair {
        fs::File::create(p).unwrap().set_len(512 * MIB).unwrap();
    }
    let (c2, w2) = copied(&["-f", "-d", "raid1", "-m", "raid1", "--rootdir-tar", s(&tar)], &pair);
    assert!(c2 > c, "RAID1 from tar: {c2} bytes copied");
    assert!(c2 + w2 >= 2 * stored, "{c2} + {w2} < 2 × {stored}");
    let (code, out, err) = btrs(&["scrub", "-R", s(&pair[0]), "--device", s(&pair[1])], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("mirror_mismatches: 0").count(), 2, "{out}");
    assert!(out.contains("data_bytes_scrubbed: ") && !out.contains("data_bytes_scrubbed: 0\n"), "{out}");
    let y = d.path().join("y");
    btrs_ok(&["extract", s(&pair[0]), "--device", s(&pair[1]), s(&y)]);
    assert_same_tree(&src, &y);
    if is_root() {
        common::interop::btrfs_check(&pair, &["--check-data-csum"]).expect("btrfs check of the pair");
    }
}

/// An archive's or a manifest's xattr that `btrs setfattr` (and the kernel's
/// setxattr) would refuse is refused by mkfs too, naming the member and the
/// xattr, before any image exists: names outside the kernel's namespaces, a
/// namespace with nothing after it, an ACL that does not parse, a default ACL
/// on a file, user.* on a symlink, a btrfs property the kernel does not know
/// or a value it refuses. (Before, mkfs stored them all and exited 0; the
/// kernel cannot read some of them back, extract warned "not applied".)
#[test]
fn xattrs_the_kernel_refuses_are_refused_by_mkfs() {
    use tar::EntryType as T;
    let d = tempfile::tempdir().unwrap();
    let acl_default_on_file: &[u8] =
        &[2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 4, 0, 0xff, 0xff, 0xff, 0xff];
    let cases: &[(&str, T, &str, &[u8], &str)] = &[
        ("f", T::Regular, "foo.bar", b"v", "not in a namespace the kernel has"),
        ("f", T::Regular, "system.foo", b"v", "not in a namespace the kernel has"),
        ("f", T::Regular, "user.", b"v", "nothing after the namespace"),
        ("f", T::Regular, "system.posix_acl_access", b"garbage", "system.posix_acl_access"),
        ("f", T::Regular, "system.posix_acl_default", acl_default_on_file, "only for a directory"),
        ("l", T::Symlink, "user.note", b"v", "user.* xattrs are only allowed"),
        ("f", T::Regular, "btrfs.compression", b"garbage", "use zlib, lzo, zstd"),
        ("f", T::Regular, "btrfs.nothing", b"zstd", "not a btrfs property"),
    ];
    for (i, (member, ty, name, value, says)) in cases.iter().enumerate() {
        let tar = d.path().join(format!("bad{i}.tar"));
        let mut b = tar::Builder::new(fs::File::create(&tar).unwrap());
        let key = format!("SCHILY.xattr.{name}");
        tar_member(&mut b, member, *ty, 0o644, if *ty == T::Symlink { b"target" } else { b"x" }, &[(&key, value)]);
        b.finish().unwrap();
        drop(b);
        let img = d.path().join(format!("bad{i}.img"));
        let (code, _, err) = btrs(&["mkfs", "-b", "128M", "--rootdir-tar", s(&tar), s(&img)], &[]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(says) && err.contains(member) && err.contains(name.trim_end_matches('.')), "{name}: {err}");
        assert!(!img.exists(), "{name}: mkfs left an image behind");
    }
    // The same through --manifest over a host tree.
    let root = d.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("f"), b"x").unwrap();
    for (name, value, says) in
        [("foo.bar", "v", "not in a namespace"), ("user.", "v", "nothing after"), ("btrfs.compression", "lz4", "use zlib")]
    {
        let manifest = d.path().join("manifest");
        fs::write(&manifest, format!("/f xattr {name}={value}\n")).unwrap();
        let img = d.path().join("m.img");
        let (code, _, err) = btrs(&["mkfs", "-b", "128M", "-r", s(&root), "--manifest", s(&manifest), s(&img)], &[]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains("--manifest") && err.contains(says), "{name}: {err}");
        assert!(!img.exists());
    }
    // What the kernel takes still goes in: a valid property, an empty one (no property).
    let tar = d.path().join("good.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar).unwrap());
    tar_member(&mut b, "z", T::Regular, 0o644, b"x", &[("SCHILY.xattr.btrfs.compression", b"zstd"), ("SCHILY.xattr.user.a", b"1")]);
    tar_member(&mut b, "n", T::Regular, 0o644, b"x", &[("SCHILY.xattr.btrfs.compression", b"")]);
    b.finish().unwrap();
    drop(b);
    let img = d.path().join("good.img");
    let (code, _, err) = btrs(&["mkfs", "-b", "128M", "--rootdir-tar", s(&tar), s(&img)], &[]);
    assert_eq!(code, 0, "{err}");
    check_clean(&img, "valid xattrs from an archive");
    let dump = btrs_ok(&["dump-tree", s(&img), "--tree", "fs"]);
    assert_eq!(dump.matches("name: btrfs.compression").count(), 1, "{dump}");
    assert!(dump.contains("name: user.a"), "{dump}");
}
