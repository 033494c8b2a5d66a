//! Kuma's order of `matches` (the rest of the configurer is tested through the public API in
//! `tests/mesh_routes.rs`, with golden Envoy JSON and `envoy --mode validate`).

use serde_json::json;

use super::*;

#[test]
fn precedence_sorts_like_kumas_compare_match() {
    let sorted = |ms: Vec<serde_json::Value>| {
        let mut ms = ms;
        ms.sort_by_key(precedence);
        ms
    };
    let exact_short = json!({"path": {"type": "Exact", "value": "/a"}});
    let exact_long = json!({"path": {"type": "Exact", "value": "/abc"}});
    let prefix = json!({"path": {"type": "PathPrefix", "value": "/a"}});
    let prefix_method = json!({"path": {"type": "PathPrefix", "value": "/a"}, "method": "GET"});
    let prefix_headers = json!({"path": {"type": "PathPrefix", "value": "/a"}, "headers": [{"name": "a", "value": "1"}, {"name": "b", "value": "1"}]});
    let prefix_header = json!({"path": {"type": "PathPrefix", "value": "/a"}, "headers": [{"name": "a", "value": "1"}]});
    let prefix_query = json!({"path": {"type": "PathPrefix", "value": "/a"}, "queryParams": [{"name": "a", "value": "1"}]});
    let regex = json!({"path": {"type": "RegularExpression", "value": "/.*"}});
    let no_path = json!({"method": "GET"});
    assert_eq!(
        sorted(vec![
            regex.clone(),
            prefix.clone(),
            prefix_query.clone(),
            prefix_header.clone(),
            exact_short.clone(),
            prefix_headers.clone(),
            prefix_method.clone(),
            exact_long.clone(),
            no_path.clone(),
        ]),
        vec![
            exact_long,
            exact_short,
            prefix_method,
            prefix_headers,
            prefix_header,
            prefix_query,
            prefix,
            no_path,
            regex
        ]
    );
}
