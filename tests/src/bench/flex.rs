//! FlexVolume call latency as kubelet sees it: fork+exec of the driver with
//! stdin from /dev/null, stdout and stderr on one pipe read to EOF, next to
//! `/bin/true` run the same way in the same run (the floor).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::stats::{Recorder, Summary};
use super::stopped;

fn call(exe: &Path, args: &[&str], config: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let (mut reader, writer) = std::io::pipe()?;
    let mut child = Command::new(exe)
        .args(args)
        .env("LOOPVOL_FLEX_CONFIG", config)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .spawn()
        .with_context(|| format!("running {}", exe.display()))?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out)?;
    let status = child.wait()?;
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out);
    if !status.success() || (!exe.ends_with("true") && !text.contains("\"Success\"")) {
        bail!("{} {args:?}: {status}: {text}", exe.display());
    }
    Ok(elapsed)
}

/// `runs` of each, interleaved (true, init, mount+unmount per round) so that
/// machine noise hits all of them alike.
pub fn run(exe: &Path, work: &Path, runs: usize, size: &str, rec: &Recorder) -> anyhow::Result<Value> {
    let root = work.join("flex");
    std::fs::create_dir_all(&root)?;
    let root = std::fs::canonicalize(&root)?;
    let config = root.join("config.json");
    let text = json!({"pool": root.join("pool"), "stateDir": root.join("state"), "defaultSize": size});
    std::fs::write(&config, text.to_string())?;
    let pod = root.join("pods/p/volumes/loopvol~loopvol/pv-bench");
    let pod_s = pod.to_string_lossy().into_owned();
    let opts =
        r#"{"kubernetes.io/fsType":"","kubernetes.io/readwrite":"rw","kubernetes.io/pvOrVolumeName":"pv-bench"}"#;
    let root_user = nix_is_root();
    if root_user {
        // The first mount creates and formats the volume: measure the steady state.
        std::fs::create_dir_all(&pod)?;
        call(exe, &["mount", &pod_s, opts], &config)?;
        call(exe, &["unmount", &pod_s], &config)?;
    }
    let mut result = Ok(());
    for _ in 0..runs {
        if stopped() {
            break;
        }
        let round = (|| -> anyhow::Result<()> {
            rec.sample("/bin/true", call(Path::new("/bin/true"), &[], &config)?);
            rec.sample("init", call(exe, &["init"], &config)?);
            if root_user {
                std::fs::create_dir_all(&pod)?;
                let m = call(exe, &["mount", &pod_s, opts], &config)?;
                let u = call(exe, &["unmount", &pod_s], &config)?;
                rec.sample("mount", m);
                rec.sample("unmount", u);
                rec.sample("mount+unmount", m + u);
            }
            Ok(())
        })();
        if let Err(e) = round {
            result = Err(e);
            break;
        }
    }
    // Leave nothing mounted (an unmount of an unmounted dir is Success).
    if root_user {
        let _ = call(exe, &["unmount", &pod_s], &config);
    }
    result?;
    let floor = Summary::of(&rec.samples("/bin/true"));
    let init = Summary::of(&rec.samples("init"));
    Ok(json!({
        "runs": runs,
        "exe": exe,
        "mount_measured": root_user,
        "init_over_true_p50": init.p50 / floor.p50.max(1e-9),
        "init_minus_true_p50_ms": init.p50 - floor.p50,
    }))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|r| r.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
