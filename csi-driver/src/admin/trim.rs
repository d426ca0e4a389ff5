//! `loopvol-csi trim [VOLUME…]`: trims the staged filesystems of the pool's
//! volumes (or the given ones) now, over `Pool::trim`, and prints the bytes
//! each gave back to the pool. Thick, block, read-only and unstaged volumes
//! are skipped. Exit 1 when a trim failed.

use std::process::ExitCode;

use loopvol_backend::Pool;
use serde::Serialize;

use super::{human, print_json, table, Output, EXIT_PROBLEMS};

#[derive(Debug, Serialize)]
struct Row {
    id: String,
    /// Bytes the trim gave back to the pool.
    returned_bytes: u64,
    allocated_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    volumes: Vec<Row>,
    returned_bytes: u64,
}

pub fn run(pool: &Pool, ids: Vec<String>, output: Output) -> anyhow::Result<ExitCode> {
    let ids = if ids.is_empty() { pool.volume_ids()? } else { ids };
    let mut volumes = Vec::with_capacity(ids.len());
    for id in ids {
        volumes.push(match pool.trim(&id) {
            Ok(o) => Row {
                returned_bytes: o.returned_bytes(),
                allocated_bytes: o.allocated_after,
                skipped: o.skipped,
                error: None,
                id,
            },
            Err(e) => Row { id, returned_bytes: 0, allocated_bytes: 0, skipped: None, error: Some(e.to_string()) },
        });
    }
    let failed = volumes.iter().any(|r| r.error.is_some());
    let report = Report { returned_bytes: volumes.iter().map(|r| r.returned_bytes).sum(), volumes };
    match output {
        Output::Json => print_json(&report)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = report
                .volumes
                .iter()
                .map(|r| {
                    let outcome = match (&r.error, r.skipped) {
                        (Some(e), _) => format!("failed: {e}"),
                        (None, Some(why)) => format!("skipped: {why}"),
                        (None, None) => "trimmed".into(),
                    };
                    vec![r.id.clone(), human(r.returned_bytes), human(r.allocated_bytes), outcome]
                })
                .collect();
            print!("{}", table(&["VOLUME", "RETURNED", "ALLOCATED", "OUTCOME"], &rows));
            println!("{} bytes returned to the pool", report.returned_bytes);
        }
    }
    Ok(if failed { EXIT_PROBLEMS } else { ExitCode::SUCCESS })
}
