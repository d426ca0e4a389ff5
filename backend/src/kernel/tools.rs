//! Running external programs (mkfs, fsck, resize2fs, blkid, ...) with argv,
//! never through a shell, with stdin null and stdout/stderr captured: the
//! FlexVolume binary's stdout must hold only its JSON reply, so nothing a
//! tool prints may be inherited.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Where tools are looked up: kubelet may run FlexVolume drivers with a
/// minimal PATH, so we do not rely on the caller's.
pub const SEARCH_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// A tool still running after this long is killed (a hung mkfs or fsck must
/// not wedge a kubelet call forever). Generous: fsck of a large volume is slow.
pub const TIMEOUT: Duration = Duration::from_secs(600);

/// How much of a failing tool's stderr ends up in `Error::Tool`.
const STDERR_LIMIT: usize = 4096;

/// Runs `program` (looked up in [`SEARCH_DIRS`]) with `args`, stdin null,
/// stdout and stderr captured.
///
/// Errors: the program is missing (`Error::Io`), cannot be spawned
/// (`Error::Io`), exits non-zero, is killed by a signal or runs past
/// [`TIMEOUT`] (`Error::Tool` with the trimmed stderr).
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    let output = run_any(program, args)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(tool_error(program, &output))
    }
}

/// Like [`run`] but returns the output whatever the exit status (the caller
/// interprets exit codes, e.g. blkid's 2 = nothing found, e2fsck's 1 = fixed).
/// Still an error when the program is missing, cannot be spawned, or is
/// killed after [`TIMEOUT`].
pub fn run_any<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    let path = resolve(program)?;
    let started = Instant::now();
    let mut command = Command::new(&path);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Messages we parse (resize2fs' "Operation not permitted", dumpe2fs'
        // "Block count:") must not be translated.
        .env("LC_ALL", "C")
        // Tools that run helpers themselves (mkfs.btrfs, fsck) need a PATH.
        .env("PATH", SEARCH_DIRS.join(":"));
    inherit_locks(&mut command);
    let child = command.spawn().map_err(|e| Error::io("spawn", &path, e))?;
    let (output, timed_out) = wait_with_timeout(child, TIMEOUT).map_err(|e| Error::io("wait for", &path, e))?;
    tracing::debug!(
        program,
        args = ?args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>(),
        status = %output.status,
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "ran tool"
    );
    if timed_out {
        return Err(Error::Tool {
            program: program.to_string(),
            status: format!("killed after {} s", TIMEOUT.as_secs()),
            stderr: trim_stderr(&output.stderr),
        });
    }
    Ok(output)
}

/// Lets the tool inherit the pool locks this thread holds: were we killed
/// while it runs (kubelet's timeout, an OOM kill, a daemon restart), the
/// volume stays locked until the tool exits, and a retry waits for it
/// rather than running a second mkfs on a device the first still holds
/// (found by flexvolume/tests/crash.rs).
fn inherit_locks(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let fds = super::lock::held_by_this_thread();
    if fds.is_empty() {
        return;
    }
    // SAFETY: between fork and exec the closure only calls fcntl(2), which
    // is async-signal-safe, on fds it already owns a list of (no allocation).
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The `Error::Tool` for a finished, failed run.
pub(crate) fn tool_error(program: &str, output: &Output) -> Error {
    Error::Tool {
        program: program.to_string(),
        status: status_text(output.status),
        stderr: trim_stderr(&output.stderr),
    }
}

fn status_text(status: ExitStatus) -> String {
    status.to_string()
}

/// Finds `program` in [`SEARCH_DIRS`]; a name with a `/` is taken as is.
fn resolve(program: &str) -> Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    use std::os::unix::fs::PermissionsExt;
    for dir in SEARCH_DIRS {
        let candidate = Path::new(dir).join(program);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(Error::io("find program", program, std::io::Error::from(std::io::ErrorKind::NotFound)))
}

/// Waits for `child`, draining both pipes on threads so a chatty tool cannot
/// block on a full pipe. Returns (output, timed_out). The child is killed
/// before it is reaped, so its pid cannot have been reused by then.
fn wait_with_timeout(mut child: Child, timeout: Duration) -> std::io::Result<(Output, bool)> {
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel::<()>();
    let stdout = child.stdout.take().map(|pipe| drain(pipe, tx.clone()));
    let stderr = child.stderr.take().map(|pipe| drain(pipe, tx.clone()));
    drop(tx);
    // Both readers hit EOF (and drop their senders) when the tool closes its
    // output, normally at exit; the channel then disconnects.
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    // A tool that closed its output but has not exited yet: poll until the deadline.
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if timed_out {
            // Not reaped yet, so the pid is still ours; ESRCH-like errors are harmless.
            let _ = child.kill();
            break child.wait()?;
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            continue;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let join =
        |h: Option<std::thread::JoinHandle<Vec<u8>>>| h.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    Ok((Output { status, stdout: join(stdout), stderr: join(stderr) }, timed_out))
}

fn drain<R: Read + Send + 'static>(mut pipe: R, done: mpsc::Sender<()>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        drop(done);
        buf
    })
}

/// Lossy UTF-8, whitespace-trimmed, at most about [`STDERR_LIMIT`] bytes
/// (head and tail kept: the cause is usually at the end).
pub(crate) fn trim_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.len() <= STDERR_LIMIT {
        return text.to_string();
    }
    let head_end = floor_char_boundary(text, STDERR_LIMIT / 4);
    let tail_start = ceil_char_boundary(text, text.len() - (STDERR_LIMIT - STDERR_LIMIT / 4));
    format!("{} [...] {}", &text[..head_end], &text[tail_start..])
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = run_any("sh", &["-c", "echo out; echo err >&2; exit 3"]).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn non_zero_exit_is_tool_error() {
        match run("sh", &["-c", "echo 'bad thing' >&2; exit 1"]) {
            Err(Error::Tool { program, status, stderr }) => {
                assert_eq!(program, "sh");
                assert!(status.contains('1'), "{status}");
                assert_eq!(stderr, "bad thing");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stdin_is_null_and_env_is_c_locale() {
        let out = run("sh", &["-c", "cat; echo \"$LC_ALL\""]).unwrap();
        assert_eq!(out.stdout, b"C\n");
    }

    #[test]
    fn missing_program_is_not_found() {
        match run::<&str>("loopvol-no-such-tool", &[]) {
            Err(Error::Io { op, source, .. }) => {
                assert_eq!(op, "find program");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn large_output_does_not_deadlock() {
        let out = run("sh", &["-c", "head -c 1000000 /dev/zero; head -c 300000 /dev/zero >&2"]).unwrap();
        assert_eq!(out.stdout.len(), 1_000_000);
        assert_eq!(out.stderr.len(), 300_000);
    }

    #[test]
    fn timeout_kills() {
        let child = Command::new("/bin/sleep")
            .arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (out, timed_out) = wait_with_timeout(child, Duration::from_millis(50)).unwrap();
        assert!(timed_out);
        assert!(!out.status.success());
    }

    /// A tool outliving a killed caller keeps the caller's locks until it
    /// exits; a tool of a thread without locks gets none.
    #[test]
    fn a_tool_inherits_the_locks_of_its_thread() {
        use crate::kernel::lock;
        let dir = tempfile::tempdir().unwrap();
        let held = lock::acquire(dir.path(), "vol-a", Duration::ZERO).unwrap();
        assert_eq!(lock::held_by_this_thread().len(), 1);
        // A background sleep stands for a tool still running when we die.
        let out = run("sh", &["-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"]).unwrap();
        let pid: i32 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
        held.close_as_if_killed();
        assert!(lock::held_by_this_thread().is_empty());
        let busy = lock::acquire(dir.path(), "vol-a", Duration::from_millis(50));
        // SAFETY: plain kill(2) of the sleep started above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert!(matches!(busy, Err(Error::Busy(_))), "the tool must keep the lock: {busy:?}");
        let again = lock::acquire(dir.path(), "vol-a", Duration::from_secs(5)).expect("free once the tool is gone");

        // Only the tools of the thread holding a lock get it.
        let open_files = || run_any("sh", &["-c", "for f in /proc/$$/fd/*; do readlink \"$f\"; done"]).unwrap().stdout;
        let lock_path = dir.path().join("vol-a.lock").to_string_lossy().into_owned();
        assert!(String::from_utf8_lossy(&open_files()).contains(&lock_path));
        let elsewhere = std::thread::spawn(open_files).join().unwrap();
        assert!(!String::from_utf8_lossy(&elsewhere).contains(&lock_path));
        drop(again);
    }

    #[test]
    fn stderr_is_trimmed() {
        let long = "é".repeat(10_000);
        let t = trim_stderr(long.as_bytes());
        assert!(t.len() < STDERR_LIMIT + 20, "{}", t.len());
        assert!(t.contains("[...]"));
        assert_eq!(trim_stderr(b"  short\n"), "short");
    }
}
