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

/// The proxy admin stream (`meshzone.proxyadmin.v1.ProxyAdmin`): a zone CP reads a connected
/// proxy's stats and clusters on a stream the proxy opened.
pub mod proxy_admin {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("meshzone.proxyadmin.v1");

    /// What an [`AdminRequest`] may ask for: Envoy's text `/stats`.
    pub const STATS: &str = "stats";
    /// Envoy's text `/clusters`.
    pub const CLUSTERS: &str = "clusters";
    /// What the CP last sent the proxy (forwarded requests only), JSON.
    pub const CONFIG_DUMP: &str = "config-dump";
}

pub use envoy_types;
pub use envoy_types::pb::envoy::service::discovery::v3 as discovery;
