//! Table tests of the pure route table: matching, filters, rewrites, redirects, splits, mirrors.

use meshzone_xds::decode::routes::{HeaderMatchPlan, QueryMatchPlan};

use super::*;

/// A forwarding route to the cluster named like the route.
fn route(name: &str, path: PathMatch) -> RoutePlan {
    fixtures::route(name, path, fixtures::forward(&[(name, 1)], vec![]))
}

fn exact(v: &str) -> ValueMatch {
    ValueMatch::Exact {
        value: v.into(),
        ignore_case: false,
    }
}

fn header(name: &str, matcher: ValueMatch, invert: bool) -> HeaderMatchPlan {
    HeaderMatchPlan {
        name: name.into(),
        matcher,
        invert,
    }
}

/// Kuma's order for `PathPrefix /api` + `x-canary: 1`, `PathPrefix /api`, regex, catch-all.
fn table() -> RouteTable {
    let mut canary = route("canary", PathMatch::Exact("/api".into()));
    canary.matches.headers = vec![header("x-canary", exact("1"), false)];
    let mut canary_prefix = route("canary", PathMatch::Prefix("/api/".into()));
    canary_prefix.matches.headers = canary.matches.headers.clone();
    let mut get_only = route("get-users", PathMatch::Exact("/users".into()));
    get_only.matches.headers = vec![header(":method", exact("GET"), false)];
    let mut v2 = route("query-v2", PathMatch::Prefix("/q".into()));
    v2.matches.query = vec![QueryMatchPlan {
        name: "v".into(),
        matcher: ValueMatch::Regex("[0-9]+".into()),
    }];
    let mut no_debug = route("no-debug", PathMatch::Prefix("/debug".into()));
    no_debug.matches.headers = vec![header("x-debug", ValueMatch::Present(true), true)];
    RouteTable::new(&[
        canary,
        canary_prefix,
        get_only,
        route("api", PathMatch::Prefix("/api".into())),
        v2,
        route("regex", PathMatch::Regex("/img/[a-z]+\\.png".into())),
        no_debug,
        route("default", PathMatch::Prefix("/".into())),
    ])
    .expect("compiles")
}

fn found(
    t: &RouteTable,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    let view = RequestView {
        method,
        path,
        query,
        authority: Some("backend.mesh"),
        headers: &map,
    };
    t.find(&view).map(|r| r.plan.name.clone())
}

#[test]
fn requests_take_the_first_route_that_matches() {
    let t = table();
    type Row<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let rows: &[Row] = &[
        ("GET", "/api", &[("x-canary", "1")], "canary"),
        ("GET", "/api/items", &[("x-canary", "1")], "canary"),
        ("GET", "/api/items", &[("x-canary", "2")], "api"),
        ("GET", "/api", &[], "api"),
        ("GET", "/apix", &[("x-canary", "1")], "api"),
        ("GET", "/users", &[], "get-users"),
        ("POST", "/users", &[], "default"),
        ("GET", "/users/1", &[], "default"),
        ("GET", "/q?v=12", &[], "query-v2"),
        ("GET", "/q?a=1&v=7", &[], "query-v2"),
        ("GET", "/q?v=x1", &[], "default"),
        ("GET", "/q", &[], "default"),
        ("GET", "/img/cat.png", &[], "regex"),
        ("GET", "/img/cat.png/x", &[], "default"),
        ("GET", "/debug", &[], "no-debug"),
        ("GET", "/debug", &[("x-debug", "1")], "default"),
    ];
    for (method, path, headers, want) in rows {
        assert_eq!(
            found(&t, method, path, headers).as_deref(),
            Some(*want),
            "{method} {path} {headers:?}"
        );
    }
    let only_api =
        RouteTable::new(&[route("api", PathMatch::Prefix("/api".into()))]).expect("compiles");
    assert_eq!(found(&only_api, "GET", "/other", &[]), None, "404");
}

#[test]
fn value_matchers_follow_envoy() {
    let m = |v: ValueMatch| Matcher::new(&v).expect("compiles");
    let ic = |value: &str| ValueMatch::Prefix {
        value: value.into(),
        ignore_case: true,
    };
    let rows: Vec<(Matcher, Option<&str>, bool)> = vec![
        (m(exact("a")), Some("a"), true),
        (m(exact("a")), Some("A"), false),
        (m(exact("a")), None, false),
        (m(ic("ab")), Some("ABC"), true),
        (
            m(ValueMatch::Suffix {
                value: "z".into(),
                ignore_case: false,
            }),
            Some("xyz"),
            true,
        ),
        (
            m(ValueMatch::Contains {
                value: "y".into(),
                ignore_case: false,
            }),
            Some("xyz"),
            true,
        ),
        (m(ValueMatch::Regex("[0-9]{3}".into())), Some("123"), true),
        (m(ValueMatch::Regex("[0-9]{3}".into())), Some("1234"), false),
        (m(ValueMatch::Present(true)), Some(""), true),
        (m(ValueMatch::Present(true)), None, false),
        (m(ValueMatch::Present(false)), None, true),
        (m(ValueMatch::Present(false)), Some("x"), false),
    ];
    for (i, (matcher, value, want)) in rows.iter().enumerate() {
        assert_eq!(
            matcher.matches(*value),
            *want,
            "row {i}: {matcher:?} {value:?}"
        );
    }
}

#[test]
fn a_90_10_split_is_exact_over_every_1000_requests() {
    let split = Split::new(&[
        WeightedClusterPlan {
            cluster: "v1".into(),
            weight: 90,
        },
        WeightedClusterPlan {
            cluster: "v2".into(),
            weight: 10,
        },
    ]);
    let picks: Vec<String> = (0..3000).map(|_| split.pick().to_string()).collect();
    // Every window of 1000 consecutive picks, not only the aligned ones.
    for start in (0..2000).step_by(37) {
        let v2 = picks[start..start + 1000]
            .iter()
            .filter(|c| *c == "v2")
            .count();
        assert_eq!(v2, 100, "window starting at {start}");
    }
    // Smooth: never two v2 in a row.
    assert!(picks.windows(2).all(|w| !(w[0] == "v2" && w[1] == "v2")));
    let uneven = Split::new(&[
        WeightedClusterPlan {
            cluster: "a".into(),
            weight: 1,
        },
        WeightedClusterPlan {
            cluster: "b".into(),
            weight: 2,
        },
        WeightedClusterPlan {
            cluster: "off".into(),
            weight: 0,
        },
    ]);
    let picks: Vec<&str> = (0..6).map(|_| uneven.pick()).collect();
    assert_eq!(picks.iter().filter(|p| **p == "a").count(), 2);
    assert_eq!(picks.iter().filter(|p| **p == "b").count(), 4);
    assert!(!picks.contains(&"off"), "weight 0 takes nothing");
}

#[test]
fn mirrors_copy_their_share_exactly() {
    for (per_million, of, want) in [
        (100_000u32, 100u64, 10usize),
        (1_000_000, 7, 7),
        (0, 1000, 0),
        (500_000, 10, 5),
    ] {
        let got = (0..of).filter(|n| mirrored(*n, per_million)).count();
        assert_eq!(got, want, "{per_million} per million of {of}");
    }
}

#[test]
fn rewrites_replace_what_the_route_matched() {
    let with_rewrite = |path: PathMatch, rewrite: PathRewrite| {
        let mut r = route("r", path);
        if let RouteActionPlan::Forward(f) = &mut r.action {
            f.path_rewrite = Some(rewrite);
        }
        Route::new(&r).expect("compiles")
    };
    let prefix = with_rewrite(
        PathMatch::Prefix("/api/".into()),
        PathRewrite::Prefix("/v2/".into()),
    );
    assert_eq!(
        prefix.rewritten_path("/api/items", Some("a=1")),
        "/v2/items?a=1"
    );
    let exact = with_rewrite(
        PathMatch::Exact("/api".into()),
        PathRewrite::Prefix("/v2".into()),
    );
    assert_eq!(exact.rewritten_path("/api", None), "/v2");
    let full = with_rewrite(
        PathMatch::Prefix("/".into()),
        PathRewrite::Regex {
            pattern: "^/.*$".into(),
            substitution: "/replaced".into(),
        },
    );
    assert_eq!(full.rewritten_path("/anything/here", None), "/replaced");
    let groups = with_rewrite(
        PathMatch::Prefix("/".into()),
        PathRewrite::Regex {
            pattern: "^/service/([^/]+)(/.*)$".into(),
            substitution: "\\2/instance/\\1".into(),
        },
    );
    assert_eq!(
        groups.rewritten_path("/service/foo/v1/api", None),
        "/v1/api/instance/foo"
    );
    assert_eq!(substitution("$1 \\1"), "$$1 ${1}");
}

#[test]
fn redirects_build_their_location() {
    let r = Route::new(&route("r", PathMatch::Prefix("/old".into()))).expect("compiles");
    let map = HeaderMap::new();
    let view = RequestView {
        method: "GET",
        path: "/old/page",
        query: Some("x=1"),
        authority: Some("backend.mesh:80"),
        headers: &map,
    };
    let plan = |scheme: Option<&str>,
                host: Option<&str>,
                port: Option<u16>,
                path: Option<&str>,
                prefix: Option<&str>,
                strip_query: bool| RedirectPlan {
        scheme: scheme.map(Into::into),
        host: host.map(Into::into),
        port,
        path: path.map(Into::into),
        prefix_rewrite: prefix.map(Into::into),
        status: 302,
        strip_query,
    };
    let rows = [
        (
            plan(None, None, None, None, None, false),
            "http://backend.mesh:80/old/page?x=1",
        ),
        (
            plan(Some("https"), Some("new.example"), None, None, None, false),
            "https://new.example/old/page?x=1",
        ),
        (
            plan(None, None, Some(8080), None, None, true),
            "http://backend.mesh:8080/old/page",
        ),
        (
            plan(None, Some("h"), Some(1), Some("/new"), None, false),
            "http://h:1/new?x=1",
        ),
        (
            plan(None, None, None, None, Some("/new"), false),
            "http://backend.mesh:80/new/page?x=1",
        ),
    ];
    for (p, want) in rows {
        assert_eq!(r.redirect_location(&p, &view), want, "{p:?}");
    }
}

#[test]
fn header_filters_add_set_and_remove() {
    let mut headers = HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static("1"));
    headers.insert("x-b", HeaderValue::from_static("1"));
    headers.insert("x-gone", HeaderValue::from_static("1"));
    let add = |name: &str, append| HeaderAdd {
        name: name.into(),
        value: "2".into(),
        append,
    };
    modify_headers(
        &HeaderModPlan {
            add: vec![
                add("x-a", HeaderAppend::Append),
                add("x-b", HeaderAppend::Overwrite),
                add("x-b", HeaderAppend::AddIfAbsent),
                add("x-new", HeaderAppend::AddIfAbsent),
            ],
            remove: vec!["x-gone".into()],
        },
        &mut headers,
    );
    let all = |n: &str| -> Vec<&str> {
        headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect()
    };
    assert_eq!(all("x-a"), ["1", "2"]);
    assert_eq!(all("x-b"), ["2"]);
    assert_eq!(all("x-new"), ["2"]);
    assert!(all("x-gone").is_empty());
}

/// Route plans for the tests of this crate.
pub mod fixtures {
    use meshzone_xds::decode::WeightedClusterPlan;
    use meshzone_xds::decode::routes::{
        ForwardPlan, HeaderModPlan, MirrorPlan, PathMatch, RouteActionPlan, RouteMatchPlan,
        RoutePlan,
    };

    pub fn forward(clusters: &[(&str, u32)], mirrors: Vec<MirrorPlan>) -> RouteActionPlan {
        RouteActionPlan::Forward(ForwardPlan {
            clusters: clusters
                .iter()
                .map(|(c, w)| WeightedClusterPlan {
                    cluster: c.to_string(),
                    weight: *w,
                })
                .collect(),
            path_rewrite: None,
            host_rewrite: None,
            mirrors,
            hash_policy: vec![],
            timeouts: Default::default(),
            retry: None,
        })
    }

    /// A route matching only by path.
    pub fn route(name: &str, path: PathMatch, action: RouteActionPlan) -> RoutePlan {
        RoutePlan {
            name: name.into(),
            matches: RouteMatchPlan {
                path,
                headers: vec![],
                query: vec![],
            },
            action,
            request_headers: HeaderModPlan::default(),
            response_headers: HeaderModPlan::default(),
        }
    }
}
