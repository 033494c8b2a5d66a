//! A MeshMetric Prometheus listener (`_kuma:metrics:prometheus:<clientId>`, see
//! `crate::policy::mesh_metric`) as the plan kuma-dp serves: the address to bind, the path,
//! and the merged conf from the listener's metadata. kuma-dp does not run its route (that is
//! Envoy's way to its admin); a listener of that name without the metadata is refused.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::{Value, value};
use meshzone_model::policies::mesh_metric::MetricConf;
use serde::Serialize;

use super::{DecodeError, err, socket_addr};
use crate::policy::mesh_metric::{METRICS_LISTENER_PREFIX, METRICS_METADATA};

/// One scrape endpoint kuma-dp serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricsPlan {
    pub name: String,
    pub address: SocketAddr,
    /// Exact request path answered; anything else is 404.
    pub path: String,
    pub conf: MetricConf,
}

/// Whether a listener is a MeshMetric scrape endpoint.
pub fn is_metrics_listener(name: &str) -> bool {
    name.starts_with(METRICS_LISTENER_PREFIX)
}

/// A protobuf `Value` as JSON (whole doubles become integers, as the conf's ports are).
pub fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(value::Kind::NullValue(_)) => serde_json::Value::Null,
        Some(value::Kind::BoolValue(b)) => (*b).into(),
        Some(value::Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && *n >= 0.0 && *n <= u32::MAX as f64 {
                (*n as u64).into()
            } else {
                serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into)
            }
        }
        Some(value::Kind::StringValue(s)) => s.clone().into(),
        Some(value::Kind::ListValue(l)) => l.values.iter().map(value_to_json).collect(),
        Some(value::Kind::StructValue(s)) => s
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

/// Decodes a listener [`is_metrics_listener`] named.
pub fn decode(l: &Listener) -> Result<MetricsPlan, DecodeError> {
    let name = l.name.clone();
    let address = socket_addr(&name, l.address.as_ref())?;
    let meta = l
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(METRICS_METADATA))
        .ok_or_else(|| {
            err(
                &name,
                format!("metadata.filter_metadata[{METRICS_METADATA}]: must be defined"),
            )
        })?;
    let field = |key: &str| meta.fields.get(key).map(value_to_json);
    let path = match field("path") {
        Some(serde_json::Value::String(p)) if p.starts_with('/') => p,
        _ => {
            return Err(err(
                &name,
                format!(
                    "metadata.filter_metadata[{METRICS_METADATA}].path: must be a path starting with /"
                ),
            ));
        }
    };
    let conf: MetricConf =
        serde_json::from_value(field("conf").unwrap_or_default()).map_err(|e| {
            err(
                &name,
                format!("metadata.filter_metadata[{METRICS_METADATA}].conf: {e}"),
            )
        })?;
    let mut v = meshzone_model::validate::Violations::default();
    meshzone_model::policies::mesh_metric::check_conf(&conf, "conf", &mut v);
    if let Err(v) = v.into_result() {
        return Err(err(
            &name,
            format!("metadata.filter_metadata[{METRICS_METADATA}]: {v}"),
        ));
    }
    Ok(MetricsPlan {
        name,
        address,
        path,
        conf,
    })
}
