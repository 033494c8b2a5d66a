//! KDS: the sync protocol between the global control plane and zone control planes.
//!
//! [`sync`] is the pure half (what each side offers, renaming, deltas, reconciliation);
//! [`wire`] converts to and from the protobuf messages and applies planned operations;
//! [`global`] serves the streams on global, [`zone`] runs them from a zone.
//!
//! Both streams are opened by the zone. Each starts with the full set (the receiver reconciles
//! and deletes stale copies), then carries deltas; every batch is acknowledged, with per-resource
//! rejections. Everything is driven by store events: no polling.

pub mod global;
pub mod inspect;
pub mod inter_cp;
mod metrics;
pub mod sync;
pub mod wire;
pub mod zone;

pub use metrics::KdsMetrics;

pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("meshzone.kds.v1");
}
