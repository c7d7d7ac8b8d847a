//! Shared helpers of the attack tests: running the real binary, making images,
//! fingerprinting files so that "nothing changed" can be asserted.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_btrs");

/// Run `btrs ARGS`: (exit code, stdout, stderr). A death by signal is a test failure.
pub fn btrs(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run btrs");
    (code_of(&out, args), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Run `btrs ARGS` with `input` on standard input.
pub fn btrs_stdin(args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run btrs");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait btrs");
    let _ = feeder.join();
    (code_of(&out, args), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

pub fn code_of(out: &Output, args: &[&str]) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = out.status.signal() {
        panic!("btrs {args:?} died of signal {sig}; stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    let code = out.status.code().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "btrs {args:?} panicked: {err}");
    code
}

/// `btrs ARGS` must succeed; its stdout.
pub fn ok(args: &[&str]) -> Vec<u8> {
    let (code, out, err) = btrs(args);
    assert_eq!(code, 0, "btrs {args:?} failed: {err}");
    out
}

/// `btrs ARGS` must fail with `code`; its stderr.
pub fn fails(args: &[&str], code: i32) -> String {
    let (c, _, err) = btrs(args);
    assert_eq!(c, code, "btrs {args:?}: expected exit {code}, got {c}; stderr: {err}");
    err
}

/// `n` images of `size` (e.g. "128M") made by `btrs mkfs` with data and metadata in `profile`.
pub fn mkfs(dir: &Path, n: usize, size: &str, profile: &str, extra: &[&str]) -> Vec<PathBuf> {
    let imgs: Vec<PathBuf> = (1..=n).map(|i| dir.join(format!("dev{i}.img"))).collect();
    let mut args = vec!["mkfs", "-f", "-b", size, "-d", profile, "-m", profile];
    args.extend_from_slice(extra);
    args.extend(imgs.iter().map(|p| p.to_str().unwrap()));
    ok(&args);
    imgs
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic bytes.
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

/// sha256 of a file's bytes, with its length.
pub fn fingerprint(p: &Path) -> (u64, String) {
    let data = std::fs::read(p).unwrap_or_default();
    let h = Sha256::digest(&data);
    (data.len() as u64, h.iter().map(|b| format!("{b:02x}")).collect())
}

/// Fingerprints of several files, to compare before and after a refused command.
pub fn fingerprints(ps: &[PathBuf]) -> Vec<(u64, String)> {
    ps.iter().map(|p| fingerprint(p)).collect()
}

/// `btrfs check --readonly` (plus `extra`) must pass, when btrfs-progs is here
/// (a failure under BTRS_INTEROP=require when it is not).
pub fn progs_check(test: &str, imgs: &[PathBuf], extra: &[&str]) {
    if !crate::common::interop::progs_for(test, imgs.len() > 1) {
        return;
    }
    if let Err(e) = crate::common::interop::btrfs_check(imgs, extra) {
        panic!("{test}: btrfs check fails: {e}");
    }
}

/// Where copy `mirror` (0-based) of `logical` lives: (devid, physical), as `btrs` maps it,
/// found through the library (the chunk tree).
pub fn locate(imgs: &[PathBuf], logical: u64, mirror: usize) -> (u64, u64) {
    let opts = btrs::volumes::OpenOptions {
        image: imgs[0].clone(),
        devices: imgs.to_vec(),
        degraded: false,
        writable: false,
        alongside_writer: false,
    };
    let fs = btrs::Filesystem::open(&opts).unwrap();
    let p = fs.volume().locate(logical, mirror).unwrap();
    (p.devid, p.physical)
}

/// Image file of devid `devid` among `imgs` (mkfs numbers them in order).
pub fn image_of(imgs: &[PathBuf], devid: u64) -> &Path {
    &imgs[(devid - 1) as usize]
}

/// Edit the first item of tree `tree` whose key and data satisfy `pick`: `edit` gets the
/// whole tree block and the item's (start, length) in it; the block's checksum is then
/// resealed and the block written to every copy, so only the structure checks can catch it.
/// Returns the item's key.
pub fn patch_item(
    imgs: &[PathBuf],
    tree: u64,
    pick: impl Fn(&btrs::format::Key, &[u8]) -> bool,
    edit: impl FnOnce(&mut Vec<u8>, std::ops::Range<usize>),
) -> btrs::format::Key {
    use std::os::unix::fs::FileExt;
    let opts = btrs::volumes::OpenOptions { image: imgs[0].clone(), devices: imgs.to_vec(), ..Default::default() };
    let fs = btrs::Filesystem::open(&opts).unwrap();
    let root = fs.tree_root(tree).unwrap();
    let mut c = fs.reader.seek(&root, btrs::format::Key::MIN).unwrap();
    while let Some(it) = c.next_item().unwrap() {
        if !pick(&it.key, it.data()) {
            continue;
        }
        let logical = it.leaf.header.bytenr.get();
        let (off, size) = it.leaf.item_location(it.slot);
        let start = 101 + off as usize;
        let mut block = it.leaf.bytes().to_vec();
        edit(&mut block, start..start + size as usize);
        reseal(fs.csum, &mut block);
        for m in 0..fs.volume().num_copies(logical).unwrap() {
            let p = fs.volume().locate(logical, m).unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&fs.volume().devices[&p.devid].path).unwrap();
            f.write_all_at(&block, p.physical).unwrap();
            f.sync_all().unwrap();
        }
        return it.key;
    }
    panic!("no item picked in tree {tree}");
}

/// Recompute a tree block's checksum (bytes 32.. into the first csum-size bytes).
pub fn reseal(csum: btrs::format::CsumType, block: &mut [u8]) {
    let sum = csum.compute(&block[32..]);
    block[..32].fill(0);
    block[..csum.size()].copy_from_slice(&sum[..csum.size()]);
}
