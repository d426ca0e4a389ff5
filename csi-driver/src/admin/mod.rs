//! The admin CLI: subcommands of `loopvol-csi`, so the one image (and the
//! driver's container, where the pool and /dev are) carries them. Each
//! command is one file: it calls the backend, then renders a table for
//! people or JSON for scripts (`--output json`). The JSON shapes are built
//! here, not taken from the backend's records, so the on-disk format can
//! change without breaking scripts.
//!
//! Exit codes: 0 done (doctor: nothing left to fix), 1 doctor found
//! problems that remain, 2 the command could not do its job (bad pool, bad
//! input, unknown ID; clap's usage errors are 2 as well).

mod doctor;
mod inspect;
mod list;
mod migrate;
mod trim;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Subcommand, ValueEnum};
use loopvol_backend::{Pool, PoolOptions};

/// doctor: problems remain.
pub const EXIT_PROBLEMS: ExitCode = ExitCode::FAILURE;

/// The command could not do its job.
pub fn exit_error() -> ExitCode {
    ExitCode::from(2)
}

/// Output of list, inspect and doctor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Output of migrate-flexvolume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ManifestOutput {
    #[default]
    Yaml,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the volumes and snapshots of the pool.
    List {
        /// Output format (json: one document on stdout, for scripts).
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one volume or snapshot, with its live state.
    ///
    /// The record, and what the kernel says about it right now: loop
    /// device, mounts, condition, image allocated vs capacity.
    Inspect {
        /// Volume or snapshot ID.
        id: String,
        /// Output format (json: one document on stdout, for scripts).
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Check the pool against the kernel; exit 1 when problems remain.
    ///
    /// Finds loop devices no mount uses, mounts whose records are gone,
    /// images without records and records without images, half-written temp
    /// files, and records that claim mounts the kernel does not have. Exit
    /// codes: 0 nothing left to fix, 1 problems remain, 2 could not check.
    Doctor {
        /// Fix what is safe to fix: detach unused loop devices, remove temp
        /// files, forget stale node state, move orphaned images to lost+found/.
        #[arg(long)]
        repair: bool,
        /// Output format (json: one document on stdout, for scripts).
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Trim staged filesystems now: the space of deleted files goes back to
    /// the pool. Prints the bytes each volume returned.
    ///
    /// Thick volumes (their preallocation is kept), block volumes and
    /// unstaged ones are skipped; blocks a snapshot still shares stay
    /// allocated. Exit 1 when a trim failed.
    Trim {
        /// Volume IDs (default: every volume of the pool).
        volumes: Vec<String>,
        /// Output format (json: one document on stdout, for scripts).
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Print the CSI PV that takes over a FlexVolume PV's volume in place.
    ///
    /// Same pool, same volume ID, so nothing is copied. Reads the PV as YAML
    /// or JSON (`kubectl get pv NAME -o yaml`; a List or several documents
    /// migrate every loopvol FlexVolume PV in it), from FILE or stdin. The
    /// new PV is named <old name>-csi, Retain, pinned to the node with
    /// topology.<driver-name>/node. See deploy/README.md.
    MigrateFlexvolume {
        /// The FlexVolume PV manifest; `-` or nothing reads stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// The node that holds the volume's image (default: the PV's
        /// kubernetes.io/hostname node affinity).
        #[arg(long)]
        node: Option<String>,
        /// StorageClass of the new PV (default: loopvol-ext4 or loopvol-xfs
        /// by fsType, as deploy/ installs them, else the old PV's class).
        #[arg(long)]
        storage_class: Option<String>,
        /// The FlexVolume driver's config (`.loopvol.json`): a PV with a blank
        /// fsType holds its `defaultFsType`, unless the pool (--pool) has the
        /// volume's record, which wins.
        #[arg(long, value_name = "FILE")]
        flex_config: Option<PathBuf>,
        /// Output format of the manifest.
        #[arg(long, short, value_enum, default_value_t)]
        output: ManifestOutput,
    },
}

/// What every command may need from the top-level flags.
#[derive(Debug)]
pub struct Context {
    pub pool: PathBuf,
    pub driver_name: String,
}

pub fn run(command: Command, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        Command::List { output } => list::run(&open_pool(&ctx.pool)?, output),
        Command::Inspect { id, output } => inspect::run(&open_pool(&ctx.pool)?, &id, output),
        Command::Doctor { repair, output } => doctor::run(&open_pool(&ctx.pool)?, repair, output),
        Command::Trim { volumes, output } => trim::run(&open_pool(&ctx.pool)?, volumes, output),
        Command::MigrateFlexvolume { file, node, storage_class, flex_config, output } => {
            let mut fs_types = migrate::FsTypeSources { pool: Some(ctx.pool.clone()), ..Default::default() };
            if let Some(path) = &flex_config {
                fs_types.flex_default = Some(migrate::flex_default_fs_type(path)?);
            }
            let opts = migrate::Options { driver: ctx.driver_name.clone(), node, storage_class, fs_types };
            migrate::run(&file, &opts, output)
        }
    }
}

/// Opens an existing pool: `Pool::open` creates a missing one, which for an
/// admin command would turn a typo into a new empty pool.
fn open_pool(path: &Path) -> anyhow::Result<Pool> {
    if !Pool::exists(path) {
        bail!("no loopvol pool at {} (set --pool or LOOPVOL_POOL)", path.display());
    }
    Pool::open(path, PoolOptions::default()).with_context(|| format!("opening pool {}", path.display()))
}

/// Prints JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value).context("encoding JSON")?);
    Ok(())
}

/// Progress for people only: on stderr, and only when it is a terminal, so
/// scripts and pipes see nothing but the result.
pub struct Progress {
    on: bool,
    start: std::time::Instant,
}

impl Progress {
    pub fn start(what: &str) -> Progress {
        let on = std::io::stderr().is_terminal();
        if on {
            eprint!("{what}...");
        }
        Progress { on, start: std::time::Instant::now() }
    }

    pub fn done(self) {
        if self.on {
            eprintln!(" done in {:.1} s", self.start.elapsed().as_secs_f64());
        }
    }
}

/// Columns aligned on the widest cell, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Bytes as a Kubernetes-style binary quantity: exact when it divides
/// (`2Gi`), else one decimal (`1.5Gi`).
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 5] =
        [("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            if bytes.is_multiple_of(size) {
                return format!("{}{unit}", bytes / size);
            }
            // Display only: the precision of an f64 is plenty.
            #[allow(clippy::cast_precision_loss)]
            let value = bytes as f64 / size as f64;
            return format!("{value:.1}{unit}");
        }
    }
    bytes.to_string()
}

/// Seconds since the epoch as RFC 3339 UTC (`2025-01-31T12:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Bytes the file really occupies (sparse images allocate on write).
pub fn allocated(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.blocks().saturating_mul(512))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_quantities() {
        assert_eq!(human(0), "0");
        assert_eq!(human(512), "512");
        assert_eq!(human(2 << 30), "2Gi");
        assert_eq!(human(3 << 29), "1.5Gi");
        assert_eq!(human(32 << 20), "32Mi");
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn tables_align() {
        let t = table(&["ID", "SIZE"], &[vec!["a".into(), "1Gi".into()], vec!["long-id".into(), "2Gi".into()]]);
        assert_eq!(t, "ID       SIZE\na        1Gi\nlong-id  2Gi\n");
    }
}
