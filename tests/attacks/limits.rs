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
    btrs_fsize_limited_with(args, limit_kib, ":")
}

/// [`btrs_fsize_limited`] after `shell` (e.g. `trap '' XFSZ`).
fn btrs_fsize_limited_with(args: &[&str], limit_kib: u64, shell: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c").arg(format!("{shell}; ulimit -f {limit_kib}; exec \"$0\" \"$@\"")).arg(BIN).args(args);
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
/// thread count, with SIGXFSZ at its default (it killed btrs) or ignored. It
/// hung with two or more threads: the reader waited forever on a full job
/// queue after the workers had quit.
#[test]
fn mkfs_rootdir_under_a_file_size_limit_fails_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = data_tree(tmp.path(), 24, 2 << 20);
    for (shell, threads) in [(":", "1"), (":", "2"), (":", "8"), ("trap '' XFSZ", "2"), ("trap '' XFSZ", "8")] {
        let img = tmp.path().join(format!("t{threads}.img"));
        // The image exists at full size, so only writes past the limit fail
        // (the data chunk lies far above 32 MiB).
        std::fs::File::create(&img).unwrap().set_len(300 << 20).unwrap();
        let (out, took) = bounded(
            &mut btrs_fsize_limited_with(&["mkfs", "-f", "--threads", threads, "-r", s(&src), s(&img)], 32 << 10, shell),
            &format!("mkfs -r --threads {threads} under ulimit -f ({shell:?})"),
        );
        let err = stderr(&out);
        assert_eq!(code(&out), 1, "--threads {threads}: {err}");
        assert!(err.contains("File too large"), "--threads {threads}: {err}");
        eprintln!("--threads {threads}: failed in {took:?}: {}", err.trim());
    }
}

/// `mkfs -r` under a small limit of open files: a tree 300 directories
/// deep (the walk holds one directory open at a time, its helper no more),
/// and thousands of small files copied by 16 threads (each batch in flight
/// held the files it read until they were copied: 64 batches of 256 files
/// ran out of the usual 1,024 descriptors). The images pass btrfs check.
#[test]
fn mkfs_rootdir_under_a_limit_of_open_files() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = tmp.path().join("deep");
    let mut d = deep.clone();
    for i in 0..300 {
        d.push(format!("d{i:03}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), vec![b'x'; 3000]).unwrap();
    }
    let wide = tmp.path().join("wide");
    for i in 0..3000 {
        let dir = wide.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), vec![(i % 251) as u8; 3000 + i % 100]).unwrap();
    }
    for (src, limit, threads) in [(&deep, 10, "2"), (&wide, 64, "16"), (&wide, 12, "2")] {
        let img = tmp.path().join("t.img");
        let mut c = Command::new("bash");
        c.arg("-c").arg(format!("ulimit -n {limit}; exec \"$0\" \"$@\"")).arg(BIN);
        c.args(["mkfs", "-f", "-b", "256M", "--threads", threads, "-r", s(src), s(&img)]);
        let what = format!("mkfs -r --threads {threads} of {} under ulimit -n {limit}", src.display());
        let (out, _) = bounded(&mut c, &what);
        assert_eq!(code(&out), 0, "{what}: {}", stderr(&out));
        progs_check("mkfs_rootdir_under_a_limit_of_open_files", std::slice::from_ref(&img), &[]);
    }
}

/// `mkfs -r` into an image on a filesystem that fills up (ENOSPC) in the
/// data pass — at its first write (the disk nearly full already) or after
/// some 20 MiB: a prompt error for any thread count, and the image it created
/// is gone again. The first case hung with two or more threads.
#[test]
fn mkfs_rootdir_on_a_full_disk_fails_promptly() {
    let test = "mkfs_rootdir_on_a_full_disk_fails_promptly";
    let tmp = tempfile::tempdir().unwrap();
    let Some(small) = Tmpfs::mount(test, &tmp.path().join("small"), "20m") else { return };
    let src = data_tree(tmp.path(), 24, 2 << 20);
    for filler in [19usize << 20, 0] {
        let fill = small.dir.join("filler");
        std::fs::write(&fill, vec![0u8; filler]).unwrap();
        for threads in ["1", "2", "8"] {
            let img = small.dir.join(format!("t{threads}.img"));
            let (out, took) = bounded(
                btrs_cmd().args(["mkfs", "-b", "300M", "--threads", threads, "-r", s(&src), s(&img)]),
                &format!("mkfs -r --threads {threads} on a full tmpfs ({} MiB taken)", filler >> 20),
            );
            let err = stderr(&out);
            assert_eq!(code(&out), 1, "--threads {threads}: {err}");
            assert!(err.contains("No space left"), "--threads {threads}: {err}");
            assert!(!img.exists(), "--threads {threads}: the failed mkfs left its new image behind");
            eprintln!("{} MiB taken, --threads {threads}: failed in {took:?}: {}", filler >> 20, err.trim());
        }
        std::fs::remove_file(&fill).unwrap();
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
        let (out, took) = bounded(btrs_cmd().args(&args), &format!("write {mode:?} on a full tmpfs"));
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
        let mut child =
            btrs_fsize_limited(&args, 8 << 10).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
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
/// error with exit 2 when the value does not parse or is out of the option's
/// range, 1 when btrs refuses what it means, or it works — never
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
        (&["mkfs", "--threads", "1000000", "-b", "256M", "-r", "SRC", "NEW"], 2, "at most 1024 threads"),
        (&["mkfs", "--threads", "18446744073709551616", "-b", "256M", "NEW"], 2, "not a thread count"),
        (&["mkfs", "--threads=-1", "-b", "256M", "NEW"], 2, "not a thread count"),
        (&["mkfs", "--threads", "1024", "-b", "256M", "-r", "SRC", "NEW"], 0, ""),
        (&["mkfs", "--threads", "0", "-b", "256M", "-r", "SRC", "NEW"], 0, ""),
        // mkfs -b / --size
        (&["mkfs", "-b", "18446744073709551616", "NEW"], 2, "bad size"),
        (&["mkfs", "-b", "16E", "NEW"], 2, "too large"),
        (&["mkfs", "-b", "17179869184G", "NEW"], 2, "too large"),
        (&["mkfs", "-b", "15E", "NEW"], 2, "largest file size"),
        (&["mkfs", "-b", "9223372036854775808", "NEW"], 2, "largest file size"),
        (&["mkfs", "-b", "0", "NEW"], 1, "too small"),
        (&["mkfs", "--size=-5M", "NEW"], 2, "bad size"),
        (&["mkfs", "-b", "1.5G", "NEW"], 2, "bad size"),
        (&["mkfs", "-b", "5X", "NEW"], 2, "unknown suffix"),
        // mkfs --offset
        (&["mkfs", "--offset", "18446744073709547520", "-b", "100M", "NEW"], 2, "largest file size"),
        (&["mkfs", "--offset", "9223372036854771712", "-b", "100M", "NEW"], 2, "largest file size"),
        (&["mkfs", "--offset", "18446744073709551616", "-b", "100M", "NEW"], 2, "bad size"),
        (&["mkfs", "--offset=-4096", "-b", "100M", "NEW"], 2, "bad size"),
        (&["mkfs", "--offset", "16E", "-b", "100M", "NEW"], 2, "too large"),
        (&["mkfs", "--offset", "1", "-b", "100M", "NEW"], 2, "multiple of the sectorsize"),
        // mkfs -n / -s: a value no image can make work is a usage error
        (&["mkfs", "-n", "0", "-b", "256M", "NEW"], 2, "nodesize 0"),
        (&["mkfs", "-n", "4294967296", "-b", "256M", "NEW"], 2, "too large"),
        (&["mkfs", "-n", "18446744073709551616", "-b", "256M", "NEW"], 2, "bad size"),
        (&["mkfs", "--nodesize", "128K", "-b", "256M", "NEW"], 2, "power of two between"),
        (&["mkfs", "--nodesize", "12K", "-b", "256M", "NEW"], 2, "power of two between"),
        (&["mkfs", "-s", "0", "-b", "256M", "NEW"], 2, "sectorsize 0"),
        (&["mkfs", "--sectorsize", "4294967296", "-b", "256M", "NEW"], 2, "too large"),
        // mkfs -O: an unknown name does not parse, a combination no image can
        // have is a usage error too (like --slack without --shrink); a feature
        // btrs does not make is refused (exit 1)
        (&["mkfs", "-O", "foo", "-b", "256M", "NEW"], 2, "unknown feature"),
        (&["mkfs", "-O", "^free-space-tree,block-group-tree", "-b", "256M", "NEW"], 2, "needs free-space-tree"),
        (&["mkfs", "-O", "^skinny-metadata", "-b", "256M", "NEW"], 1, "without skinny-metadata"),
        // mkfs --slack, --compress levels, --owner-map
        (&["mkfs", "--shrink", "--slack", "7E", "-r", "SRC", "NEW"], 2, "at most"),
        (&["mkfs", "--shrink", "--slack", "18446744073709551616", "-r", "SRC", "NEW"], 2, "bad size"),
        (&["mkfs", "--shrink", "--slack", "4294967296%", "-r", "SRC", "NEW"], 2, "bad --slack"),
        (&["mkfs", "--shrink", "--slack", "0", "-r", "SRC", "NEW"], 0, ""),
        (&["mkfs", "-b", "256M", "--compress", "zlib:10", "-r", "SRC", "NEW"], 2, "zlib level"),
        (&["mkfs", "-b", "256M", "--compress", "zstd:2147483648", "-r", "SRC", "NEW"], 1, "no such path"),
        (&["mkfs", "-b", "256M", "--owner-map", "0:4294967295:2", "-r", "SRC", "NEW"], 2, "owner-map"),
        (&["mkfs", "-b", "256M", "--owner-map", "0:0:18446744073709551616", "-r", "SRC", "NEW"], 2, "owner-map"),
        // scrub
        (&["scrub", "--threads", "1000000", "IMG"], 2, "at most 1024 threads"),
        (&["scrub", "--threads", "1024", "IMG"], 0, ""),
        (&["scrub", "--prefer-mirror", "0", "IMG"], 2, "--prefer-mirror"),
        (&["scrub", "--prefer-mirror", "5", "IMG"], 2, "--prefer-mirror"),
        (&["scrub", "--prefer-mirror", "18446744073709551616", "IMG"], 2, "--prefer-mirror"),
        // More copies than the filesystem keeps: known once it is open, a usage error all the same.
        (&["scrub", "--prefer-mirror", "4", "IMG"], 2, "--prefer-mirror 4: this filesystem keeps at most"),
        // fixture --seed
        (&["fixture", "list", "--seed", "18446744073709551616"], 2, "--seed"),
        (&["fixture", "list", "--seed=-1"], 2, "--seed"),
        (&["fixture", "raid1-clean", "NEW", "--seed", "18446744073709551615"], 0, ""),
        // write --offset, --max-bio, --commit-every
        (&["write", "IMG", "/f", "--from", "4K", "--offset", "18446744073709551615"], 2, "--offset"),
        (&["write", "IMG", "/f", "--from", "4K", "--offset", "9223372036854775808"], 2, "--offset"),
        (&["write", "IMG", "/f", "--from", "4K", "--offset=-1"], 2, "--offset"),
        (&["write", "IMG", "/f", "--from", "4K", "--offset", "9223372036854775807"], 1, "largest file size"),
        (&["write", "IMG", "/f", "--from", "4K", "--offset", "9223372036854771712", "--direct"], 1, "largest file size"),
        (&["write", "IMG", "/far", "--from", "4K", "--offset", "9223372036854767616"], 0, ""),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio", "0"], 2, "from 4K to 1G"),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio", "18014398509481984K"], 2, "too large"),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio", "18446744073709551616"], 2, "bad size"),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio", "2G"], 2, "from 4K to 1G"),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio", "4097"], 2, "whole number of 4 KiB pages"),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio", "5X"], 2, "unknown suffix"),
        (&["write", "IMG", "/f", "--from", "4K", "--max-bio=-4K"], 2, "bad size"),
        (&["write", "IMG", "/f", "--from", "4K", "--commit-every", "16E"], 2, "too large"),
        (&["write", "IMG", "/f", "--from", "4K", "--commit-every=-1"], 2, "bad size"),
        (&["write", "IMG", "/f0", "--from", "4K", "--commit-every", "0"], 0, ""),
        (&["write", "IMG", "/f15", "--from", "4K", "--commit-every", "15E", "--direct", "--max-bio", "1G"], 0, ""),
        // dump-tree -t
        // dump-tree -t: a value that is neither a name nor an id does not
        // parse (exit 2, before any image is opened); an id with no tree is refused
        (&["dump-tree", "-t", "18446744073709551616", "IMG"], 2, "unknown tree"),
        (&["dump-tree", "-t", "foo", "IMG"], 2, "unknown tree"),
        (&["dump-tree", "-t", "", "IMG"], 2, "unknown tree"),
        (&["dump-tree", "-t", "foo", "NEW"], 2, "unknown tree"),
        // As btrfs-progs: the totals alone (the reason is a warning on stderr).
        (&["dump-tree", "-t=-1", "IMG"], 0, ""),
        // No tree has id 0 (btrfs-progs: "unrecognized tree id").
        (&["dump-tree", "-t", "0", "IMG"], 2, "unknown tree"),
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
        let (out, _) = bounded(btrs_cmd().args(&args), &format!("{args:?}"));
        let err = stderr(&out);
        assert_eq!(code(&out), *want, "{args:?}: {err}");
        if *want != 0 {
            assert!(err.contains(needle), "{args:?}: stderr lacks {needle:?}: {err}");
            assert!(err.lines().count() <= 6, "{args:?}: not a short message: {err}");
            assert_eq!(superblock(&img), before, "{args:?}: a refused command changed the image");
            assert!(!new.exists(), "{args:?}: a refused command left {} behind", new.display());
        } else if args[0] == "mkfs" {
            progs_check("hostile_numbers_fail_cleanly", std::slice::from_ref(&new), &[]);
        }
        if new.is_dir() {
            std::fs::remove_dir_all(&new).unwrap();
        } else {
            let _ = std::fs::remove_file(&new);
        }
    }
    // The writes that worked left a filesystem btrfs check accepts.
    progs_check("hostile_numbers_fail_cleanly", std::slice::from_ref(&img), &[]);
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
        assert_ne!(
            std::env::var("BTRS_INTEROP").as_deref(),
            Ok("require"),
            "{test}: BTRS_INTEROP=require but mkfs.ext4 is missing (e2fsprogs)"
        );
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
        let (out, _) = bounded(btrs_cmd().args(&args), &format!("{args:?}"));
        let err = stderr(&out);
        // Sizes and offsets no image file can have are usage errors (16E does not
        // even parse); the rest are refused by what the image is.
        let want = if extra.iter().any(|a| ["16E", "15E", "18446744073709547520", "9223372036854771712"].contains(a)) { 2 } else { 1 };
        assert_eq!(code(&out), want, "{args:?}: {err}");
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
        let (out, _) = bounded(btrs_cmd().args(&args), &format!("{args:?}"));
        // Only the content that does not fit is about this file; the rest are usage errors.
        let want = if extra[..2] == ["-b", "40M"] { 1 } else { 2 };
        assert_eq!(code(&out), want, "{args:?}: {}", stderr(&out));
        assert_eq!(fingerprint(&plain), before, "{args:?} changed the file");
    }
}

// ---------------------------------------------------------------------------
// Deep trees and directory loops: no walk may overflow the stack.

/// Depth of the deep trees: far more than a recursive walk's stack holds.
const DEEP: usize = 20_000;

/// "/d/d/.../d", `DEEP` levels.
fn deep_path() -> String {
    "/d".repeat(DEEP)
}

/// A host directory `DEEP` levels deep under `dir`, made through directory
/// descriptors (its paths are far longer than PATH_MAX); removed with
/// `rm -rf` on drop, which handles any depth.
struct DeepHostTree {
    root: PathBuf,
}

impl DeepHostTree {
    fn make(dir: &Path) -> DeepHostTree {
        use rustix::fs::{mkdirat, openat, Mode, OFlags};
        let root = dir.join("deep");
        std::fs::create_dir_all(&root).unwrap();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut fd = openat(rustix::fs::CWD, &root, flags, Mode::empty()).unwrap();
        for _ in 0..DEEP {
            mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = openat(&fd, "d", flags, Mode::empty()).unwrap();
        }
        DeepHostTree { root }
    }
}

impl Drop for DeepHostTree {
    fn drop(&mut self) {
        let _ = Command::new("rm").arg("-rf").arg(&self.root).status();
    }
}

/// `mkdir -p` makes a 20000-level tree; `rm -r` removes it (it overflowed
/// the stack, recursing once per level) and btrfs check agrees.
#[test]
fn rm_r_of_a_20000_level_tree_works() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs(tmp.path(), 1, "256M", "single", &[]);
    let img = s(&imgs[0]);
    ok(&["mkdir", "-p", img, &deep_path()]);
    ok(&["mkdir", "-p", img, "/keep"]);
    let (out, took) = bounded(btrs_cmd().args(["rm", "-r", img, "/d"]), "rm -r of a 20000-level tree");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    eprintln!("rm -r of {DEEP} levels: {took:?}");
    assert_eq!(ok(&["ls", img, "/"]), b"keep\n");
    progs_check("rm_r_of_a_20000_level_tree_works", &imgs, &[]);
}

/// `ls -R` of a 20000-level tree lists every level (it stopped at 4096
/// levels with an error naming a 8 KiB path). Its output (every level's path,
/// 400 MB) is counted, not kept.
#[test]
fn ls_r_of_a_20000_level_tree_works() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs(tmp.path(), 1, "256M", "single", &[]);
    let img = s(&imgs[0]);
    ok(&["mkdir", "-p", img, &deep_path()]);
    let t0 = Instant::now();
    let mut child = btrs_cmd().args(["ls", "-R", img, "/"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut so = child.stdout.take().unwrap();
    let (mut lines, mut bytes, mut tail) = (0usize, 0usize, Vec::new());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = so.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
        bytes += n;
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 200_000 {
            tail.drain(..tail.len() - 100_000);
        }
        assert!(t0.elapsed() < HANG, "ls -R still running after {HANG:?}");
    }
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "ls -R: {err}");
    // Per level: its "PATH:" line, its entry, the blank line before the next.
    assert_eq!(lines, 3 * DEEP + 1, "{bytes} bytes");
    let last = format!("{}:\n", deep_path());
    assert!(tail.ends_with(last.as_bytes()), "does not end with the deepest directory");
    eprintln!("ls -R of {DEEP} levels: {bytes} bytes in {:?}", t0.elapsed());
}

/// `put` of a host tree 20000 levels deep: its paths outgrow PATH_MAX, so a
/// clean error naming that (nothing committed), never a stack overflow.
#[test]
fn put_of_a_20000_level_host_tree_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = DeepHostTree::make(tmp.path());
    let imgs = mkfs(tmp.path(), 1, "256M", "single", &[]);
    let before = fingerprint(&imgs[0]);
    let (out, _) = bounded(btrs_cmd().args(["put", s(&imgs[0]), s(&deep.root), "/deep"]), "put of a deep host tree");
    let err = stderr(&out);
    match code(&out) {
        0 => progs_check("put_of_a_20000_level_host_tree_fails_cleanly", &imgs, &[]),
        1 => {
            assert!(err.contains("File name too long"), "{}", &err[err.len().saturating_sub(300)..]);
            // The 4 KiB path is shown with its middle elided.
            assert!(err.len() < 1000, "{} bytes of message", err.len());
            assert_eq!(fingerprint(&imgs[0]), before, "a failed put changed the image");
        }
        c => panic!("put: exit {c}: {err}"),
    }
}

/// `mkfs -r` of a host tree 20000 levels deep: likewise a clean error (the
/// new image removed again), never a stack overflow.
#[test]
fn mkfs_rootdir_of_a_20000_level_host_tree_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = DeepHostTree::make(tmp.path());
    let img = tmp.path().join("new.img");
    let (out, _) = bounded(btrs_cmd().args(["mkfs", "-b", "256M", "-r", s(&deep.root), s(&img)]), "mkfs -r of a deep host tree");
    let err = stderr(&out);
    match code(&out) {
        0 => progs_check("mkfs_rootdir_of_a_20000_level_host_tree_fails_cleanly", &[img], &[]),
        1 => {
            assert!(err.contains("File name too long"), "{}", &err[err.len().saturating_sub(300)..]);
            assert!(err.len() < 1000, "{} bytes of message", err.len());
            assert!(!img.exists(), "the failed mkfs left its image behind");
        }
        c => panic!("mkfs: exit {c}: {err}"),
    }
}

/// `mkfs --rootdir-tar` of an archive whose one member is a directory 20000
/// levels deep (its parents implied): archive paths have no PATH_MAX, so the
/// image is made (the walk overflowed the stack), and holds the path.
#[test]
fn mkfs_rootdir_tar_of_a_20000_level_path_works() {
    let tmp = tempfile::tempdir().unwrap();
    let tar_path = tmp.path().join("deep.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        let member = format!("{}/", &deep_path()[1..]);
        b.append_data(&mut h, &member, std::io::empty()).unwrap();
        b.finish().unwrap();
    }
    let img = tmp.path().join("new.img");
    let (out, took) =
        bounded(btrs_cmd().args(["mkfs", "-b", "256M", "--rootdir-tar", s(&tar_path), s(&img)]), "mkfs --rootdir-tar of a deep path");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    eprintln!("mkfs --rootdir-tar of {DEEP} levels: {took:?}");
    let deepest = format!("{}/", deep_path());
    let (c, listing, err) = btrs(&["ls", s(&img), &deepest]);
    assert_eq!((c, listing.len()), (0, 0), "the deepest directory is there and empty: {err}");
    progs_check("mkfs_rootdir_tar_of_a_20000_level_path_works", &[img], &[]);
}

/// Every leaf of tree `tree` in single-device image `img`, each copy's
/// physical address.
fn leaf_copies(img: &Path, tree: u64) -> Vec<u64> {
    let fs = btrs::Filesystem::open(&btrs::volumes::OpenOptions { image: img.to_path_buf(), ..Default::default() }).unwrap();
    let mut out = Vec::new();
    let mut stack = vec![fs.reader.root_block(&fs.tree_root(tree).unwrap()).unwrap()];
    while let Some(b) = stack.pop() {
        if b.is_leaf() {
            for m in 0..fs.volume().num_copies(b.logical).unwrap() {
                out.push(fs.volume().locate(b.logical, m).unwrap().physical);
            }
        } else {
            for i in 0..b.nritems() {
                stack.push(fs.reader.child(&b, i, tree).unwrap());
            }
        }
    }
    out
}

/// Apply `edit(key objectid, key type, key offset, leaf, item's key offset
/// in the leaf, body offset in the leaf)` to every item of every leaf copy of
/// tree `tree`, resealing the leaves it changed (crc32c); how many items
/// were changed (counted once per copy).
fn patch_items(img: &Path, tree: u64, edit: impl Fn(u64, u8, u64, &mut [u8], usize, usize) -> bool) -> usize {
    use std::os::unix::fs::FileExt;
    const HEADER: usize = 101;
    const ITEM: usize = 25;
    let nodesize = 16384;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let mut changed = 0;
    for phys in leaf_copies(img, tree) {
        let mut b = vec![0u8; nodesize];
        f.read_exact_at(&mut b, phys).unwrap();
        let n = u32::from_le_bytes(b[96..100].try_into().unwrap()) as usize;
        let mut any = false;
        for i in 0..n {
            let item = HEADER + i * ITEM;
            let oid = u64::from_le_bytes(b[item..item + 8].try_into().unwrap());
            let ty = b[item + 8];
            let off = u64::from_le_bytes(b[item + 9..item + 17].try_into().unwrap());
            let body = HEADER + u32::from_le_bytes(b[item + 17..item + 21].try_into().unwrap()) as usize;
            if edit(oid, ty, off, &mut b, item, body) {
                any = true;
                changed += 1;
            }
        }
        if any {
            let c = btrs::format::CsumType::Crc32c.compute(&b[32..]);
            b[..32].copy_from_slice(&c);
            f.write_all_at(&b, phys).unwrap();
        }
    }
    changed
}

/// An image whose /a/b entry (DIR_ITEM and DIR_INDEX) is patched to name the
/// root directory: /a/b is / again, a loop.
fn looped_image(dir: &Path) -> PathBuf {
    let img = mkfs(dir, 1, "256M", "single", &[]).remove(0);
    ok(&["mkdir", "-p", s(&img), "/a/b/c"]);
    ok(&["write", s(&img), "/a/b/c/f", "--from", "/dev/null", "--quiet"]);
    let fs = btrs::Filesystem::open(&btrs::volumes::OpenOptions { image: img.clone(), ..Default::default() }).unwrap();
    let a = fs.resolve("/a").unwrap().id.ino;
    let b = fs.resolve("/a/b").unwrap().id.ino;
    drop(fs);
    let n = patch_items(&img, btrs::format::FS_TREE_OBJECTID, |oid, ty, _, leaf, _, body| {
        let entry = ty == btrs::format::DIR_ITEM_KEY || ty == btrs::format::DIR_INDEX_KEY;
        if oid != a || !entry || leaf[body + 30..body + 31] != *b"b" || u64::from_le_bytes(leaf[body..body + 8].try_into().unwrap()) != b {
            return false;
        }
        leaf[body..body + 8].copy_from_slice(&256u64.to_le_bytes());
        true
    });
    assert_eq!(n, 2, "DIR_ITEM and DIR_INDEX of /a/b");
    img
}

/// `rm -r` through a crafted directory loop: a clean error (it recursed
/// until the stack overflowed), exit 1, the image unchanged.
#[test]
fn rm_r_through_a_directory_loop_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let img = looped_image(tmp.path());
    let before = fingerprint(&img);
    let (out, _) = bounded(btrs_cmd().args(["rm", "-r", s(&img), "/a"]), "rm -r through a loop");
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("reached twice"), "{err}");
    assert!(err.len() < 400, "{err}");
    eprintln!("rm -r: {}", err.trim());
    assert_eq!(fingerprint(&img), before, "a failed rm changed the image");
}

/// `ls -R` through the same loop: a clean error naming it, exit 1.
#[test]
fn ls_r_through_a_directory_loop_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let img = looped_image(tmp.path());
    let before = fingerprint(&img);
    let (out, _) = bounded(btrs_cmd().args(["ls", "-R", s(&img), "/"]), "ls -R through a loop");
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("reached twice"), "{err}");
    eprintln!("ls -R: {}", err.trim());
    assert_eq!(fingerprint(&img), before);
}

/// `mv` of a directory into one whose parent chain (INODE_REFs) loops: it
/// walked the chain forever looking for the root; now a clean error, exit 1,
/// the image unchanged.
#[test]
fn mv_into_a_looping_parent_chain_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let img = mkfs(tmp.path(), 1, "256M", "single", &[]).remove(0);
    ok(&["mkdir", "-p", s(&img), "/a/b"]);
    ok(&["mkdir", s(&img), "/x"]);
    let fs = btrs::Filesystem::open(&btrs::volumes::OpenOptions { image: img.clone(), ..Default::default() }).unwrap();
    let a = fs.resolve("/a").unwrap().id.ino;
    let b = fs.resolve("/a/b").unwrap().id.ino;
    drop(fs);
    // /a's INODE_REF names /a/b as its parent: b -> a -> b -> ...
    let n = patch_items(&img, btrs::format::FS_TREE_OBJECTID, |oid, ty, off, leaf, item, _| {
        if oid != a || ty != btrs::format::INODE_REF_KEY || off != 256 {
            return false;
        }
        leaf[item + 9..item + 17].copy_from_slice(&b.to_le_bytes());
        true
    });
    assert_eq!(n, 1, "INODE_REF of /a");
    let before = fingerprint(&img);
    let (out, _) = bounded(btrs_cmd().args(["mv", s(&img), "/x", "/a/b"]), "mv into a looping parent chain");
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("parent chain loops"), "{err}");
    eprintln!("mv: {}", err.trim());
    assert_eq!(fingerprint(&img), before);
}

// ---------------------------------------------------------------------------
// A reader that closes the pipe early.

/// Every command that writes to standard output, read by a reader that
/// closes the pipe at once, or after one byte: it ends quietly (exit 0, no
/// panic message, no death by signal). `completions` panicked in clap_complete.
#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for i in 0..300 {
        std::fs::write(src.join(format!("sub/file-with-a-long-name-{i:04}")), pseudo(100 + i, i as u64)).unwrap();
    }
    std::fs::write(src.join("big"), pseudo(4 << 20, 1)).unwrap();
    let imgs = mkfs(tmp.path(), 1, "256M", "single", &["-r", s(&src)]);
    let img = s(&imgs[0]);
    let newimg = tmp.path().join("new.img");
    #[rustfmt::skip]
    let cmds: Vec<Vec<&str>> = vec![
        vec!["completions", "bash"], vec!["completions", "zsh"], vec!["completions", "fish"],
        vec!["completions", "elvish"], vec!["completions", "powershell"],
        vec!["cat", img, "/big"],
        vec!["ls", "-R", img, "/"], vec!["ls", "-l", "-R", img, "/"], vec!["ls", img, "/sub"],
        vec!["dump-tree", img], vec!["dump-tree", "-t", "fs", img],
        vec!["dump-super", img], vec!["dump-super", "--all", "--json", img],
        vec!["scrub", "--json", img], vec!["scrub", img],
        vec!["fixture", "list"],
        vec!["mkfs", "-f", "-b", "256M", "--json", s(&newimg)],
        vec!["write", img, "/w", "--from", "/dev/null", "-v"],
        vec!["--help"], vec!["mkfs", "--help"], vec!["--version"],
    ];
    for cmd in &cmds {
        for read_first in [false, true] {
            let what = format!("{cmd:?} (pipe closed {})", if read_first { "after one byte" } else { "at once" });
            let t0 = Instant::now();
            let mut child = btrs_cmd().args(cmd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            let mut out = child.stdout.take().unwrap();
            if read_first {
                let mut b = [0u8; 1];
                let _ = out.read(&mut b);
            }
            drop(out);
            let mut err = String::new();
            let mut se = child.stderr.take().unwrap();
            let reader = std::thread::spawn(move || {
                let _ = se.read_to_string(&mut err);
                err
            });
            let status = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break st;
                }
                if t0.elapsed() > HANG {
                    let _ = child.kill();
                    panic!("{what}: still running after {HANG:?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let err = reader.join().unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert!(status.signal().is_none(), "{what}: died of signal {:?}: {err}", status.signal());
            assert!(!err.contains("panicked"), "{what}: {err}");
            assert_eq!(status.code(), Some(0), "{what}: {err}");
            assert!(err.is_empty() || !err.contains("error"), "{what}: {err}");
        }
    }
}

/// With standard error closed (`2>&1 | head -c 60` once the reader is gone),
/// warnings and the error text cannot be shown; the command still ends with
/// its own exit code, never a panic (exit 101) in the write of its message
/// (seen on 5a334e3: `mkdir ... 2>&1 | head -c 60` exited 101).
#[test]
fn a_closed_stderr_keeps_the_exit_code() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs(tmp.path(), 2, "128M", "raid1", &[]);
    let img = s(&imgs[0]);
    ok(&["mkdir", img, "/d"]);
    // A stale device makes every command below warn before it ends.
    let aside = tmp.path().join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    std::fs::copy(&imgs[1], aside.join("old.img")).unwrap();
    ok(&["mkdir", img, "/e"]);
    std::fs::copy(aside.join("old.img"), &imgs[1]).unwrap();
    #[rustfmt::skip]
    let cmds: Vec<(Vec<&str>, i32)> = vec![
        (vec!["mkdir", img, "/f"], 1),
        (vec!["ls", img, "/"], 0),
        (vec!["cat", img, "/nope"], 1),
        (vec!["scrub", img], 3),
        (vec!["mkdir", img], 2),
    ];
    for (cmd, want) in &cmds {
        let mut child = btrs_cmd().args(cmd).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stderr.take());
        let status = child.wait().unwrap();
        assert!(status.signal().is_none(), "{cmd:?}: died of signal {:?}", status.signal());
        assert_eq!(status.code(), Some(*want), "{cmd:?} with stderr closed");
    }
}

/// Output that cannot be written (a full disk; here /dev/full) fails the
/// command naming standard output, not only "No space left on device"
/// (attacker's pass on cb1d672: dump-super, ls and dump-tree said only that).
#[test]
fn a_full_stdout_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs(tmp.path(), 1, "128M", "single", &[]);
    let img = s(&imgs[0]);
    ok(&["mkdir", img, "/d"]);
    for cmd in [vec!["dump-super", img], vec!["ls", "-l", img, "/"], vec!["dump-tree", img], vec!["scrub", img, "--no-progress"]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = btrs_cmd().args(&cmd).stdin(Stdio::null()).stdout(full).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
        assert!(err.contains("<stdout>") && err.contains("No space left"), "{cmd:?}: {err}");
    }
}

/// Regression (attacker's pass on 5c11694): `put` of a file whose size says less than it
/// holds (/proc files say 0) stored an empty file and said "copied 1 files", exit 0.
/// It is refused now, naming the file, and the image is unchanged.
#[test]
fn put_refuses_a_file_holding_more_than_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = crate::util::mkfs(tmp.path(), 1, "128M", "single", &[]);
    let before = fingerprint(&imgs[0]);
    let (c, _, err) = btrs(&["put", s(&imgs[0]), "/proc/self/status", "/"]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("/proc/self/status") && err.contains("past its size"), "{err}");
    assert_eq!(fingerprint(&imgs[0]), before, "a refused put changed the image");
}

/// One image file named twice under two spellings (`./a.img`, `d/../a.img`, a
/// symlink, a hard link) is refused as given twice (exit 2) before anything
/// is opened: it waited 1.5 s on its own lock, then blamed "another process"
/// (attacker's pass on cb1d672). Nothing is created, an existing file is
/// left as it was.
#[test]
fn mkfs_refuses_one_file_under_two_names() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("sub")).unwrap();
    let a = d.join("a.img");
    for other in [d.join(".").join("a.img"), d.join("sub").join("..").join("a.img")] {
        let (c, _, err) = btrs(&["mkfs", "-b", "128M", s(&a), s(&other)]);
        assert_eq!(c, 2, "{other:?}: {err}");
        assert!(err.contains("given twice"), "{err}");
        assert!(!a.exists(), "a refused mkfs created {}", a.display());
    }
    let b = d.join("b.img");
    std::fs::write(&b, pseudo(1 << 20, 9)).unwrap();
    std::os::unix::fs::symlink(&b, d.join("l.img")).unwrap();
    std::fs::hard_link(&b, d.join("h.img")).unwrap();
    let before = fingerprint(&b);
    for other in ["l.img", "h.img"] {
        let (c, _, err) = btrs(&["mkfs", "-f", "-b", "128M", s(&b), s(&d.join(other))]);
        assert_eq!(c, 2, "{other}: {err}");
        assert!(err.contains("given twice"), "{err}");
        assert_eq!(fingerprint(&b), before, "{other}: the refused mkfs changed the file");
    }
    // Two different files are still two devices.
    let imgs = mkfs(d, 2, "128M", "raid1", &[]);
    progs_check("mkfs_refuses_one_file_under_two_names", &imgs, &[]);
}
