//! Limits: a full disk or a file size limit mid-command, hostile numbers on
//! the command line, trees deep enough to overflow a recursive walk, offsets
//! that wrap, and a reader that closes the pipe early. The promise: every
//! such command ends promptly, without a panic or a signal, with a clear
//! error (or works), and leaves the files it was refused alone.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Longest any of these commands may take before it counts as hung.
const HANG: Duration = Duration::from_secs(60);

/// Run `cmd` to its end, killed and failed after [`HANG`]; a death by signal
/// or a panic message fails too. Returns the output and how long it took.
fn bounded(cmd: &mut Command, what: &str) -> (Output, Duration) {
    let t0 = Instant::now();
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    // Drain both pipes on threads so a chatty child never blocks on them.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if t0.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {HANG:?} (hung); killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Output { status, stdout: out_t.join().unwrap(), stderr: err_t.join().unwrap() };
    let took = t0.elapsed();
    use std::os::unix::process::ExitStatusExt;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.signal().is_none(), "{what}: died of signal {:?}; stderr: {err}", out.status.signal());
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    (out, took)
}

/// `btrs ARGS` under a file size limit of `limit_kib` KiB (bash's `ulimit -f`
/// unit), SIGXFSZ left at its default: btrs itself must turn it into EFBIG.
fn btrs_fsize_limited(args: &[&str], limit_kib: u64) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c").arg(format!("ulimit -f {limit_kib}; exec \"$0\" \"$@\"")).arg(BIN).args(args);
    c
}

/// The primary superblock's bytes: what every commit rewrites.
fn superblock(img: &Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; 4096];
    std::fs::File::open(img).unwrap().read_exact_at(&mut b, 65536).unwrap();
    b
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A host tree of `files` files of `each` random (incompressible) bytes:
/// enough data-pass jobs that a reader running ahead fills every queue.
fn data_tree(dir: &Path, files: usize, each: usize) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..files {
        std::fs::write(src.join(format!("f{i:03}")), pseudo(each, i as u64 + 1)).unwrap();
    }
    src
}

/// A small tmpfs mounted on a directory of its own, unmounted on drop
/// (panics included). None, after saying why, when mounting is not
/// possible here (not root); a failure under BTRS_INTEROP=require.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(test: &str, dir: &Path, size: &str) -> Option<Tmpfs> {
        let why = if !crate::common::interop::is_root() {
            "mounting a tmpfs needs root".to_string()
        } else {
            std::fs::create_dir_all(dir).unwrap();
            let o = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output().unwrap();
            if o.status.success() {
                return Some(Tmpfs { dir: dir.to_path_buf() });
            }
            format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&o.stderr))
        };
        assert_ne!(std::env::var("BTRS_INTEROP").as_deref(), Ok("require"), "{test}: BTRS_INTEROP=require but {why}");
        eprintln!("skipped: {test}: {why}");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// `mkfs -r` whose image writes fail with EFBIG (a file size limit) part way
/// through the threaded data pass ends at once with the error, whatever the
/// thread count. It hung with two or more threads: the reader waited forever
/// on a full job queue after the workers had quit.
#[test]
fn mkfs_rootdir_under_a_file_size_limit_fails_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = data_tree(tmp.path(), 24, 2 << 20);
    for threads in ["1", "2", "8"] {
        let img = tmp.path().join(format!("t{threads}.img"));
        // The image exists at full size, so only writes past the limit fail
        // (the data chunk lies far above 32 MiB).
        std::fs::File::create(&img).unwrap().set_len(300 << 20).unwrap();
        let (out, took) = bounded(
            &mut btrs_fsize_limited(&["mkfs", "-f", "--threads", threads, "-r", s(&src), s(&img)], 32 << 10),
            &format!("mkfs -r --threads {threads} under ulimit -f"),
        );
        let err = stderr(&out);
        assert_eq!(code(&out), 1, "--threads {threads}: {err}");
        assert!(err.contains("File too large"), "--threads {threads}: {err}");
        eprintln!("--threads {threads}: failed in {took:?}: {}", err.trim());
    }
}

/// `mkfs -r` into an image on a filesystem that fills up (ENOSPC) part way
/// through the data pass: a prompt error for any thread count, and the image
/// it created is gone again.
#[test]
fn mkfs_rootdir_on_a_full_disk_fails_promptly() {
    let test = "mkfs_rootdir_on_a_full_disk_fails_promptly";
    let tmp = tempfile::tempdir().unwrap();
    let Some(small) = Tmpfs::mount(test, &tmp.path().join("small"), "20m") else { return };
    let src = data_tree(tmp.path(), 24, 2 << 20);
    for threads in ["1", "2", "8"] {
        let img = small.dir.join(format!("t{threads}.img"));
        let (out, took) = bounded(
            Command::new(BIN).args(["mkfs", "-b", "300M", "--threads", threads, "-r", s(&src), s(&img)]),
            &format!("mkfs -r --threads {threads} on a full tmpfs"),
        );
        let err = stderr(&out);
        assert_eq!(code(&out), 1, "--threads {threads}: {err}");
        assert!(err.contains("No space left"), "--threads {threads}: {err}");
        assert!(!img.exists(), "--threads {threads}: the failed mkfs left its new image behind");
        eprintln!("--threads {threads}: failed in {took:?}: {}", err.trim());
    }
}

/// `btrs write` (buffered and direct, whose bios run on device threads)
/// into images on a filesystem that fills up: a prompt error, and nothing
/// committed (btrfs check passes, the file is not there).
#[test]
fn write_on_a_full_disk_fails_promptly_and_commits_nothing() {
    let test = "write_on_a_full_disk_fails_promptly_and_commits_nothing";
    let tmp = tempfile::tempdir().unwrap();
    let Some(small) = Tmpfs::mount(test, &tmp.path().join("small"), "24m") else { return };
    let input = tmp.path().join("input");
    std::fs::write(&input, pseudo(40 << 20, 7)).unwrap();
    for mode in [&[][..], &["--direct"][..]] {
        let imgs = mkfs(&small.dir, 2, "256M", "raid1", &[]);
        let mut args = vec!["write", s(&imgs[0]), "/big", "--from", s(&input), "--quiet"];
        args.extend_from_slice(mode);
        let (out, took) = bounded(Command::new(BIN).args(&args), &format!("write {mode:?} on a full tmpfs"));
        let err = stderr(&out);
        assert_eq!(code(&out), 1, "{mode:?}: {err}");
        assert!(err.contains("No space left"), "{mode:?}: {err}");
        eprintln!("{mode:?}: failed in {took:?}: {}", err.trim());
        let ls = ok(&["ls", s(&imgs[0]), "/"]);
        assert!(!String::from_utf8_lossy(&ls).contains("big"), "{mode:?}: the failed write was committed");
        progs_check(test, &imgs, &[]);
        for p in &imgs {
            std::fs::remove_file(p).unwrap();
        }
    }
}

/// `btrs write --direct` from an endless standard input whose image writes
/// fail (file size limit): the first failed bio stops the write; it does not
/// read on until a commit is due.
#[test]
fn direct_write_from_endless_stdin_stops_at_the_first_failed_bio() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs(tmp.path(), 1, "512M", "single", &[]);
    for mode in [&[][..], &["--direct"][..]] {
        let mut args = vec!["write", s(&imgs[0]), "/endless", "--quiet"];
        args.extend_from_slice(mode);
        let t0 = Instant::now();
        let mut child = btrs_fsize_limited(&args, 8 << 10).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            let block = vec![0x5au8; 1 << 20];
            let mut sent = 0u64;
            // Until btrs stops reading (EPIPE), or 4 GiB: far past a commit.
            while sent < 4 << 30 && stdin.write_all(&block).is_ok() {
                sent += block.len() as u64;
            }
            sent
        });
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > HANG {
                let _ = child.kill();
                panic!("write {mode:?} from endless stdin still running after {HANG:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let sent = feeder.join().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert!(status.signal().is_none(), "{mode:?}: signal {:?}: {err}", status.signal());
        assert_eq!(status.code(), Some(1), "{mode:?}: {err}");
        assert!(err.contains("File too large"), "{mode:?}: {err}");
        // A commit is due after 1 GiB: the write must have stopped well before.
        assert!(sent < 512 << 20, "{mode:?}: {} MiB read before stopping", sent >> 20);
        eprintln!("{mode:?}: stopped after {} MiB of input in {:?}", sent >> 20, t0.elapsed());
    }
    // Nothing committed: only free space was written, so the superblocks and
    // trees are as they were (the free space itself may hold the new bytes).
    let after = ok(&["ls", s(&imgs[0]), "/"]);
    assert!(after.is_empty(), "{}", String::from_utf8_lossy(&after));
}

// ---------------------------------------------------------------------------
// Hostile numbers on the command line.

/// Every numeric option with hostile values (too large for its type or for
/// what it means, negative, zero, a size whose suffix overflows): a clear
/// error with exit 2 (clap's usage errors) or 1 (btrs's), or it works — never
/// a panic, a signal or a hang. A refused command leaves the image alone and
/// leaves no new image behind. `--threads 1000000` panicked; a `--max-bio`
/// whose suffix overflowed wrapped around.
#[test]
fn hostile_numbers_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = mkfs(d, 1, "256M", "single", &[]).remove(0);
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), pseudo(100_000, 3)).unwrap();
    let four_k = d.join("4k");
    std::fs::write(&four_k, pseudo(4096, 4)).unwrap();
    let (img_s, src_s, four_k_s) = (s(&img).to_string(), s(&src).to_string(), s(&four_k).to_string());
    // (arguments, exit code, what stderr must say); NEW is a path no file is at.
    #[rustfmt::skip]
    let cases: &[(&[&str], i32, &str)] = &[
        // mkfs --threads
        (&["mkfs", "--threads", "1000000", "-b", "256M", "NEW"], 2, "at most 1024 threads"),
        (&["mkfs", "--threads", "18446744073709551616", "-b", "256M", "NEW"], 2, "not a thread count"),
        (&["mkfs", "--threads=-1", "-b", "256M", "NEW"], 2, "not a thread count"),
        (&["mkfs", "--threads", "1024", "-b", "256M", "-r", "SRC", "NEW"], 0, ""),
        (&["mkfs", "--threads", "0", "-b", "256M", "-r", "SRC", "NEW"], 0, ""),
        // mkfs -b / --size
        (&["mkfs", "-b", "18446744073709551616", "NEW"], 1, "bad size"),
        (&["mkfs", "-b", "16E", "NEW"], 1, "too large"),
        (&["mkfs", "-b", "17179869184G", "NEW"], 1, "too large"),
        (&["mkfs", "-b", "15E", "NEW"], 1, "largest file size"),
        (&["mkfs", "-b", "9223372036854775808", "NEW"], 1, "largest file size"),
        (&["mkfs", "-b", "0", "NEW"], 1, "too small"),
        (&["mkfs", "--size=-5M", "NEW"], 1, "bad size"),
        (&["mkfs", "-b", "1.5G", "NEW"], 1, "bad size"),
        (&["mkfs", "-b", "5X", "NEW"], 1, "unknown suffix"),
        // mkfs --offset
        (&["mkfs", "--offset", "18446744073709547520", "-b", "100M", "NEW"], 1, "largest file size"),
        (&["mkfs", "--offset", "9223372036854771712", "-b", "100M", "NEW"], 1, "largest file size"),
        (&["mkfs", "--offset", "18446744073709551616", "-b", "100M", "NEW"], 1, "bad size"),
        (&["mkfs", "--offset=-4096", "-b", "100M", "NEW"], 1, "bad size"),
        (&["mkfs", "--offset", "16E", "-b", "100M", "NEW"], 1, "too large"),
        (&["mkfs", "--offset", "1", "-b", "100M", "NEW"], 1, "multiple of the sectorsize"),
        // mkfs -n / -s
        (&["mkfs", "-n", "0", "-b", "256M", "NEW"], 1, "nodesize 0"),
        (&["mkfs", "-n", "4294967296", "-b", "256M", "NEW"], 1, "too large"),
        (&["mkfs", "-n", "18446744073709551616", "-b", "256M", "NEW"], 1, "bad size"),
        (&["mkfs", "--nodesize", "128K", "-b", "256M", "NEW"], 1, "power of two between"),
        (&["mkfs", "--nodesize", "12K", "-b", "256M", "NEW"], 1, "power of two between"),
        (&["mkfs", "-s", "0", "-b", "256M", "NEW"], 1, "sectorsize 0"),
        (&["mkfs", "--sectorsize", "4294967296", "-b", "256M", "NEW"], 1, "too large"),
        // mkfs --slack, --compress levels, --owner-map
        (&["mkfs", "--shrink", "--slack", "7E", "-r", "SRC", "NEW"], 1, "at most"),
        (&["mkfs", "--shrink", "--slack", "18446744073709551616", "-r", "SRC", "NEW"], 1, "bad size"),
        (&["mkfs", "--shrink", "--slack", "4294967296%", "-r", "SRC", "NEW"], 1, "bad --slack"),
        (&["mkfs", "--shrink", "--slack", "0", "-r", "SRC", "NEW"], 0, ""),
        (&["mkfs", "-b", "256M", "--compress", "zlib:10", "-r", "SRC", "NEW"], 1, "zlib level"),
        (&["mkfs", "-b", "256M", "--compress", "zstd:2147483648", "-r", "SRC", "NEW"], 1, "no such path"),
        (&["mkfs", "-b", "256M", "--owner-map", "0:4294967295:2", "-r", "SRC", "NEW"], 1, "owner-map"),
        (&["mkfs", "-b", "256M", "--owner-map", "0:0:18446744073709551616", "-r", "SRC", "NEW"], 1, "owner-map"),
        // scrub
        (&["scrub", "--threads", "1000000", "IMG"], 2, "at most 1024 threads"),
        (&["scrub", "--threads", "1024", "IMG"], 0, ""),
        (&["scrub", "--prefer-mirror", "0", "IMG"], 2, "--prefer-mirror"),
        (&["scrub", "--prefer-mirror", "5", "IMG"], 2, "--prefer-mirror"),
        (&["scrub", "--prefer-mirror", "18446744073709551616", "IMG"], 2, "--prefer-mirror"),
        (&["scrub", "--prefer-mirror", "4", "IMG"], 0, ""),
        // fixture --seed
        (&["fixture", "list", "--seed", "18446744073709551616"], 2, "--seed"),
        (&["fixture", "list", "--seed=-1"], 2, "--seed"),
        (&["fixture", "raid1-clean", "NEW", "--seed", "18446744073709551615"], 0, ""),
        // write --offset, --max-bio, --commit-every
        (&["write", "IMG", "/f", "--from", "4K", "--offset", "18446744073709551615"], 2, "--offset"),
        (&["write", "IMG", "/f", "--from", "4K", "--offset", "9223372036854775808"], 2, "--offset"),
        (&["write", "IMG", "/f", "--from", "4K", "--offset=-1"], 2, "--offset"),
        (&["write", "IMG", "/f", "--from", "4K", "--offset", "9223372036854775807"], 1, "larger than"),
        (&["write", "IMG", "/f", "--from", "4K", "--offset", "9223372036854771712", "--direct"], 1, "larger than"),
        (&["write", "IMG", "/far", "--from", "4K", "--offset", "9223372036854767616"], 0, ""),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio", "0"], 1, "at least 4K"),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio", "18014398509481984K"], 1, "at most 1G"),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio", "18446744073709551616"], 1, "bad size"),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio", "2G"], 1, "at most 1G"),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio=-4K"], 1, "bad size"),
        (&["write", "IMG", "/f", "--from", "4K", "--commit-every", "16E"], 1, "too large"),
        (&["write", "IMG", "/f", "--from", "4K", "--commit-every=-1"], 1, "bad size"),
        (&["write", "IMG", "/f0", "--from", "4K", "--commit-every", "0"], 0, ""),
        (&["write", "IMG", "/f15", "--from", "4K", "--commit-every", "15E", "--direct", "--max-bio", "1G"], 0, ""),
        // dump-tree -t
        (&["dump-tree", "-t", "18446744073709551616", "IMG"], 1, "unknown tree"),
        (&["dump-tree", "-t=-1", "IMG"], 1, "no ROOT_ITEM"),
        (&["dump-tree", "-t", "0", "IMG"], 1, "no ROOT_ITEM"),
    ];
    for (i, (args, want, needle)) in cases.iter().enumerate() {
        let new = d.join(format!("new{i}"));
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                "NEW" => s(&new).to_string(),
                "IMG" => img_s.clone(),
                "SRC" => src_s.clone(),
                "4K" => four_k_s.clone(),
                a => a.to_string(),
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The superblock: a refused command commits nothing (hashing the
        // whole image for each of these cases would take minutes).
        let before = superblock(&img);
        let (out, _) = bounded(Command::new(BIN).args(&args), &format!("{args:?}"));
        let err = stderr(&out);
        assert_eq!(code(&out), *want, "{args:?}: {err}");
        if *want != 0 {
            assert!(err.contains(needle), "{args:?}: stderr lacks {needle:?}: {err}");
            assert!(err.lines().count() <= 6, "{args:?}: not a short message: {err}");
            assert_eq!(superblock(&img), before, "{args:?}: a refused command changed the image");
            assert!(!new.exists(), "{args:?}: a refused command left {} behind", new.display());
        } else if args[0] == "mkfs" {
            progs_check("hostile_numbers_fail_cleanly", &[new.clone()], &[]);
        }
        if new.is_dir() {
            std::fs::remove_dir_all(&new).unwrap();
        } else {
            let _ = std::fs::remove_file(&new);
        }
    }
    // The writes that worked left a filesystem btrfs check accepts.
    progs_check("hostile_numbers_fail_cleanly", &[img.clone()], &[]);
}

// ---------------------------------------------------------------------------
// Offsets and sizes that wrap; existing files left alone.

/// `mkfs` with hostile --offset / --size on an existing ext4 image, without
/// -f: refused, and the file keeps its length and every byte. An offset of
/// 2^64-4096 with -b 100M wrapped around and truncated the ext4 image to
/// 100 MiB - 4 KiB; --offset 4096 wrote a btrfs into the middle of it.
#[test]
fn mkfs_refuses_wrapping_offsets_on_an_ext4_image() {
    let test = "mkfs_refuses_wrapping_offsets_on_an_ext4_image";
    let have = Command::new("mkfs.ext4").arg("-V").output().is_ok_and(|o| o.status.success());
    if !have {
        assert_ne!(std::env::var("BTRS_INTEROP").as_deref(), Ok("require"), "{test}: BTRS_INTEROP=require but mkfs.ext4 is missing (e2fsprogs)");
        eprintln!("skipped: {test}: mkfs.ext4 not installed (e2fsprogs)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ext4 = tmp.path().join("ext4.img");
    let o = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&ext4).arg("100M").output().unwrap();
    assert!(o.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&o.stderr));
    let before = fingerprint(&ext4);
    #[rustfmt::skip]
    let cases: &[&[&str]] = &[
        &["--offset", "18446744073709547520", "-b", "100M"],
        &["--offset", "18446744073709547520", "-b", "4K"],
        &["--offset", "18446744073709547520"],
        &["--offset", "9223372036854771712", "-b", "100M"],
        &["--offset", "4611686018427387904", "-b", "100M"],
        &["--offset", "4096", "-b", "50M"],
        &["--offset", "1M", "-b", "50M"],
        &["--offset", "1M"],
        &["-b", "50M"],
        &["-b", "15E"],
        &["-b", "16E"],
        &["--shrink"],
    ];
    for extra in cases {
        let mut args = vec!["mkfs"];
        args.extend_from_slice(extra);
        args.push(s(&ext4));
        let (out, _) = bounded(Command::new(BIN).args(&args), &format!("{args:?}"));
        let err = stderr(&out);
        assert_eq!(code(&out), 1, "{args:?}: {err}");
        assert_eq!(fingerprint(&ext4), before, "{args:?} changed the ext4 image: {err}");
    }
    let o = Command::new("e2fsck").args(["-n", "-f"]).arg(&ext4).output().unwrap();
    assert!(o.status.success(), "e2fsck: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// A file that is no filesystem and longer than the requested size: a mkfs
/// that fails (the content does not fit, the offset wraps) leaves its length
/// and bytes alone.
#[test]
fn failed_mkfs_leaves_a_larger_plain_file_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain.img");
    {
        let f = std::fs::File::create(&plain).unwrap();
        f.set_len(96 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&pseudo(1 << 20, 9), 0).unwrap();
        f.write_all_at(&pseudo(1 << 20, 10), 95 << 20).unwrap();
    }
    let before = fingerprint(&plain);
    let src = data_tree(tmp.path(), 24, 2 << 20);
    #[rustfmt::skip]
    let cases: &[&[&str]] = &[
        &["-b", "40M", "-r", s(&src)],
        &["--offset", "18446744073709547520", "-b", "64M"],
        &["--offset", "9223372036854771712", "-b", "64M", "-r", s(&src)],
        &["-b", "15E"],
        &["-n", "3K", "-b", "64M"],
    ];
    for extra in cases {
        let mut args = vec!["mkfs"];
        args.extend_from_slice(extra);
        args.push(s(&plain));
        let (out, _) = bounded(Command::new(BIN).args(&args), &format!("{args:?}"));
        assert_eq!(code(&out), 1, "{args:?}: {}", stderr(&out));
        assert_eq!(fingerprint(&plain), before, "{args:?} changed the file");
    }
}
