//! Envoy's tag extraction (`source/common/config/well_known_names.cc`) for the names kuma-dp
//! keeps: a dotted stat becomes a Prometheus name and labels. Pure.

/// The object a stat belongs to: the second part of its dotted name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `cluster.<name>.` → `envoy_cluster_name`
    Cluster,
    /// `http.<prefix>.` → `envoy_http_conn_manager_prefix`
    Http,
    /// `listener.<address>.` → `envoy_listener_address`
    Listener,
    /// `tcp.<prefix>.` → `envoy_tcp_prefix`
    Tcp,
}

impl Scope {
    const ALL: [Scope; 4] = [Scope::Cluster, Scope::Http, Scope::Listener, Scope::Tcp];

    pub fn prefix(self) -> &'static str {
        match self {
            Scope::Cluster => "cluster",
            Scope::Http => "http",
            Scope::Listener => "listener",
            Scope::Tcp => "tcp",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Scope::Cluster => "envoy_cluster_name",
            Scope::Http => "envoy_http_conn_manager_prefix",
            Scope::Listener => "envoy_listener_address",
            Scope::Tcp => "envoy_tcp_prefix",
        }
    }
}

/// A stat under its Prometheus name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub name: String,
    pub labels: Vec<(&'static str, String)>,
}

/// The scope and object a dotted stat belongs to (`cluster.backend.x` → cluster `backend`),
/// matched against `known` first as [`tag`] does; `None` outside the four scopes.
pub fn object_of<'a>(dotted: &'a str, known: &[(Scope, &str)]) -> Option<(Scope, &'a str)> {
    Scope::ALL.into_iter().find_map(|scope| {
        let rest = dotted
            .strip_prefix(scope.prefix())
            .and_then(|r| r.strip_prefix('.'))?;
        let object = known
            .iter()
            .filter(|(s, o)| {
                *s == scope
                    && rest.len() > o.len() + 1
                    && rest.starts_with(o)
                    && rest.as_bytes()[o.len()] == b'.'
            })
            .map(|(_, o)| &rest[..o.len()])
            .max_by_key(|o| o.len())
            .or_else(|| rest.split_once('.').map(|(o, _)| o))?;
        Some((scope, object))
    })
}

/// Tags a dotted stat. Object names may hold dots (`outbound:127.0.0.1:5000`): `known` lists
/// the objects the proxy has (longest match wins); an unknown one ends at the first dot, as in
/// Envoy. Our per-endpoint and per-peer stats (`endpoint.<address>.`, `peer.<id>.`) become the
/// labels `envoy_endpoint_address` and `envoy_peer`, so the names stay few.
pub fn tag(dotted: &str, known: &[(Scope, &str)]) -> Tagged {
    let mut labels = Vec::new();
    let mut name = String::from("envoy_");
    let mut stat = dotted;
    if let Some((scope, object)) = object_of(dotted, known) {
        labels.push((scope.label(), object.to_string()));
        name.push_str(scope.prefix());
        name.push('_');
        stat = &dotted[scope.prefix().len() + object.len() + 2..];
    }
    for (part, label) in [
        ("endpoint.", "envoy_endpoint_address"),
        ("peer.", "envoy_peer"),
    ] {
        if let Some((id, last)) = stat.strip_prefix(part).and_then(|r| r.rsplit_once('.')) {
            labels.push((label, id.to_string()));
            name.push_str(part.trim_end_matches('.'));
            name.push('_');
            stat = last;
        }
    }
    // `…_rq_2xx` → `…_rq_xx{envoy_response_code_class="2"}`.
    let mut stat = stat.to_string();
    let b = stat.as_bytes();
    if b.len() >= 7
        && stat.ends_with("xx")
        && b[b.len() - 3].is_ascii_digit()
        && stat[..b.len() - 3].ends_with("_rq_")
    {
        let class = (b[b.len() - 3] as char).to_string();
        stat.replace_range(b.len() - 3..b.len() - 2, "");
        labels.push(("envoy_response_code_class", class));
    }
    name.push_str(&stat);
    let name = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Tagged { name, labels }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dotted: &str, known: &[(Scope, &str)]) -> (String, Vec<(&'static str, String)>) {
        let t = tag(dotted, known);
        (t.name, t.labels)
    }

    #[test]
    fn envoys_well_known_tags() {
        let l = |v: &[(&'static str, &str)]| {
            v.iter()
                .map(|(k, v)| (*k, v.to_string()))
                .collect::<Vec<_>>()
        };
        let known = [
            (Scope::Cluster, "backend"),
            (Scope::Http, "outbound:127.0.0.1:5000"),
            (Scope::Listener, "outbound:127.0.0.1:5000"),
        ];
        type Row = (&'static str, &'static str, Vec<(&'static str, String)>);
        let table: &[Row] = &[
            (
                "cluster.backend.upstream_rq_total",
                "envoy_cluster_upstream_rq_total",
                l(&[("envoy_cluster_name", "backend")]),
            ),
            (
                "cluster.backend.upstream_rq_5xx",
                "envoy_cluster_upstream_rq_xx",
                l(&[
                    ("envoy_cluster_name", "backend"),
                    ("envoy_response_code_class", "5"),
                ]),
            ),
            (
                "cluster.backend.upstream_rq_time",
                "envoy_cluster_upstream_rq_time",
                l(&[("envoy_cluster_name", "backend")]),
            ),
            (
                "http.outbound:127.0.0.1:5000.downstream_rq_2xx",
                "envoy_http_downstream_rq_xx",
                l(&[
                    ("envoy_http_conn_manager_prefix", "outbound:127.0.0.1:5000"),
                    ("envoy_response_code_class", "2"),
                ]),
            ),
            (
                "listener.outbound:127.0.0.1:5000.downstream_cx_total",
                "envoy_listener_downstream_cx_total",
                l(&[("envoy_listener_address", "outbound:127.0.0.1:5000")]),
            ),
            // Unknown objects end at the first dot, as in Envoy.
            (
                "cluster.other.upstream_cx_overflow",
                "envoy_cluster_upstream_cx_overflow",
                l(&[("envoy_cluster_name", "other")]),
            ),
            (
                "cluster.backend.endpoint.127.0.0.1:9000.cx_total",
                "envoy_cluster_endpoint_cx_total",
                l(&[
                    ("envoy_cluster_name", "backend"),
                    ("envoy_endpoint_address", "127.0.0.1:9000"),
                ]),
            ),
            (
                "listener.in.peer.spiffe://default/web.cx_total",
                "envoy_listener_peer_cx_total",
                l(&[
                    ("envoy_listener_address", "in"),
                    ("envoy_peer", "spiffe://default/web"),
                ]),
            ),
            (
                "listener.in.rbac.denied",
                "envoy_listener_rbac_denied",
                l(&[("envoy_listener_address", "in")]),
            ),
            (
                "control_plane.lds.update_rejected",
                "envoy_control_plane_lds_update_rejected",
                vec![],
            ),
            (
                "cluster.backend.health_check.success",
                "envoy_cluster_health_check_success",
                l(&[("envoy_cluster_name", "backend")]),
            ),
        ];
        for (dotted, name, labels) in table {
            assert_eq!(
                t(dotted, &known),
                (name.to_string(), labels.clone()),
                "{dotted}"
            );
        }
    }
}
