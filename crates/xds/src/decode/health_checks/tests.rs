//! Health check decoding: what MeshHealthCheck's configurer emits becomes the plan, with
//! Envoy's defaults filled in; every field kuma-dp does not run is refused with its path.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::health_check::CustomHealthCheck;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, TypedExtensionConfig,
};
use envoy_types::pb::google::protobuf::BoolValue;
use serde_json::json;

use super::*;
use crate::decode::routes::{HeaderAdd, HeaderAppend};

fn d(ms: u64) -> Option<PbDuration> {
    let d = Duration::from_millis(ms);
    Some(PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

fn u(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

/// What MeshHealthCheck's configurer makes of a conf for an outbound of this protocol.
fn generated(conf: serde_json::Value, protocol: &str) -> HealthCheck {
    crate::policy::mesh_health_check::health_check(&conf, Some(protocol)).expect("a check")
}

fn base() -> HealthCheck {
    HealthCheck {
        timeout: d(1000),
        interval: d(2000),
        unhealthy_threshold: u(3),
        healthy_threshold: u(1),
        health_checker: Some(HealthChecker::TcpHealthCheck(TcpHealthCheck::default())),
        ..Default::default()
    }
}

fn plan(c: HealthCheck) -> Result<HealthCheckPlan, Refusal> {
    health_check(&[c]).map(|p| p.expect("a plan"))
}

fn http_of(c: &mut HealthCheck) -> &mut HttpHealthCheck {
    if !matches!(c.health_checker, Some(HealthChecker::HttpHealthCheck(_))) {
        c.health_checker = Some(HealthChecker::HttpHealthCheck(HttpHealthCheck {
            path: "/health".into(),
            ..Default::default()
        }));
    }
    match &mut c.health_checker {
        Some(HealthChecker::HttpHealthCheck(h)) => h,
        _ => unreachable!("set above"),
    }
}

#[test]
fn no_check_is_no_plan() {
    assert_eq!(health_check(&[]), Ok(None));
}

#[test]
fn the_configurers_checks_become_plans_with_envoys_defaults() {
    let conf = json!({
        "interval": "2s", "timeout": "1s", "unhealthyThreshold": 2, "healthyThreshold": 3,
        "initialJitter": "50ms", "intervalJitter": "100ms", "intervalJitterPercent": 10,
        "noTrafficInterval": "5s", "reuseConnection": false, "alwaysLogHealthCheckFailures": true,
        "http": {"path": "/health", "expectedStatuses": [200, 204],
                 "requestHeadersToAdd": {"set": [{"name": "x-probe", "value": "mesh"}],
                                         "add": [{"name": "x-more", "value": "1"}]}},
        "tcp": {"send": "PING", "receive": ["PO", "NG"]},
        "grpc": {"serviceName": "api", "authority": "grpc-api.mesh"}
    });
    let http = plan(generated(conf.clone(), "http")).expect("http");
    assert_eq!(
        (http.timeout, http.interval, http.initial_jitter),
        (
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_millis(50)
        )
    );
    assert_eq!(
        (http.interval_jitter, http.interval_jitter_percent),
        (Duration::from_millis(100), 10)
    );
    assert_eq!((http.unhealthy_threshold, http.healthy_threshold), (2, 3));
    assert_eq!(http.no_traffic_interval, Duration::from_secs(5));
    assert_eq!(
        http.checker,
        CheckerPlan::Http(HttpCheckPlan {
            host: None,
            path: "/health".into(),
            method: "GET".into(),
            expected_statuses: vec![(200, 201), (204, 205)],
            retriable_statuses: vec![],
            headers: HeaderModPlan {
                add: vec![
                    HeaderAdd {
                        name: "x-probe".into(),
                        value: "mesh".into(),
                        append: HeaderAppend::Overwrite
                    },
                    HeaderAdd {
                        name: "x-more".into(),
                        value: "1".into(),
                        append: HeaderAppend::Append
                    },
                ],
                remove: vec![],
            },
            http2: false,
        })
    );
    let h2 = plan(generated(conf.clone(), "http2")).expect("http2");
    assert!(matches!(
        h2.checker,
        CheckerPlan::Http(HttpCheckPlan { http2: true, .. })
    ));
    assert_eq!(
        plan(generated(conf.clone(), "tcp")).expect("tcp").checker,
        CheckerPlan::Tcp(TcpCheckPlan {
            send: b"PING".to_vec(),
            receive: vec![b"PO".to_vec(), b"NG".to_vec()],
        })
    );
    assert_eq!(
        plan(generated(conf, "grpc")).expect("grpc").checker,
        CheckerPlan::Grpc(GrpcCheckPlan {
            service_name: "api".into(),
            authority: Some("grpc-api.mesh".into()),
            metadata: HeaderModPlan::default(),
        })
    );
    // Kuma's own defaults (interval 1m, timeout 15s, thresholds 5 and 1) and Envoy's (no
    // traffic 60 s, 200 only, no jitter).
    let defaults = plan(generated(json!({"http": {}}), "http")).expect("defaults");
    assert_eq!(
        (defaults.interval, defaults.timeout),
        (Duration::from_secs(60), Duration::from_secs(15))
    );
    assert_eq!(
        (defaults.unhealthy_threshold, defaults.healthy_threshold),
        (5, 1)
    );
    assert_eq!(defaults.no_traffic_interval, DEFAULT_NO_TRAFFIC_INTERVAL);
    assert_eq!(defaults.initial_jitter, Duration::ZERO);
    let CheckerPlan::Http(h) = defaults.checker else {
        panic!("http")
    };
    assert_eq!(
        (h.path.as_str(), h.expected_statuses),
        ("/", vec![(200, 201)])
    );
}

/// Every field kuma-dp runs, spelled directly.
#[test]
fn the_fields_kuma_dp_runs_are_read() {
    type Edit = fn(&mut HealthCheck);
    type Holds = fn(&HealthCheckPlan) -> bool;
    let cases: &[(&str, Edit, Holds)] = &[
        (
            "special intervals",
            |c| {
                c.no_traffic_healthy_interval = d(7000);
                c.unhealthy_interval = d(300);
                c.unhealthy_edge_interval = d(200);
                c.healthy_edge_interval = d(100);
            },
            |p| {
                p.no_traffic_healthy_interval == Some(Duration::from_secs(7))
                    && p.unhealthy_interval == Some(Duration::from_millis(300))
                    && p.unhealthy_edge_interval == Some(Duration::from_millis(200))
                    && p.healthy_edge_interval == Some(Duration::from_millis(100))
            },
        ),
        (
            "reuse_connection and failure logging change no verdict",
            |c| {
                c.reuse_connection = Some(BoolValue { value: true });
                c.always_log_health_check_success = true;
            },
            |_| true,
        ),
        (
            "host, method, retriable statuses, removed headers",
            |c| {
                let h = http_of(c);
                h.host = "backend.mesh".into();
                h.method = RequestMethod::Head as i32;
                h.retriable_statuses = vec![Int64Range {
                    start: 503,
                    end: 504,
                }];
                h.request_headers_to_remove = vec!["X-Gone".into()];
                h.response_buffer_size =
                    Some(envoy_types::pb::google::protobuf::UInt64Value { value: 10 });
            },
            |p| {
                matches!(&p.checker, CheckerPlan::Http(h)
                    if h.host.as_deref() == Some("backend.mesh") && h.method == "HEAD"
                        && h.retriable_statuses == vec![(503, 504)]
                        && h.headers.remove == vec!["x-gone".to_string()])
            },
        ),
        (
            "binary TCP payloads",
            |c| {
                c.health_checker = Some(HealthChecker::TcpHealthCheck(TcpHealthCheck {
                    send: Some(Payload {
                        payload: Some(PayloadKind::Binary(vec![0, 1])),
                    }),
                    receive: vec![Payload {
                        payload: Some(PayloadKind::Text("ff00".into())),
                    }],
                    ..Default::default()
                }))
            },
            |p| {
                p.checker
                    == CheckerPlan::Tcp(TcpCheckPlan {
                        send: vec![0, 1],
                        receive: vec![vec![0xff, 0]],
                    })
            },
        ),
        (
            "gRPC initial metadata",
            |c| {
                c.health_checker = Some(HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
                    initial_metadata: vec![HeaderValueOption {
                        header: Some(HeaderValue {
                            key: "x-probe".into(),
                            value: "1".into(),
                            ..Default::default()
                        }),
                        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                }))
            },
            |p| matches!(&p.checker, CheckerPlan::Grpc(g) if g.metadata.add.len() == 1 && g.authority.is_none()),
        ),
    ];
    for (what, edit, holds) in cases {
        let mut c = base();
        edit(&mut c);
        let p = plan(c);
        assert!(p.as_ref().is_ok_and(holds), "{what}: {p:?}");
    }
}

#[test]
#[allow(deprecated)]
fn what_kuma_dp_does_not_run_is_refused_with_its_path() {
    type Edit = fn(&mut HealthCheck);
    let cases: &[(&str, Edit)] = &[
        ("health_checks[0].timeout", |c| c.timeout = None),
        ("health_checks[0].timeout", |c| c.timeout = d(0)),
        ("health_checks[0].interval", |c| c.interval = None),
        ("health_checks[0].unhealthy_threshold", |c| {
            c.unhealthy_threshold = None
        }),
        ("health_checks[0].healthy_threshold", |c| {
            c.healthy_threshold = u(0)
        }),
        ("health_checks[0].initial_jitter", |c| {
            c.initial_jitter = Some(PbDuration {
                seconds: -1,
                nanos: 0,
            })
        }),
        ("health_checks[0].unhealthy_interval", |c| {
            c.unhealthy_interval = d(0)
        }),
        ("health_checks[0].alt_port", |c| c.alt_port = u(1)),
        ("health_checks[0].event_log_path", |c| {
            c.event_log_path = "/tmp/hc.log".into()
        }),
        ("health_checks[0].event_logger", |c| {
            c.event_logger = vec![TypedExtensionConfig::default()]
        }),
        ("health_checks[0].event_service", |c| {
            c.event_service = Some(Default::default())
        }),
        ("health_checks[0].tls_options", |c| {
            c.tls_options = Some(Default::default())
        }),
        ("health_checks[0].transport_socket_match_criteria", |c| {
            c.transport_socket_match_criteria = Some(Default::default())
        }),
        ("health_checks[0].health_checker", |c| {
            c.health_checker = None
        }),
        ("health_checks[0].custom_health_check", |c| {
            c.health_checker = Some(HealthChecker::CustomHealthCheck(
                CustomHealthCheck::default(),
            ))
        }),
        ("health_checks[0].http_health_check.path", |c| {
            http_of(c).path.clear()
        }),
        ("health_checks[0].http_health_check.send", |c| {
            http_of(c).send = Some(Payload::default())
        }),
        ("health_checks[0].http_health_check.receive", |c| {
            http_of(c).receive = vec![Payload::default()]
        }),
        (
            "health_checks[0].http_health_check.expected_statuses[0]",
            |c| {
                http_of(c).expected_statuses = vec![Int64Range {
                    start: 200,
                    end: 200,
                }]
            },
        ),
        (
            "health_checks[0].http_health_check.retriable_statuses[0]",
            |c| {
                http_of(c).retriable_statuses = vec![Int64Range {
                    start: 500,
                    end: 700,
                }]
            },
        ),
        (
            "health_checks[0].http_health_check.codec_client_type",
            |c| http_of(c).codec_client_type = CodecClientType::Http3 as i32,
        ),
        (
            "health_checks[0].http_health_check.service_name_matcher",
            |c| http_of(c).service_name_matcher = Some(Default::default()),
        ),
        ("health_checks[0].http_health_check.method", |c| {
            http_of(c).method = RequestMethod::Connect as i32
        }),
        (
            "health_checks[0].http_health_check.request_headers_to_add[0].keep_empty_value",
            |c| {
                http_of(c).request_headers_to_add = vec![HeaderValueOption {
                    header: Some(HeaderValue::default()),
                    keep_empty_value: true,
                    ..Default::default()
                }]
            },
        ),
        (
            "health_checks[0].tcp_health_check.proxy_protocol_config",
            |c| {
                c.health_checker = Some(HealthChecker::TcpHealthCheck(TcpHealthCheck {
                    proxy_protocol_config: Some(Default::default()),
                    ..Default::default()
                }))
            },
        ),
        ("health_checks[0].tcp_health_check.send", |c| {
            c.health_checker = Some(HealthChecker::TcpHealthCheck(TcpHealthCheck {
                send: Some(Payload {
                    payload: Some(PayloadKind::Text("PING".into())),
                }),
                ..Default::default()
            }))
        }),
        ("health_checks[0].tcp_health_check.receive[0]", |c| {
            c.health_checker = Some(HealthChecker::TcpHealthCheck(TcpHealthCheck {
                receive: vec![Payload::default()],
                ..Default::default()
            }))
        }),
    ];
    for (field, edit) in cases {
        let mut c = base();
        edit(&mut c);
        match plan(c) {
            Err((f, _)) if f == *field => {}
            other => panic!("{field}: {other:?}"),
        }
    }
    match health_check(&[base(), base()]) {
        Err((f, why)) => assert!(f == "health_checks" && why.contains("one per cluster")),
        other => panic!("two checks: {other:?}"),
    }
}
