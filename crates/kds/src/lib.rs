//! KDS: the sync protocol between the global control plane and zone control planes.
//!
//! [`sync`] is the pure half (what each side offers, renaming, deltas, reconciliation);
//! [`wire`] converts to and from the protobuf messages; `global` and `zone` run the streams.

pub mod sync;

pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("meshzone.kds.v1");
}
