//! Items the kernel's tree-checker rejects, asked for through the command
//! line: names, xattrs, symlink targets and file sizes beyond the kernel's
//! limits are refused before anything is written (images byte-identical);
//! requests exactly at the limits are accepted and pass `btrfs check`.
//! Images made by mkfs.btrfs --rootdir (symlink targets stored with a NUL)
//! read back with their exact targets.

use std::path::{Path, PathBuf};

use crate::util::*;

/// One 64 MiB image with `nodesize` nodes, a file /f and a directory /d.
fn image(dir: &Path, nodesize: &str) -> Vec<PathBuf> {
    let imgs = mkfs(dir, 1, "128M", "single", &["-n", nodesize]);
    let src = dir.join("f.src");
    std::fs::write(&src, b"hello\n").unwrap();
    ok(&["put", s(&imgs[0]), s(&src), "/f"]);
    ok(&["mkdir", s(&imgs[0]), "/d"]);
    imgs
}

/// `btrs ARGS` is refused with exit 1, a message holding `says`, and the
/// images unchanged to the byte.
fn refused(imgs: &[PathBuf], args: &[&str], says: &str) {
    let before = fingerprints(imgs);
    let err = fails(args, 1);
    assert!(err.contains(says), "btrs {:?}: message {err:?} does not say {says:?}", &args[..1]);
    assert!(!err.contains("internal error"), "refused late, by the tree-checker: {err}");
    assert_eq!(fingerprints(imgs), before, "btrs {:?} changed the images", &args[..1]);
}

fn x(n: usize) -> String {
    "x".repeat(n)
}

#[test]
fn setfattr_refuses_names_and_sizes_the_kernel_rejects() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = image(tmp.path(), "4096");
    let img = s(&imgs[0]);
    refused(&imgs, &["setfattr", img, "/f", "-n", "", "-v", "v"], "empty xattr name");
    let long = format!("user.{}", x(300));
    refused(&imgs, &["setfattr", img, "/f", "-n", &long, "-v", "v"], "xattr name of 305 bytes: at most 255");
    // Name and value: at most nodesize - 101 - 25 - 30 = 3940 (BTRFS_MAX_XATTR_SIZE).
    let v = x(3940 - 6 + 1);
    refused(&imgs, &["setfattr", img, "/f", "-n", "user.a", "-v", &v], "3941 bytes: at most 3940");
    ok(&["setfattr", img, "/f", "-n", "user.a", "-v", &v[1..]]);
    ok(&["setfattr", img, "/d", "-n", &format!("user.{}", x(250)), "-v", "1"]);
    progs_check("setfattr_refuses_names_and_sizes_the_kernel_rejects", &imgs, &[]);
}

/// Only the namespaces the kernel has, and only ACLs it takes (setfattr stored
/// `system.posix_acl_access` "garbage", `system.foo`, `foo.bar` and `user.` on
/// fa2b09d: an attacker's pass).
#[test]
fn setfattr_refuses_namespaces_and_acls_the_kernel_rejects() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = image(tmp.path(), "16384");
    let img = s(&imgs[0]);
    for (name, why) in [
        ("system.posix_acl_access", "not a version 2 POSIX ACL"),
        ("system.posix_acl_default", "not a version 2 POSIX ACL"),
        ("system.foo", "not in a namespace the kernel has"),
        ("foo.bar", "not in a namespace the kernel has"),
        ("user.", "nothing after the namespace"),
        ("security.", "nothing after the namespace"),
    ] {
        refused(&imgs, &["setfattr", img, "/f", "-n", name, "-v", "garbage"], why);
    }
    for name in ["user.u", "trusted.t", "security.s"] {
        ok(&["setfattr", img, "/f", "-n", name, "-v", "v"]);
    }
    progs_check("setfattr_refuses_namespaces_and_acls_the_kernel_rejects", &imgs, &[]);
}

#[test]
fn xattr_limit_on_16k_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = image(tmp.path(), "16384");
    let img = s(&imgs[0]);
    let v = x(16228 - 6 + 1);
    refused(&imgs, &["setfattr", img, "/f", "-n", "user.a", "-v", &v], "16229 bytes: at most 16228");
    ok(&["setfattr", img, "/f", "-n", "user.a", "-v", &v[1..]]);
    progs_check("xattr_limit_on_16k_nodes", &imgs, &[]);
}

#[test]
fn symlink_targets_up_to_the_kernels_limit() {
    let tmp = tempfile::tempdir().unwrap();
    // 4K nodes: BTRFS_MAX_INLINE_DATA_SIZE = 4096 - 101 - 25 - 21 = 3949.
    // 16K nodes: below a sector, 4095.
    for (ns, max) in [("4096", 3949usize), ("16384", 4095)] {
        let dir = tmp.path().join(ns);
        std::fs::create_dir(&dir).unwrap();
        let imgs = image(&dir, ns);
        let img = s(&imgs[0]);
        refused(&imgs, &["ln", "-s", img, &x(max + 1), "/l"], &format!("symlink target of {} bytes: at most {max}", max + 1));
        ok(&["ln", "-s", img, &x(max), "/l"]);
        let out = String::from_utf8(ok(&["ls", "-l", img, "/"])).unwrap();
        assert!(out.contains(&format!("l -> {}\n", x(max))), "{ns}: {out}");
        progs_check("symlink_targets_up_to_the_kernels_limit", &imgs, &[]);
    }
}

#[test]
fn names_longer_than_255_bytes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = image(tmp.path(), "4096");
    let img = s(&imgs[0]);
    let long = format!("/{}", x(256));
    let says = "of 256 bytes: at most 255";
    refused(&imgs, &["mkdir", img, &long], says);
    refused(&imgs, &["mkdir", "-p", img, &format!("/d/{}/e", x(256))], says);
    refused(&imgs, &["mv", img, "/f", &long], says);
    refused(&imgs, &["ln", img, "/f", &long], says);
    refused(&imgs, &["ln", "-s", img, "t", &long], says);
    let src = tmp.path().join("data");
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    refused(&imgs, &["put", img, s(&src), &long], says);
    refused(&imgs, &["write", img, &long, "--from", s(&src)], says);
    // 255 is fine.
    ok(&["mkdir", img, &format!("/{}", x(255))]);
    progs_check("names_longer_than_255_bytes_are_refused", &imgs, &[]);
}

#[test]
fn put_refuses_a_symlink_target_too_long_before_writing_data() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = image(tmp.path(), "4096");
    let img = s(&imgs[0]);
    // A tree whose data comes first and whose symlink is beyond 4K nodes' limit.
    let src = tmp.path().join("tree");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a-data"), vec![1u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(x(3950), src.join("z-link")).unwrap();
    refused(&imgs, &["put", img, s(&src), "/tree"], "symlink target of 3950 bytes: at most 3949");
}

#[test]
fn writes_past_the_largest_file_size_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = image(tmp.path(), "4096");
    let img = s(&imgs[0]);
    let src = tmp.path().join("ten");
    std::fs::write(&src, b"0123456789").unwrap();
    let max = i64::MAX as u64;
    let off = (max - 4).to_string();
    refused(&imgs, &["write", img, "/big", "--offset", &off, "--from", s(&src)], "past the largest file size");
    // From standard input (size unknown): refused before the step is written.
    let before = fingerprints(&imgs);
    let (code, _, err) = btrs_stdin(&["write", img, "/big", "--offset", &off], b"0123456789");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("past the largest file size"), "{err}");
    assert_eq!(fingerprints(&imgs), before);
    // An offset past it is a usage error (exit 2), named by the option.
    let before = fingerprints(&imgs);
    let err = fails(&["write", img, "/f", "--truncate", "--offset", &(max + 1).to_string(), "--from", "/dev/null"], 2);
    assert!(err.contains("--offset"), "{err}");
    assert_eq!(fingerprints(&imgs), before);
    // Ending exactly at 2^63-1 is what the kernel allows.
    let four = tmp.path().join("four");
    std::fs::write(&four, b"0123").unwrap();
    ok(&["write", img, "/big", "--offset", &off, "--from", s(&four)]);
    let out = String::from_utf8(ok(&["ls", "-l", img, "/big"])).unwrap();
    assert!(out.contains(&max.to_string()), "{out}");
    progs_check("writes_past_the_largest_file_size_are_refused", &imgs, &[]);
}

#[test]
fn tar_member_names_longer_than_255_bytes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("x"), b"x").unwrap();
    // GNU tar stores the renamed member with a long-name record.
    let tar = tmp.path().join("a.tar");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("--transform")
        .arg(format!("s,^x$,{},", x(256)))
        .arg("-cf")
        .arg(&tar)
        .arg("x")
        .status();
    if !st.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no GNU tar");
        return;
    }
    let img = tmp.path().join("img");
    let err = fails(&["mkfs", "-f", "-b", "128M", "--rootdir-tar", s(&tar), s(&img)], 1);
    assert!(err.contains("of 256 bytes: at most 255"), "{err}");
}

/// mkfs.btrfs --rootdir stores a symlink's target with a trailing NUL in its
/// inline extent (inode size 24, extent 25): btrs shows and extracts the
/// target without it, and the checker accepts every block of the image.
#[test]
fn mkfs_btrfs_rootdir_symlinks_read_back_exactly() {
    if !crate::common::interop::progs_for("mkfs_btrfs_rootdir_symlinks_read_back_exactly", false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/file"), b"data").unwrap();
    let targets = [("rel", "sub/file".to_string()), ("abs", "/etc/hostname-that-is-24".to_string()), ("long", x(1000))];
    for (name, t) in &targets {
        std::os::unix::fs::symlink(t, src.join(name)).unwrap();
    }
    let img = tmp.path().join("img");
    std::fs::write(&img, vec![0u8; 0]).unwrap();
    let out = std::process::Command::new("mkfs.btrfs").args(["-f", "-q", "-b", "128M", "--rootdir"]).arg(&src).arg(&img).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ls = String::from_utf8(ok(&["ls", "-l", s(&img), "/"])).unwrap();
    for (name, t) in &targets {
        assert!(ls.contains(&format!("{name} -> {t}\n")), "{ls}");
    }
    assert!(!ls.contains('\0'), "{ls:?}");
    let dest = tmp.path().join("out");
    ok(&["extract", s(&img), s(&dest)]);
    for (name, t) in &targets {
        assert_eq!(std::fs::read_link(dest.join(name)).unwrap(), PathBuf::from(t), "{name}");
    }
    assert_eq!(std::fs::read(dest.join("sub/file")).unwrap(), b"data");
    let opts = btrs::volumes::OpenOptions { image: img.clone(), devices: vec![img.clone()], ..Default::default() };
    let fs = btrs::Filesystem::open(&opts).unwrap();
    assert_eq!(btrs::fs::check::check_filesystem(&fs).unwrap(), Vec::<String>::new());
}

/// The kernel mounts an image with an xattr and a symlink at its limits on
/// 4K nodes and reads both back as written.
#[test]
fn kernel_reads_items_at_the_limits() {
    use crate::common::interop;
    if !interop::interop_enabled("kernel_reads_items_at_the_limits") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = image(tmp.path(), "4096");
    let img = s(&imgs[0]);
    let value = x(3940 - 6);
    ok(&["setfattr", img, "/f", "-n", "user.a", "-v", &value]);
    ok(&["ln", "-s", img, &x(3949), "/l"]);
    let mnt = tmp.path().join("mnt");
    let m = interop::Mounted::mount(&mnt, &imgs, "ro").unwrap();
    assert!(std::fs::read_link(mnt.join("l")).unwrap() == std::path::Path::new(&x(3949)), "the kernel reads another target");
    let got = std::process::Command::new("getfattr")
        .args(["--absolute-names", "--only-values", "-n", "user.a"])
        .arg(mnt.join("f"))
        .output()
        .unwrap();
    assert!(
        got.status.success() && got.stdout == value.as_bytes(),
        "getfattr: {} bytes; {}",
        got.stdout.len(),
        String::from_utf8_lossy(&got.stderr)
    );
    m.unmount().unwrap();
}
