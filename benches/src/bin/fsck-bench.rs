//! `fsck-bench`: `gfs_fsck -n` on a gfs holding N files against `e2fsck -f -n` on an ext4
//! holding the same files, same run.
//!
//! The file set: `--files` files of `--file-size` bytes in directories of `--per-dir` files.
//! The gfs image is made with mkfs and filled through the filesystem library (no FUSE: the
//! point is the check, not the fill); the ext4 image is made by `mkfs.ext4 -d` from the same
//! tree written to a scratch directory. Both images are files of the same size in the same
//! directory; each checker runs `--runs` times, the median is reported, with the ratio
//! gfs_fsck / e2fsck (below 1: gfs_fsck is faster).

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

const AFTER_HELP: &str = "\
EXAMPLES
    cargo build -p fsck -p gnbd-benches
    target/debug/fsck-bench                      100k files
    target/debug/fsck-bench --files 2000 --runs 1   a quick look

FILES
    gfs_fsck is looked for beside this program (or --bin-dir); e2fsck and mkfs.ext4 in PATH.

EXIT STATUS
    0   both checkers measured (and both found their filesystem clean)
    1   a step failed; the message says which";

/// Check time of gfs_fsck against e2fsck on the same file set.
#[derive(Debug, Parser)]
#[command(name = "fsck-bench", after_long_help = AFTER_HELP)]
struct Cli {
    /// Files in the file set.
    #[arg(long, default_value_t = 100_000)]
    files: usize,
    /// Files per directory.
    #[arg(long, default_value_t = 1000)]
    per_dir: usize,
    /// Bytes per file.
    #[arg(long, default_value_t = 100)]
    file_size: usize,
    /// Image size in MiB (both images).
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// Timed runs of each checker (median reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Scratch directory (default: a new directory under /tmp, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Directory holding gfs_fsck (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fsck-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Scratch(PathBuf, bool);
impl Drop for Scratch {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn content(i: usize, size: usize) -> Vec<u8> {
    let mut v = format!("file {i}\n").into_bytes();
    v.resize(size, b'.');
    v
}

fn run(cli: &Cli) -> Result<()> {
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("no program directory")?.to_path_buf(),
    };
    let gfs_fsck = bin_dir.join("gfs_fsck");
    if !gfs_fsck.is_file() {
        bail!("{} not found (cargo build -p fsck)", gfs_fsck.display());
    }
    let scratch = match &cli.dir {
        Some(d) => Scratch(d.clone(), false),
        None => Scratch(std::env::temp_dir().join(format!("fsck-bench-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&scratch.0)?;
    let dirs = cli.files.div_ceil(cli.per_dir);

    // gfs, filled through the library.
    let gimg = scratch.0.join("gfs.img");
    std::fs::File::create(&gimg)?.set_len(cli.size_mib << 20)?;
    let t = Instant::now();
    {
        let dev = gfs::open_device(gimg.to_str().context("path")?)?;
        let opts = gfs::MkfsOptions {
            lockproto: gfs::LockProto::Nolock,
            locktable: "bench:fsck".into(),
            journals: 2,
            journal_blocks: None,
            rg_blocks: None,
            overwrite: true,
        };
        gfs::mkfs(&*dev, &opts)?;
        let mut fs = gfs::Fs::mount(dev, 0)?;
        let root = fs.root();
        let mut n = 0;
        for d in 0..dirs {
            let dir = fs.mkdir(root, format!("d{d}").as_bytes(), 0o755, 0, 0)?.ino;
            for _ in 0..cli.per_dir.min(cli.files - n) {
                let f = fs.mknod(dir, format!("f{n}").as_bytes(), 0o100644, 0, 0, 0)?.ino;
                fs.write(f, 0, &content(n, cli.file_size))?;
                n += 1;
                if n % 200 == 0 {
                    fs.sync()?;
                }
            }
        }
        fs.unmount()?;
    }
    eprintln!("gfs image filled in {:.1} s", t.elapsed().as_secs_f64());

    // ext4 from the same tree.
    let tree = scratch.0.join("tree");
    let eimg = scratch.0.join("ext4.img");
    let t = Instant::now();
    let mut n = 0;
    for d in 0..dirs {
        let dir = tree.join(format!("d{d}"));
        std::fs::create_dir_all(&dir)?;
        for _ in 0..cli.per_dir.min(cli.files - n) {
            std::fs::write(dir.join(format!("f{n}")), content(n, cli.file_size))?;
            n += 1;
        }
    }
    std::fs::File::create(&eimg)?.set_len(cli.size_mib << 20)?;
    let st = Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&tree).arg(&eimg).status().context("mkfs.ext4")?;
    if !st.success() {
        bail!("mkfs.ext4 -d failed: {st}");
    }
    std::fs::remove_dir_all(&tree)?;
    eprintln!("ext4 image made in {:.1} s", t.elapsed().as_secs_f64());

    let gfs_t = time_runs(cli.runs, || check(Command::new(&gfs_fsck).args(["-n", "-f"]).arg(&gimg), "gfs_fsck"))?;
    let ext_t = time_runs(cli.runs, || check(Command::new("e2fsck").args(["-f", "-n"]).arg(&eimg), "e2fsck"))?;
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!(
        "fsck-bench: {} files of {} bytes, {} per directory ({build} build)",
        cli.files, cli.file_size, cli.per_dir
    );
    println!("{:<22} {:>10}", "checker", "median s");
    println!("{:<22} {:>10.3}", "gfs_fsck -n -f", gfs_t.as_secs_f64());
    println!("{:<22} {:>10.3}", "e2fsck -f -n", ext_t.as_secs_f64());
    println!("ratio gfs_fsck / e2fsck: {:.2}", gfs_t.as_secs_f64() / ext_t.as_secs_f64());
    Ok(())
}

fn check(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} did not find the filesystem clean: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn time_runs(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut v = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    v.sort();
    Ok(v[v.len() / 2])
}
