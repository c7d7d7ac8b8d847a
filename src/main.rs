//! The `btrs` binary: parse arguments, call the library, print, set the exit code.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use btrs::cli::{Cli, Command};
use btrs::volumes::OpenOptions;
use btrs::Filesystem;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (e.g. `btrs cat ... | head`) is not an error worth reporting.
            if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) {
                return ExitCode::SUCCESS;
            }
            eprintln!("btrs: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn open(cli_devices: &[std::path::PathBuf], degraded: bool, image: &std::path::Path) -> anyhow::Result<Filesystem> {
    let opts = OpenOptions { image: image.to_path_buf(), devices: cli_devices.to_vec(), degraded, writable: false };
    Filesystem::open(&opts).with_context(|| format!("cannot open {}", image.display()))
}

fn print_warnings(fs: &Filesystem) {
    for w in fs.take_warnings() {
        eprintln!("btrs: warning: {}", w.0);
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match cli.command {
        Command::DumpSuper(a) => {
            let dev = btrs::volumes::Device::open(&a.image, false).or_else(|_| btrs::volumes::Device::open_raw(&a.image))?;
            let _ = dev; anyhow::bail!("tmp");
        }
        Command::DumpTree(a) => {
            let fs = open(&cli.devices, cli.degraded, &a.image)?;
            let tree = match &a.tree {
                Some(t) => Some(btrs::format::types::parse_tree_id(t).with_context(|| format!("unknown tree {t:?}"))?),
                None => None,
            };
            let _ = tree; let r: anyhow::Result<()> = Ok(());
            print_warnings(&fs);
            r?;
        }
        Command::Ls(a) => {
            let fs = open(&cli.devices, cli.degraded, &a.image)?;
            let opts = btrs::ops::listing::LsOptions { long: a.long, recursive: a.recursive };
            let r = btrs::ops::listing::ls(&fs, &a.path, &opts, &mut out);
            print_warnings(&fs);
            r?;
        }
        Command::Cat(a) => {
            let fs = open(&cli.devices, cli.degraded, &a.image)?;
            let r = cat(&fs, &a.path, &mut out);
            print_warnings(&fs);
            r?;
        }
        Command::Extract(a) => {
            let fs = open(&cli.devices, cli.degraded, &a.image)?;
            let (src, dest) = match a.paths.as_slice() {
                [dest] => ("/", dest.as_str()),
                [src, dest] => (src.as_str(), dest.as_str()),
                _ => anyhow::bail!("extract takes [PATH] DEST"),
            };
            let r = btrs::ops::extract::extract(&fs, src, std::path::Path::new(dest));
            print_warnings(&fs);
            let stats = r?;
            for s in &stats.skipped {
                eprintln!("btrs: warning: not applied: {s}");
            }
            eprintln!(
                "extracted {} files ({} bytes), {} directories, {} symlinks, {} special files, {} hardlinks",
                stats.files, stats.bytes, stats.dirs, stats.symlinks, stats.special, stats.hardlinks
            );
        }
        Command::Completions(a) => {
            let mut cmd = btrs::cli::command();
            clap_complete::generate(a.shell, &mut cmd, "btrs", &mut out);
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn cat(fs: &Filesystem, path: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let ent = fs.resolve(path)?;
    let ino = fs.inode(ent.id)?;
    if ino.file_type != btrs::format::FileType::Regular {
        anyhow::bail!("{path}: not a regular file");
    }
    let zeros = vec![0u8; 1 << 16];
    fs.read_file(&ino, &mut |chunk| {
        match chunk {
            btrs::fs::FileChunk::Data { data, .. } => out.write_all(data),
            btrs::fs::FileChunk::Hole { mut len, .. } => {
                let mut r = Ok(());
                while len > 0 && r.is_ok() {
                    let n = len.min(zeros.len() as u64) as usize;
                    r = out.write_all(&zeros[..n]);
                    len -= n as u64;
                }
                r
            }
        }
        .map_err(|e| btrs::Error::io("<stdout>", "write", e))
    })?;
    Ok(())
}
