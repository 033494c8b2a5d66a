//! The zone control plane's DNS: `<kuma.io/service>.mesh` (and its RFC 1123 variant, `_` → `.`)
//! answered with a virtual IP from `KUMA_DNS_SERVER_CIDR` (240.0.0.0/4 by default), for local
//! services and for services other zones offer through their ingresses.
//!
//! VIPs are allocated once and persisted (a `Config` resource), so they never change while the
//! service exists: not on reconnects, not on restarts. [`vips`] is the pure allocator; [`server`]
//! keeps the table current from store events and answers UDP queries.

pub mod server;
pub mod vips;
pub use server::{VIPS_CONFIG, load_vips};
