//! The driver's log: a file under the state directory. Never stdout or
//! stderr (kubelet parses both as the reply, spec P1) and never the plugin
//! directory (any write there makes kubelet re-probe the driver, spec P8).
//! Every line passes through [`redact`], so a secret value can only reach the
//! log as `[redacted]`.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Past this size the log is rotated to `<log>.1` (one old generation).
const MAX_LOG_BYTES: u64 = 8 << 20;
const REDACTED: &str = "[redacted]";

static SINK: Mutex<Option<File>> = Mutex::new(None);
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static CALL: Mutex<String> = Mutex::new(String::new());

/// Remembers a secret value so that [`redact`] removes it from every log line
/// and reply message.
pub fn add_secret(value: &str) {
    if value.is_empty() {
        return;
    }
    let mut secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    secrets.push(value.to_string());
    // Longest first, so that a secret containing another is removed whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Forgets every registered secret. One driver process serves one call, so
/// the binary never needs this; the fuzz targets (tests/fuzz), which parse
/// millions of options in one process, call it between inputs.
#[doc(hidden)]
#[allow(dead_code)]
pub fn forget_secrets() {
    SECRETS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

pub fn redact(text: &str) -> String {
    let secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    out
}

/// Opens (creating) the log file; returns it so that the caller can also
/// point stdio at it. Failure to log is never a failure of the call.
pub fn open(path: &Path, call: &str) -> Option<File> {
    *CALL.lock().unwrap_or_else(|e| e.into_inner()) = call.to_string();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok()?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::rename(path, old);
    }
    let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path).ok()?;
    let clone = file.try_clone().ok();
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    clone
}

/// Routes the backend's `tracing` events into this log (through [`redact`]).
pub fn capture_backend_events() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| BackendWriter)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

struct BackendWriter;

impl Write for BackendWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let text = text.trim_end();
        if !text.is_empty() {
            write("backend", &text);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write(level: &str, message: &dyn Display) {
    // try_lock: the panic hook logs too, and a panic while this thread holds
    // the lock must not deadlock (the process is single-threaded otherwise).
    let mut sink = match SINK.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    let Some(file) = sink.as_mut() else { return };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let call = CALL.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let line = format!(
        "{}.{:03} pid={} call={} {level}: {}\n",
        now.as_secs(),
        now.subsec_millis(),
        std::process::id(),
        call,
        redact(&message.to_string()).replace('\n', " "),
    );
    // One write(2) per line: O_APPEND keeps lines of concurrent calls whole.
    let _ = file.write_all(line.as_bytes());
}

pub fn info(message: impl Display) {
    write("info", &message);
}

pub fn warn(message: impl Display) {
    write("warn", &message);
}

pub fn error(message: impl Display) {
    write("error", &message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_longest_first() {
        add_secret("hunter2");
        add_secret("hunter2-long");
        assert_eq!(redact("a hunter2-long b hunter2 c"), "a [redacted] b [redacted] c");
    }
}
