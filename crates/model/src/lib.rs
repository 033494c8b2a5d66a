//! The resource model of the mesh: resource types and their descriptors, typed specs, the
//! Universal YAML/JSON form, validation, views derived from resources, and the pure targetRef
//! policy engine (`policy`: selection, ordering and merging of policy confs for a proxy).
//!
//! This crate does no I/O: no sockets, files or clock. Everything here is a pure function of its
//! inputs so that it can be table-tested.

pub mod descriptor;
pub mod external_service;
pub mod insights;
pub mod policies;
pub mod policy;
pub mod resource;
pub mod specs;
pub mod testdata;
pub mod validate;
pub mod virtual_outbound;

pub use descriptor::{CpRole, Descriptor, Direction, Owner, ResourceType, Scope, WriteRefusal};
pub use resource::{
    DocumentError, Meta, Resource, ResourceKey, Spec, format_time, parse_documents,
    proxy_insight_types, to_yaml_string,
};
pub use validate::{Violation, Violations, validate};

/// The version of this build, reported by every binary and API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Mesh that a standalone zone or a global creates on first start.
pub const DEFAULT_MESH: &str = "default";
