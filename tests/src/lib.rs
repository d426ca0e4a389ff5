//! Black-box tooling for loopvol: the pieces of `csi-bench`, which the
//! cross-driver tests in `tests/tests/` reuse (a CSI client over a unix socket).

#![forbid(unsafe_code)]

pub mod bench;
