//! Names shared by the control plane and the proxy: xDS type URLs and resource names.

use std::fmt;

/// The xDS resource types we serve, in the order a client should apply them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeUrl {
    Cluster,
    ClusterLoadAssignment,
    Listener,
    Secret,
}

impl TypeUrl {
    pub const ALL: [TypeUrl; 4] = [
        TypeUrl::Cluster,
        TypeUrl::ClusterLoadAssignment,
        TypeUrl::Listener,
        TypeUrl::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    pub fn parse(s: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Short name used in stats and insights (`lds`, `cds`, `eds`, `sds`).
    pub fn short(self) -> &'static str {
        match self {
            TypeUrl::Listener => "lds",
            TypeUrl::Cluster => "cds",
            TypeUrl::ClusterLoadAssignment => "eds",
            TypeUrl::Secret => "sds",
        }
    }
}

impl fmt::Display for TypeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn inbound_listener(address: &str, port: u32) -> String {
    format!("inbound:{address}:{port}")
}

pub fn outbound_listener(address: &str, port: u32) -> String {
    format!("outbound:{address}:{port}")
}

/// The cluster of the local application behind an inbound.
pub fn app_cluster(service_port: u32) -> String {
    format!("localhost:{service_port}")
}

pub fn identity_secret(mesh: &str) -> String {
    format!("identity_cert:secret:{mesh}")
}

pub fn ca_secret(mesh: &str) -> String {
    format!("mesh_ca:secret:{mesh}")
}

/// A zone egress's cluster towards an ExternalService of a mesh.
pub fn external_cluster(mesh: &str, service: &str) -> String {
    format!("external:{mesh}:{service}")
}

/// Envoy node id of a data plane proxy: `<mesh>.<name>`.
pub fn node_id(mesh: &str, name: &str) -> String {
    format!("{mesh}.{name}")
}

/// Splits a node id at the first dot into mesh and name.
pub fn parse_node_id(id: &str) -> Option<(&str, &str)> {
    id.split_once('.')
        .filter(|(m, n)| !m.is_empty() && !n.is_empty())
}
