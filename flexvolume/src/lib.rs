//! loopvol's FlexVolume driver: the executable kubelet (and, with attach:true,
//! kube-controller-manager) runs as `<plugin dir>/loopvol~loopvol/loopvol`.
//! Every call prints exactly one JSON object (reply.rs) and nothing else;
//! the work is done by `loopvol_backend`. See ../shared/spec/flexvolume.md for
//! how kubelet really calls a driver.
//!
//! The `loopvol` binary (main.rs) only calls [`run`]. The parsers are public
//! for the fuzz targets in tests/fuzz and for black-box tests.

#![forbid(unsafe_code)]

mod attach;
pub mod config;
pub mod context;
mod device;
mod expand;
mod init;
mod install;
pub mod log;
mod mount;
pub mod options;
pub mod reply;
mod stdio;
mod unmount;
mod waitforattach;

pub use loopvol_backend::quantity;

use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::Mutex;

use context::{absolute_path, Ctx};
use reply::{FlexError, FlexResult, Reply};

/// Tests set this to a call name to force a panic inside that call.
const PANIC_ENV: &str = "LOOPVOL_FLEX_PANIC";

static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// The whole `loopvol` executable: one call, one JSON reply on stdout.
pub fn run() -> ExitCode {
    // First, before anything can print: keep stdout for the reply only.
    let out = stdio::take();
    // The default hook would print to stderr (now /dev/null anyway); keep
    // the message for the Failure reply and the log instead.
    panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let message = format!("{payload}{location}");
        log::error(format_args!("panic: {message}"));
        *PANIC_MESSAGE.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
    }));

    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    // A person asking for help gets usage text, not a reply; kubelet never
    // passes these flags, so its calls are unchanged.
    if let Some(text) = help_text(&args) {
        out.write(text.trim_end());
        return ExitCode::SUCCESS;
    }
    let is_install = args.first().is_some_and(|c| c == "install");
    let reply = match panic::catch_unwind(AssertUnwindSafe(|| dispatch(&args))) {
        Ok(reply) => reply,
        Err(_) => {
            let message = PANIC_MESSAGE.lock().unwrap_or_else(|e| e.into_inner()).take();
            Reply::failure(format!("internal error: {}", message.unwrap_or_else(|| "panic".into())))
        }
    };
    // Messages end up in pod events: strip any secret that slipped in.
    let mut reply = Reply { message: reply.message.as_deref().map(log::redact), ..reply };
    if args.first().is_some_and(|c| c == "isattached") && reply.attached.is_none() {
        // `attached` is always a boolean (spec P17); on Failure kubelet
        // ignores it, the error alone counts.
        reply.attached = Some(false);
    }
    if !reply.is_success() {
        log::warn(format_args!("reply: {}", reply.to_json()));
    }
    out.write(&reply.to_json());

    // Exit codes (spec §1.2 result matrix): Success must exit 0. For
    // Failure kubelet reads the JSON either way, but on a non-zero exit it
    // also logs a warning with the full argv, i.e. the options JSON with the
    // base64 secrets (P13); so kubelet calls exit 0 on Failure too. "Not
    // supported" is honoured with any exit code; 0 is the convention.
    // `install` is run by the installer DaemonSet, not kubelet: there a
    // non-zero exit is what makes a failed install visible.
    if is_install && !reply.is_success() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

const USAGE: &str = "\
loopvol: loopvol's FlexVolume driver (node-local volumes as sparse image files on loop devices)

kubelet runs it as <plugin dir>/loopvol~loopvol/loopvol CALL ARGS...; every call
prints one JSON reply on stdout.

Usage:
  loopvol init
  loopvol mount <pod dir> <json options>
  loopvol unmount <pod dir>
  loopvol attach <json options> <node>              (with attach: true)
  loopvol isattached <json options> <node>
  loopvol waitforattach <device> <json options>
  loopvol detach <volume name> <node>
  loopvol mountdevice <global dir> <device> <json options>
  loopvol unmountdevice <global dir>
  loopvol expandvolume <json options> <device> <new bytes> <old bytes>
  loopvol expandfs <json options> <device> <mount dir> <new bytes> <old bytes>
  loopvol install --plugin-dir DIR [--config FILE]
  loopvol --help | install --help

The config is .loopvol.json beside the binary (or $LOOPVOL_FLEX_CONFIG).
";

const INSTALL_USAGE: &str = "\
loopvol install: installs this binary (and a config) as a FlexVolume driver

Usage:
  loopvol install --plugin-dir DIR [--config FILE]

  --plugin-dir DIR   kubelet's volume plugin dir (e.g.
                     /usr/libexec/kubernetes/kubelet-plugins/volume/exec); the
                     driver goes to DIR/loopvol~loopvol/loopvol
  --config FILE      a loopvol.json to install beside it (checked first)

Files are replaced atomically and only when they changed; kubelet picks the
driver up without a restart. Prints one JSON reply; exits non-zero on failure.
";

/// Usage text for `--help`/`-h`/`help` as the call, or for `install` with
/// `--help`/`-h` among its arguments.
fn help_text(args: &[String]) -> Option<&'static str> {
    let is_help = |a: &String| matches!(a.as_str(), "--help" | "-h");
    match args.split_first() {
        Some((call, _)) if is_help(call) || call == "help" => Some(USAGE),
        Some((call, rest)) if call == "install" && rest.iter().any(is_help) => Some(INSTALL_USAGE),
        _ => None,
    }
}

/// The calls that work on the pool (config, log and pool needed).
const POOL_CALLS: [&str; 9] =
    ["attach", "isattached", "waitforattach", "detach", "mountdevice", "unmountdevice", "mount", "unmount", "expandfs"];

fn forced_panic(call: &str) {
    if std::env::var_os(PANIC_ENV).is_some_and(|v| v == call) {
        panic!("forced panic in {call}");
    }
}

fn dispatch(args: &[String]) -> Reply {
    let Some((call, rest)) = args.split_first() else {
        return Reply::failure("no call given; expected init, mount, unmount or another flexvolume call");
    };
    if !POOL_CALLS.contains(&call.as_str()) {
        forced_panic(call);
    }
    match call.as_str() {
        "init" => init::run(),
        // Kubelet ignores the answer on success too, and caches "Not
        // supported", so it never runs this again (spec P6). Never
        // conditional (P23): answered without reading the config.
        "getvolumename" => Reply::not_supported(),
        "install" => install::run(rest).unwrap_or_else(|e| reply::failure(&e)),
        "expandvolume" => config::load().map(|_| expand::expand_volume()).unwrap_or_else(|e| reply::failure(&e)),
        c if POOL_CALLS.contains(&c) => run_call(call, rest),
        // Removed calls (waitfordetach, getdevicemountpath) and future ones.
        _ => Reply::not_supported(),
    }
}

/// A call that works on the pool: config, log, argv, then the call itself.
fn run_call(call: &str, args: &[String]) -> Reply {
    let result = (|| {
        let config = config::load()?;
        if let Some(file) = log::open(&config.log_path(), call) {
            // Anything a tool or a stray print writes lands in the log.
            stdio::redirect(&file);
            log::capture_backend_events();
        }
        forced_panic(call);
        check_arity(call, args)?;
        let ctx = Ctx::open(config)?;
        call_with(&ctx, call, args)
    })();
    result.unwrap_or_else(|e| {
        log::error(format_args!("{call} failed ({}): {e}", e.class()));
        reply::failure(&e)
    })
}

/// Arguments each call needs (spec §1.3); extra trailing ones are ignored.
fn arity(call: &str) -> (usize, &'static str) {
    match call {
        "attach" => (2, "attach <json> <node>"),
        "isattached" => (2, "isattached <json> <node>"),
        "waitforattach" => (2, "waitforattach <device> <json>"),
        "detach" => (2, "detach <volume name> <node>"),
        "mountdevice" => (3, "mountdevice <global dir> <device> <json>"),
        "unmountdevice" => (1, "unmountdevice <global dir>"),
        "mount" => (2, "mount <pod dir> <json>"),
        "unmount" => (1, "unmount <pod dir>"),
        "expandfs" => (5, "expandfs <json> <device> <mount dir> <new bytes> <old bytes>"),
        _ => (0, ""),
    }
}

fn check_arity(call: &str, args: &[String]) -> FlexResult<()> {
    let (needed, usage) = arity(call);
    if args.len() < needed {
        return Err(FlexError::usage(format!("{call} needs {needed} argument(s), got {}: {usage}", args.len())));
    }
    Ok(())
}

fn call_with(ctx: &Ctx, call: &str, a: &[String]) -> FlexResult<Reply> {
    match call {
        "attach" => attach::attach(ctx, &a[0], &a[1]),
        "isattached" => attach::is_attached(ctx, &a[0], &a[1]),
        "detach" => attach::detach(ctx, &a[0], &a[1]),
        "waitforattach" => waitforattach::run(ctx, &a[0], &a[1]),
        "mountdevice" => device::mount_device(ctx, &absolute_path("global dir", &a[0])?, &a[1], &a[2]),
        "unmountdevice" => device::unmount_device(ctx, &absolute_path("global dir", &a[0])?),
        "mount" => mount::run(ctx, &absolute_path("pod dir", &a[0])?, &a[1]),
        "unmount" => unmount::run(ctx, &absolute_path("pod dir", &a[0])?),
        "expandfs" => expand::expand_fs(ctx, &a[0], &a[1], &a[2], &a[3], &a[4]),
        other => Err(FlexError::usage(format!("unknown call {other:?}"))),
    }
}
