//! Kubelet reads stdout and stderr merged and parses all of it as the one
//! reply (spec §0.1), and waits for EOF on that pipe (P4). So at start-up the
//! real stdout is kept aside as a close-on-exec descriptor for the reply
//! alone, and descriptors 1 and 2 are pointed at /dev/null (later the log):
//! a stray print, a panic message or a tool's inherited output can then never
//! reach kubelet, and no child process can hold kubelet's pipe open.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;

pub struct ReplyOut(Option<File>);

/// Takes the real stdout and silences descriptors 1 and 2.
pub fn take() -> ReplyOut {
    // try_clone_to_owned duplicates with F_DUPFD_CLOEXEC: children never inherit it.
    let out = std::io::stdout().as_fd().try_clone_to_owned().ok().map(File::from);
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        redirect(&null);
    }
    ReplyOut(out)
}

/// Points descriptors 1 and 2 at `file` (the log).
pub fn redirect(file: &File) {
    let _ = nix::unistd::dup2_stdout(file);
    let _ = nix::unistd::dup2_stderr(file);
}

impl ReplyOut {
    /// Writes the reply as one line with a single write, then closes it.
    pub fn write(self, json: &str) {
        if let Some(mut out) = self.0 {
            let line = format!("{json}\n");
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}
