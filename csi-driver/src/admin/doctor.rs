//! `loopvol-csi doctor [--repair]`: what is out of line in the pool, over
//! `Pool::doctor`. Exit 0 when nothing is left to fix, 1 when problems
//! remain (also after `--repair`: some are never fixed automatically, since
//! fixing them could take data away from a running pod).

use std::path::PathBuf;
use std::process::ExitCode;

use loopvol_backend::Finding;
use loopvol_backend::Pool;
use serde::Serialize;

use super::{print_json, table, Output, Progress, EXIT_PROBLEMS};

#[derive(Debug, Serialize)]
struct Report {
    pool: PathBuf,
    repair: bool,
    findings: Vec<FindingOut>,
    /// Findings not repaired: the exit code is 1 when this is not zero.
    remaining: usize,
}

#[derive(Debug, Serialize)]
struct FindingOut {
    kind: &'static str,
    path: PathBuf,
    detail: String,
    remedy: &'static str,
    repaired: bool,
}

impl From<Finding> for FindingOut {
    fn from(f: Finding) -> Self {
        FindingOut { kind: f.kind.as_str(), path: f.path, detail: f.detail, remedy: f.remedy, repaired: f.repaired }
    }
}

pub fn run(pool: &Pool, repair: bool, output: Output) -> anyhow::Result<ExitCode> {
    let verb = if repair { "checking and repairing" } else { "checking" };
    let progress = Progress::start(&format!("{verb} {}", pool.root().display()));
    let findings: Vec<FindingOut> = pool.doctor(repair)?.into_iter().map(FindingOut::from).collect();
    progress.done();
    let remaining = findings.iter().filter(|f| !f.repaired).count();
    let report = Report { pool: pool.root().to_path_buf(), repair, findings, remaining };
    match output {
        Output::Json => print_json(&report)?,
        Output::Table => print!("{}", render(&report)),
    }
    Ok(if remaining == 0 { ExitCode::SUCCESS } else { EXIT_PROBLEMS })
}

fn render(r: &Report) -> String {
    if r.findings.is_empty() {
        return format!("{}: no problems found\n", r.pool.display());
    }
    let rows: Vec<Vec<String>> = r
        .findings
        .iter()
        .map(|f| {
            let action = match (r.repair, f.repaired) {
                (_, true) => "repaired".to_string(),
                (true, false) => format!("NOT repaired ({})", f.remedy),
                (false, false) => f.remedy.to_string(),
            };
            vec![f.kind.into(), f.path.display().to_string(), f.detail.clone(), action]
        })
        .collect();
    let header = if r.repair { "ACTION" } else { "REMEDY (--repair)" };
    let repaired = r.findings.len() - r.remaining;
    format!(
        "{}\n{} problems, {repaired} repaired, {} remaining\n",
        table(&["KIND", "PATH", "DETAIL", header], &rows),
        r.findings.len(),
        r.remaining
    )
}
