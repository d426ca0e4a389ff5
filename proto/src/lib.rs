//! The CSI v1.12.0 protocol (`csi.v1`), generated from `csi.proto` at build
//! time: prost messages plus tonic servers and clients for every service.

#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod csi {
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

pub use csi::v1;
