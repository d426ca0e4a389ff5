//! The `loopvol` executable kubelet runs; everything is in the library.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    loopvol_flexvolume::run()
}
