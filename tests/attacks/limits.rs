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
