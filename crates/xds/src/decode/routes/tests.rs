//! Table tests of the route decoder: what each Envoy field becomes, and the refusals naming
//! the field.

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy, VirtualHost, route_action::HashPolicy,
};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};

use super::*;

fn string_exact(v: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(v.into())),
        ..Default::default()
    }
}

fn to_cluster(c: &str) -> Option<Action> {
    Some(Action::Route(RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(c.into())),
        ..Default::default()
    }))
}

fn prefix(p: &str) -> Option<RouteMatch> {
    Some(RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(p.into())),
        ..Default::default()
    })
}

fn config(routes: Vec<Route>) -> RouteConfiguration {
    RouteConfiguration {
        name: "backend".into(),
        virtual_hosts: vec![VirtualHost {
            name: "backend".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn one(route: Route) -> Result<RoutePlan, String> {
    route_configuration(&config(vec![route])).map(|mut v| v.remove(0))
}

fn header_add(name: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.into(),
            value: value.into(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

#[test]
fn a_full_route_becomes_its_plan() {
    let route = Route {
        name: "canary".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Path("/api".into())),
            headers: vec![
                HeaderMatcher {
                    name: ":method".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(string_exact(
                        "GET",
                    ))),
                    ..Default::default()
                },
                HeaderMatcher {
                    name: "X-Debug".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
                    invert_match: true,
                    ..Default::default()
                },
            ],
            query_parameters: vec![QueryParameterMatcher {
                name: "v".into(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    StringMatcher {
                        match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                            regex: "[0-9]+".into(),
                            engine_type: None,
                        })),
                        ..Default::default()
                    },
                )),
            }],
            ..Default::default()
        }),
        request_headers_to_add: vec![header_add(
            "x-via",
            "mesh",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        )],
        request_headers_to_remove: vec!["X-Remove".into()],
        response_headers_to_add: vec![header_add(
            "x-served",
            "1",
            HeaderAppendAction::AppendIfExistsOrAdd,
        )],
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: vec![
                    ClusterWeight {
                        name: "backend_v1".into(),
                        weight: Some(UInt32Value { value: 90 }),
                        ..Default::default()
                    },
                    ClusterWeight {
                        name: "backend_v2".into(),
                        weight: Some(UInt32Value { value: 10 }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            })),
            prefix_rewrite: "/v2".into(),
            host_rewrite_specifier: Some(HostRewriteSpecifier::HostRewriteLiteral(
                "api.internal".into(),
            )),
            request_mirror_policies: vec![RequestMirrorPolicy {
                cluster: "shadow".into(),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(FractionalPercent {
                        numerator: 10,
                        denominator: DenominatorType::Hundred as i32,
                    }),
                    runtime_key: String::new(),
                }),
                ..Default::default()
            }],
            timeout: Some(Duration::default()),
            ..Default::default()
        })),
        ..Default::default()
    };
    let plan = one(route).expect("decodes");
    assert_eq!(
        plan,
        RoutePlan {
            name: "canary".into(),
            matches: RouteMatchPlan {
                path: PathMatch::Exact("/api".into()),
                headers: vec![
                    HeaderMatchPlan {
                        name: ":method".into(),
                        matcher: ValueMatch::Exact {
                            value: "GET".into(),
                            ignore_case: false
                        },
                        invert: false,
                    },
                    HeaderMatchPlan {
                        name: "x-debug".into(),
                        matcher: ValueMatch::Present(true),
                        invert: true,
                    },
                ],
                query: vec![QueryMatchPlan {
                    name: "v".into(),
                    matcher: ValueMatch::Regex("[0-9]+".into()),
                }],
            },
            action: RouteActionPlan::Forward(ForwardPlan {
                clusters: vec![
                    WeightedClusterPlan {
                        cluster: "backend_v1".into(),
                        weight: 90
                    },
                    WeightedClusterPlan {
                        cluster: "backend_v2".into(),
                        weight: 10
                    },
                ],
                path_rewrite: Some(PathRewrite::Prefix("/v2".into())),
                host_rewrite: Some("api.internal".into()),
                mirrors: vec![MirrorPlan {
                    cluster: "shadow".into(),
                    per_million: 100_000
                }],
                hash_policy: vec![],
                // The route's `timeout: 0` turns the request timeout off.
                timeouts: crate::decode::RouteTimeouts {
                    request: None,
                    ..Default::default()
                },
                retry: None,
            }),
            request_headers: HeaderModPlan {
                add: vec![HeaderAdd {
                    name: "x-via".into(),
                    value: "mesh".into(),
                    append: HeaderAppend::Overwrite,
                }],
                remove: vec!["x-remove".into()],
            },
            response_headers: HeaderModPlan {
                add: vec![HeaderAdd {
                    name: "x-served".into(),
                    value: "1".into(),
                    append: HeaderAppend::Append,
                }],
                remove: vec![],
            },
        }
    );
    assert_eq!(
        plan.clusters().collect::<Vec<_>>(),
        ["backend_v1", "backend_v2", "shadow"]
    );
}

#[test]
fn redirects_decode_with_their_status() {
    let route = Route {
        r#match: prefix("/old"),
        action: Some(Action::Redirect(RedirectAction {
            host_redirect: "new.example".into(),
            port_redirect: 8443,
            response_code: 3,
            scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::SchemeRedirect("https".into())),
            path_rewrite_specifier: Some(PathRewriteSpecifier::PrefixRewrite("/new".into())),
            strip_query: true,
        })),
        ..Default::default()
    };
    assert_eq!(
        one(route).expect("decodes").action,
        RouteActionPlan::Redirect(RedirectPlan {
            scheme: Some("https".into()),
            host: Some("new.example".into()),
            port: Some(8443),
            path: None,
            prefix_rewrite: Some("/new".into()),
            status: 307,
            strip_query: true,
        })
    );
}

/// Every refusal names the field path; each row sets one field kuma-dp does not enforce.
#[test]
fn unenforced_fields_are_refused_by_name() {
    let base = || Route {
        name: "r".into(),
        r#match: prefix("/"),
        action: to_cluster("backend"),
        ..Default::default()
    };
    let with_action = |f: fn(&mut RouteAction)| {
        let mut r = base();
        if let Some(Action::Route(a)) = &mut r.action {
            f(a);
        }
        r
    };
    let rows: Vec<(Route, &str)> = vec![
        (
            with_action(|a| {
                a.retry_policy = Some(RetryPolicy {
                    retry_on: "5xx".into(),
                    retriable_headers: vec![Default::default()],
                    ..Default::default()
                })
            }),
            "routes[0] \"r\".route.retry_policy.retriable_headers: not enforced",
        ),
        (
            with_action(|a| a.hash_policy = vec![HashPolicy::default()]),
            "route.hash_policy[0]: a policy specifier is required",
        ),
        (
            with_action(|a| {
                a.retry_policy = Some(RetryPolicy {
                    retry_on: "envoy-ratelimited".into(),
                    ..Default::default()
                })
            }),
            "route.retry_policy.retry_on: \"envoy-ratelimited\" is not enforced",
        ),
        (
            with_action(|a| {
                a.flush_timeout = Some(Duration {
                    seconds: 1,
                    nanos: 0,
                })
            }),
            "route.flush_timeout: not supported",
        ),
        (
            with_action(|a| {
                a.host_rewrite_specifier = Some(HostRewriteSpecifier::AutoHostRewrite(BoolValue {
                    value: true,
                }))
            }),
            "only host_rewrite_literal",
        ),
        (
            {
                let mut r = base();
                r.r#match = Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    case_sensitive: Some(BoolValue { value: false }),
                    ..Default::default()
                });
                r
            },
            "match.case_sensitive: not supported",
        ),
        (
            {
                let mut r = base();
                r.r#match = Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
                        regex: "(unclosed".into(),
                        engine_type: None,
                    })),
                    ..Default::default()
                });
                r
            },
            "match.safe_regex.regex: kuma-dp cannot compile",
        ),
        (
            {
                let mut r = base();
                r.r#match = Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    headers: vec![HeaderMatcher {
                        name: "x".into(),
                        treat_missing_header_as_empty: true,
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                r
            },
            "match.headers[0].treat_missing_header_as_empty",
        ),
        (
            {
                let mut r = base();
                r.request_headers_to_add = vec![HeaderValueOption {
                    append: Some(BoolValue { value: true }),
                    ..header_add("x", "y", HeaderAppendAction::AppendIfExistsOrAdd)
                }];
                r
            },
            "request_headers_to_add[0].append: deprecated",
        ),
        (
            {
                let mut r = base();
                r.action = Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                        clusters: vec![ClusterWeight {
                            name: "a".into(),
                            weight: Some(UInt32Value { value: 0 }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })),
                    ..Default::default()
                }));
                r
            },
            "weighted_clusters.clusters: every weight is 0",
        ),
        (
            {
                let mut r = base();
                r.decorator = Some(Default::default());
                r
            },
            "\"r\".decorator: not supported",
        ),
    ];
    for (route, want) in rows {
        let got = one(route.clone()).expect_err(want);
        assert!(got.contains(want), "{got:?} should contain {want:?}");
        assert!(
            got.starts_with("route_config \"backend\".virtual_hosts[0].routes[0]"),
            "{got}"
        );
    }
}

#[test]
fn the_route_configuration_and_hcm_refuse_what_they_do_not_enforce() {
    let mut two_hosts = config(vec![Route {
        r#match: prefix("/"),
        action: to_cluster("a"),
        ..Default::default()
    }]);
    two_hosts
        .virtual_hosts
        .push(two_hosts.virtual_hosts[0].clone());
    assert!(
        route_configuration(&two_hosts)
            .expect_err("two hosts")
            .contains("exactly one virtual host")
    );
    let mut by_host = config(vec![]);
    by_host.virtual_hosts[0].domains = vec!["backend.mesh".into()];
    assert!(
        route_configuration(&by_host)
            .expect_err("domains")
            .contains("virtual_hosts[0].domains")
    );
    let mut retry = config(vec![Route {
        r#match: prefix("/"),
        action: to_cluster("a"),
        ..Default::default()
    }]);
    retry.virtual_hosts[0].retry_policy = Some(RetryPolicy::default());
    assert!(
        route_configuration(&retry)
            .expect_err("vhost retry")
            .contains("virtual_hosts[0].retry_policy: not supported")
    );
    let hcm = HttpConnectionManager {
        stat_prefix: "backend".into(),
        route_specifier: Some(RouteSpecifier::RouteConfig(config(vec![Route {
            r#match: prefix("/"),
            action: to_cluster("a"),
            ..Default::default()
        }]))),
        stream_idle_timeout: Some(Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert_eq!(
        hcm_routes(&hcm).expect_err("idle timeout"),
        "http_connection_manager.stream_idle_timeout: not supported by kuma-dp"
    );
    let ok = HttpConnectionManager {
        stream_idle_timeout: None,
        ..hcm
    };
    let (name, routes) = hcm_routes(&ok).expect("decodes");
    assert_eq!((name.as_str(), routes.len()), ("backend", 1));
}

#[test]
fn tcp_proxy_weighted_clusters_become_a_split() {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
        WeightedCluster as TcpWeighted, weighted_cluster::ClusterWeight as TcpWeight,
    };
    let split = |weights: &[(&str, u32)]| TcpProxy {
        stat_prefix: "redis".into(),
        cluster_specifier: Some(TcpCluster::WeightedClusters(TcpWeighted {
            clusters: weights
                .iter()
                .map(|(n, w)| TcpWeight {
                    name: n.to_string(),
                    weight: *w,
                    metadata_match: None,
                })
                .collect(),
        })),
        ..Default::default()
    };
    assert_eq!(
        tcp_proxy_clusters(&split(&[("redis", 80), ("redis-dr", 20)]))
            .expect("decodes")
            .0,
        vec![
            WeightedClusterPlan {
                cluster: "redis".into(),
                weight: 80
            },
            WeightedClusterPlan {
                cluster: "redis-dr".into(),
                weight: 20
            },
        ]
    );
    assert!(
        tcp_proxy_clusters(&split(&[]))
            .expect_err("empty")
            .contains("clusters: empty")
    );
    let idle = TcpProxy {
        idle_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..split(&[("redis", 1)])
    };
    assert_eq!(
        tcp_proxy_clusters(&idle).expect_err("idle"),
        "tcp_proxy.idle_timeout: not supported by kuma-dp"
    );
}

#[test]
fn source_ip_hash_policies_are_kept_for_routes_and_tcp() {
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::ConnectionProperties;
    use envoy_types::pb::envoy::r#type::v3::HashPolicy as TcpHashPolicy;
    use envoy_types::pb::envoy::r#type::v3::hash_policy::{FilterState, SourceIp};
    let by_source = |source_ip| HashPolicy {
        policy_specifier: Some(PolicySpecifier::ConnectionProperties(
            ConnectionProperties { source_ip },
        )),
        terminal: true,
    };
    let route = |policies: Vec<HashPolicy>| {
        let mut r = Route {
            name: "r".into(),
            r#match: prefix("/"),
            action: to_cluster("backend"),
            ..Default::default()
        };
        if let Some(Action::Route(a)) = &mut r.action {
            a.hash_policy = policies;
        }
        r
    };
    let hashing = |plan: RoutePlan| match plan.action {
        RouteActionPlan::Forward(f) => f.hash_policy,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        hashing(one(route(vec![by_source(true)])).expect("decodes")),
        vec![HashPolicyPlan {
            key: HashKeyPlan::SourceIp,
            terminal: true
        }]
    );
    // `source_ip: false` can never give a value: left out.
    assert_eq!(
        hashing(one(route(vec![by_source(false)])).expect("decodes")),
        vec![]
    );

    let tcp = |specifiers: Vec<Option<TcpHashSpecifier>>| TcpProxy {
        stat_prefix: "db".into(),
        cluster_specifier: Some(TcpCluster::Cluster("db".into())),
        hash_policy: specifiers
            .into_iter()
            .map(|policy_specifier| TcpHashPolicy { policy_specifier })
            .collect(),
        ..Default::default()
    };
    let mut with_source = tcp(vec![Some(TcpHashSpecifier::SourceIp(SourceIp {}))]);
    assert_eq!(tcp_hash_source_ip(&mut with_source), Ok(true));
    assert!(
        tcp_proxy_clusters(&with_source).is_ok(),
        "the hash policy was taken"
    );
    assert_eq!(tcp_hash_source_ip(&mut tcp(vec![])), Ok(false));
    let filter_state = Some(TcpHashSpecifier::FilterState(FilterState {
        key: "k".into(),
    }));
    assert_eq!(
        tcp_hash_source_ip(&mut tcp(vec![filter_state])),
        Err("tcp_proxy.hash_policy[0].filter_state: not enforced by kuma-dp".into())
    );
    assert_eq!(
        tcp_hash_source_ip(&mut tcp(vec![None])),
        Err("tcp_proxy.hash_policy[0]: a policy specifier is required".into())
    );
}
