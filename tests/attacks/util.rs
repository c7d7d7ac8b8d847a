//! Shared helpers of the attack tests: running the real binary, making images,
//! fingerprinting files so that "nothing changed" can be asserted.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_btrs");

/// Run `btrs ARGS`: (exit code, stdout, stderr). A death by signal is a test failure.
pub fn btrs(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = btrs_cmd().args(args).stdin(Stdio::null()).output().expect("run btrs");
    (code_of(&out, args), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Run `btrs ARGS` with `input` on standard input.
pub fn btrs_stdin(args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    let mut child = btrs_cmd().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run btrs");
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

/// `btrs write IMG PATH --from` a host file holding `data` (in `dir`), plus `extra`.
pub fn write_file(dir: &Path, img: &Path, path: &str, data: &[u8], extra: &[&str]) {
    let src = dir.join("src.bin");
    std::fs::write(&src, data).unwrap();
    let mut args = vec!["write", s(img), path, "--from", s(&src)];
    args.extend_from_slice(extra);
    ok(&args);
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub use crate::common::{btrs_cmd, pseudo};

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
        accept_lagging: false,
        divergent_ok: false,
        replacement: None,
        added: Vec::new(),
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

/// File contents as they should read: path -> bytes.
pub type Model = std::collections::BTreeMap<String, Vec<u8>>;

/// Apply a write of `data` at `off` (after cutting the file at `off` when
/// `truncate`) to the model.
pub fn model_write(m: &mut Model, path: &str, off: usize, data: &[u8], truncate: bool) {
    let f = m.entry(path.to_string()).or_default();
    if truncate {
        f.truncate(off);
    }
    if f.len() < off + data.len() {
        f.resize(off + data.len(), 0);
    }
    f[off..off + data.len()].copy_from_slice(data);
}

/// `btrs write IMG PATH --offset OFF [EXTRA...]` of `data` (through a host file in `dir`),
/// and the same change in the model.
pub fn write_at(dir: &Path, img: &Path, m: &mut Model, path: &str, off: usize, data: &[u8], extra: &[&str]) {
    let src = dir.join("write-src.bin");
    std::fs::write(&src, data).unwrap();
    let off_s = off.to_string();
    let mut args = vec!["write", s(img), path, "--from", s(&src), "--offset", &off_s, "--quiet"];
    args.extend_from_slice(extra);
    ok(&args);
    model_write(m, path, off, data, extra.contains(&"--truncate"));
}

/// Cut (or extend with zeros) `path` to `size` bytes with `btrs write --truncate`.
pub fn truncate_to(img: &Path, m: &mut Model, path: &str, size: usize) {
    let size_s = size.to_string();
    ok(&["write", s(img), path, "--from", "/dev/null", "--offset", &size_s, "--truncate", "--quiet"]);
    m.get_mut(path).unwrap().resize(size, 0);
}

/// Every model file reads back through `btrs cat` with the model's bytes.
pub fn btrs_reads_model(img: &Path, m: &Model, what: &str) {
    for (p, want) in m {
        let got = ok(&["cat", s(img), p]);
        assert!(
            got == *want,
            "{what}: btrs cat {p}: {} bytes, want {} (first difference at {:?})",
            got.len(),
            want.len(),
            first_diff(&got, want)
        );
    }
}

pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or(if a.len() != b.len() { Some(a.len().min(b.len())) } else { None })
}

/// Compressible bytes: words of a small vocabulary in a pseudo-random order.
pub fn text(n: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "extent",
        "leaf",
        "node",
        "checksum",
        "mirror",
        "stripe",
        "chunk",
        "inode",
        "subvolume",
        "snapshot",
        "reflink",
        "scrub",
        "balance",
        "transaction",
        "generation",
        "compression",
    ];
    let r = pseudo(n / 4 + 16, seed);
    let mut out = Vec::with_capacity(n + 16);
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(WORDS[(r[i % r.len()] % 16) as usize].as_bytes());
        out.push(if r[(i + 1) % r.len()] % 9 == 0 { b'\n' } else { b' ' });
        i += 1;
    }
    out.truncate(n);
    out
}

/// `btrfs inspect-internal dump-tree -t TREE` of one image.
pub fn progs_dump(img: &Path, tree: &str) -> String {
    crate::common::interop::must(Command::new("btrfs").args(["inspect-internal", "dump-tree", "-t", tree]).arg(img))
}

/// The judges after a step: `btrfs check --readonly --check-data-csum` and
/// btrs reading back the model's bytes.
pub fn judged(test: &str, imgs: &[PathBuf], m: &Model, what: &str) {
    progs_check(&format!("{test}: {what}"), imgs, &["--check-data-csum"]);
    btrs_reads_model(&imgs[0], m, what);
}

/// The kernel as judge: mount (after `btrfs check`), read every model file,
/// let `more` write through the mount (and record it in the model), scrub
/// (`btrfs scrub start -B`, no errors), unmount, `btrfs check
/// --check-data-csum` again and btrs reads the model. False (after saying
/// why) when the kernel cannot be used here.
pub fn kernel_judge(test: &str, dir: &Path, imgs: &[PathBuf], m: &mut Model, more: impl FnOnce(&Path, &mut Model)) -> bool {
    use crate::common::interop::{interop_enabled, Mounted};
    if !interop_enabled(test) {
        return false;
    }
    let mnt = dir.join("mnt");
    let mounted = Mounted::mount(&mnt, imgs, "").unwrap_or_else(|e| panic!("{test}: mount: {e}"));
    for (p, want) in m.iter() {
        let got = std::fs::read(mnt.join(p.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{test}: kernel reads {p}: {e}"));
        assert!(
            got == *want,
            "{test}: the kernel reads other bytes in {p} ({} vs {}, first difference at {:?})",
            got.len(),
            want.len(),
            first_diff(&got, want)
        );
    }
    more(&mnt, m);
    crate::common::interop::must(Command::new("sync").arg("-f").arg(&mnt));
    let out = Command::new("btrfs").args(["scrub", "start", "-B"]).arg(&mnt).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("no errors found"), "{test}: kernel scrub: {text}");
    for (p, want) in m.iter() {
        let got = std::fs::read(mnt.join(p.trim_start_matches('/'))).unwrap();
        assert!(got == *want, "{test}: the kernel reads other bytes in {p} after its writes");
    }
    mounted.unmount().unwrap_or_else(|e| panic!("{test}: umount: {e}"));
    judged(test, imgs, m, "after the kernel");
    true
}

/// `mkfs.btrfs -q [EXTRA...]` on one new image of `size` bytes in `dir`.
pub fn mkfs_progs(dir: &Path, size: u64, extra: &[&str]) -> Vec<PathBuf> {
    let img = dir.join("progs.img");
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    crate::common::interop::must(Command::new("mkfs.btrfs").arg("-q").args(extra).arg(&img));
    vec![img]
}
