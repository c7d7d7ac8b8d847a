#![allow(dead_code)]
pub mod fixtures;
pub mod interop;

/// Deterministic bytes for test files (xorshift from the seed).
pub fn pseudo(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The btrs binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_btrs");

/// The btrs binary as every test runs it: without the caller's
/// SOURCE_DATE_EPOCH (reproducible package builds run tests with one, and it
/// would clamp every time mkfs stores); tests that want it set it.
pub fn btrs_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(BIN);
    c.env_remove("SOURCE_DATE_EPOCH");
    c
}

/// Run btrs: (exit code, stdout, stderr).
pub fn btrs(args: &[&str]) -> (i32, String, String) {
    let out = btrs_cmd().args(args).output().expect("running btrs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Run btrs, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let (c, out, err) = btrs(args);
    assert_eq!(c, 0, "btrs {args:?}: {err}");
    out
}

/// A path as the &str a command line takes.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Scrub finds nothing: every copy verifies and the mirrors are identical.
pub fn scrubs_clean(img: &std::path::Path, what: &str) {
    let (c, out, err) = btrs(&["scrub", s(img), "--no-progress"]);
    assert_eq!(c, 0, "{what}: scrub: {out}{err}");
    assert!(out.contains("no errors found"), "{what}: {out}");
}

/// Each (path in the image, bytes) reads back as those bytes through `btrs
/// cat` (with `extra` arguments, e.g. --degraded).
pub fn reads_back(img: &std::path::Path, files: &[(String, Vec<u8>)], extra: &[&str], what: &str) {
    for (path, data) in files {
        let mut args = vec!["cat", s(img), path];
        args.extend_from_slice(extra);
        let out = btrs_cmd().args(&args).output().expect("running btrs");
        assert!(out.status.success(), "{what}: cat {path}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == *data, "{what}: {path} reads back different bytes");
    }
}

/// Judge a device set after a change: btrfs check, scrub, read back; then
/// (interop) the kernel mounts it whole, reads, writes, scrubs, runs a full
/// balance, and btrs reads the result.
pub fn judged(test: &str, set: &[std::path::PathBuf], files: &[(String, Vec<u8>)], what: &str) {
    if interop::progs_for(test, set.len() > 1) {
        interop::btrfs_check(set, &[]).unwrap_or_else(|e| panic!("{what}: btrfs check: {e}"));
    }
    scrubs_clean(&set[0], what);
    reads_back(&set[0], files, &[], what);
    if !interop::interop_enabled(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let m = interop::Mounted::mount(&mnt, set, "").unwrap_or_else(|e| panic!("{what}: mount without degraded: {e}"));
    for (path, data) in files {
        assert!(std::fs::read(mnt.join(&path[1..])).unwrap() == *data, "{what}: the kernel reads {path} differently");
    }
    let more = pseudo(3_000_000, 77);
    std::fs::write(mnt.join("more"), &more).unwrap();
    interop::must(&mut std::process::Command::new("sync"));
    interop::must(std::process::Command::new("btrfs").args(["scrub", "start", "-B"]).arg(&mnt));
    interop::must(std::process::Command::new("btrfs").args(["balance", "start", "--full-balance"]).arg(&mnt));
    interop::must(std::process::Command::new("btrfs").args(["scrub", "start", "-B"]).arg(&mnt));
    m.unmount().unwrap_or_else(|e| panic!("{what}: umount: {e}"));
    interop::btrfs_check(set, &[]).unwrap_or_else(|e| panic!("{what}: btrfs check after the kernel: {e}"));
    let mut all = files.to_vec();
    all.push(("/more".into(), more));
    reads_back(&set[0], &all, &[], &format!("{what}, after the kernel"));
    scrubs_clean(&set[0], &format!("{what}, after the kernel"));
}

/// The kernel writes a file onto a set (mounted whole, checked first).
pub fn kernel_writes(d: &std::path::Path, imgs: &[std::path::PathBuf], name: &str, seed: u64) -> (String, Vec<u8>) {
    let data = pseudo(12_000_000, seed);
    let mnt = d.join("kmnt");
    let m = interop::Mounted::mount(&mnt, imgs, "").unwrap_or_else(|e| panic!("mount to fill: {e}"));
    std::fs::write(mnt.join(name), &data).unwrap();
    m.unmount().unwrap();
    (format!("/{name}"), data)
}
