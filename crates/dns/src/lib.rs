//! The zone control plane's DNS: `<kuma.io/service>.mesh` (and its RFC 1123 variant, `_` → `.`)
//! answered with a virtual IP from `KUMA_DNS_SERVER_CIDR` (240.0.0.0/4 by default), for local
//! services and for services other zones offer through their ingresses.
//!
//! VIPs are allocated once and persisted (a `Config` resource), so they never change while the
//! service exists: not on reconnects, not on restarts. [`vips`] is the pure allocator; `server`
//! keeps the table current from store events and answers UDP queries.

//!
//! Without the default `server` feature only the pure parts remain ([`vips`] names and [`answer`]),
//! which kuma-dp's local resolver uses without pulling in the store.

pub mod answer;
#[cfg(feature = "server")]
pub mod server;
pub mod vips;
#[cfg(feature = "server")]
pub use server::{VIPS_CONFIG, VipError, load_vips};
