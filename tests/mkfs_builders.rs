//! `btrs mkfs` for image builders: ownership without root (`--all-root`,
//! `--owner-map`, `--manifest`), sizing (`--shrink`, `--slack`, exact `-b`,
//! `--print-size`) and SOURCE_DATE_EPOCH time handling. Kernel checks are gated
//! by `BTRS_INTEROP` (tests/common/interop.rs); the rootless runs need root to
//! drop to `nobody` and are skipped otherwise.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn btrs(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    run(Command::new(BIN).args(args).envs(envs.iter().copied()))
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
    let line = out
        .lines()
        .find(|l| l.split_whitespace().last() == Some(name))
        .unwrap_or_else(|| panic!("{name} not in ls of {dir}: {out}"));
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
    let (code, dev, err) = run(Command::new("losetup").args(["--find", "--show", "-o", &start.to_string(), "--sizelimit", &size.to_string()]).arg(&disk));
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

/// An entry the walk cannot read is named in the error, and no filesystem is
/// left behind. Needs an unprivileged user: root reads everything.
#[test]
fn unreadable_rootdir_entry_is_named() {
    let d = shared_tempdir();
    let src = d.path().join("src");
    make_tree(&src);
    let secret = src.join("etc/secret");
    fs::write(&secret, b"no peeking").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    let img = d.path().join("img");
    let (code, _, err) = btrs_rootless(&["mkfs", "-b", "256M", "-r", s(&src), s(&img)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("etc/secret"), "error must name the entry: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!has_valid_super(&img), "no valid filesystem left behind");
}
