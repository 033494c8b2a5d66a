//! Envoy xDS for the mesh: the pure generator from mesh state to Envoy resources
//! ([`generate`]), and the decoder that turns received Envoy resources into a proxy's own plan
//! ([`decode`]). Resource and type names shared by both sides live in [`names`].
//!
//! This is the only crate of ours that depends on `envoy-types` (it is slow to compile).
//! It does no I/O.

pub mod decode;
pub mod generate;
pub mod names;
pub mod policy;

pub use envoy_types;
pub use envoy_types::pb::envoy::service::discovery::v3 as discovery;
