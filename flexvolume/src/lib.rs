//! The FlexVolume driver's parsers as a library, for the fuzz targets in
//! tests/fuzz (options JSON, quantities, config, argv paths) and for
//! black-box tests. The `loopvol` binary (main.rs) declares these modules
//! itself and does not depend on this library, so nothing here changes it.

#![forbid(unsafe_code)]

pub mod config;
pub mod context;
pub mod log;
pub mod options;
pub use loopvol_backend::quantity;
pub mod reply;
