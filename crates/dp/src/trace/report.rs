//! Finished spans in the collectors' formats, pure: Zipkin's v2 JSON (`POST /api/v2/spans`, a
//! list of spans) and OTLP's `ExportTraceServiceRequest` (one resource with `service.name`, one
//! scope `kuma-dp`).

use std::time::{Duration, SystemTime};

use meshzone_xds::decode::tracing::SpanKind;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as OtlpKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{Map, Value, json};

use super::span::FinishedSpan;

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

fn trace_hex(id: u128) -> String {
    if id > u128::from(u64::MAX) {
        format!("{id:032x}")
    } else {
        format!("{id:016x}")
    }
}

/// The Zipkin v2 JSON body of a report.
pub fn zipkin_json(spans: &[FinishedSpan], service: &str) -> Vec<u8> {
    let list: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut o = Map::new();
            o.insert("traceId".into(), json!(trace_hex(s.span.trace_id)));
            o.insert("id".into(), json!(format!("{:016x}", s.span.span_id)));
            if let Some(p) = s.span.parent_id {
                o.insert("parentId".into(), json!(format!("{p:016x}")));
            }
            o.insert("name".into(), json!(s.span.name));
            let kind = match s.span.kind {
                SpanKind::Server => "SERVER",
                SpanKind::Client => "CLIENT",
            };
            o.insert("kind".into(), json!(kind));
            o.insert(
                "timestamp".into(),
                json!(since_epoch(s.span.start).as_micros() as u64),
            );
            // Zipkin wants at least 1 µs.
            o.insert(
                "duration".into(),
                json!((s.duration.as_micros() as u64).max(1)),
            );
            o.insert("localEndpoint".into(), json!({"serviceName": service}));
            if s.span.shared {
                o.insert("shared".into(), json!(true));
            }
            let tags: Map<String, Value> = s
                .span
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            o.insert("tags".into(), Value::Object(tags));
            Value::Object(o)
        })
        .collect();
    serde_json::to_vec(&list).unwrap_or_default()
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// The OTLP request of a report.
pub fn otlp_request(spans: &[FinishedSpan], service: &str) -> ExportTraceServiceRequest {
    let spans = spans
        .iter()
        .map(|s| {
            let start = since_epoch(s.span.start).as_nanos() as u64;
            Span {
                trace_id: s.span.trace_id.to_be_bytes().to_vec(),
                span_id: s.span.span_id.to_be_bytes().to_vec(),
                parent_span_id: s
                    .span
                    .parent_id
                    .map(|p| p.to_be_bytes().to_vec())
                    .unwrap_or_default(),
                name: s.span.name.clone(),
                kind: match s.span.kind {
                    SpanKind::Server => OtlpKind::Server,
                    SpanKind::Client => OtlpKind::Client,
                } as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + s.duration.as_nanos() as u64,
                attributes: s.span.tags.iter().map(|(k, v)| attribute(k, v)).collect(),
                status: Some(Status {
                    code: if s.error {
                        StatusCode::Error
                    } else {
                        StatusCode::Unset
                    } as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "kuma-dp".into(),
                    version: meshzone_model::VERSION.into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::ActiveSpan;

    fn span(kind: SpanKind, parent: Option<u64>, shared: bool, error: bool) -> FinishedSpan {
        FinishedSpan {
            span: ActiveSpan {
                kind,
                trace_id: 0x42,
                span_id: 7,
                parent_id: parent,
                shared,
                name: "ingress".into(),
                start: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_123),
                tags: vec![("team".into(), "core".into())],
            },
            duration: Duration::from_nanos(400),
            error,
        }
    }

    #[test]
    fn zipkin_spans_are_v2_json() {
        let body = zipkin_json(
            &[
                span(SpanKind::Server, Some(3), true, false),
                span(SpanKind::Client, None, false, true),
            ],
            "backend",
        );
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v[0],
            json!({"traceId": "0000000000000042", "id": "0000000000000007",
                "parentId": "0000000000000003", "name": "ingress", "kind": "SERVER",
                "timestamp": 1_700_000_000_000_123u64, "duration": 1,
                "localEndpoint": {"serviceName": "backend"}, "shared": true,
                "tags": {"team": "core"}})
        );
        assert_eq!(v[1]["kind"], "CLIENT");
        assert!(v[1].get("parentId").is_none() && v[1].get("shared").is_none());
    }

    #[test]
    fn otlp_spans_carry_ids_as_bytes_and_the_service_as_a_resource() {
        let req = otlp_request(&[span(SpanKind::Client, Some(3), false, true)], "frontend");
        let rs = &req.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().expect("resource").attributes,
            [attribute("service.name", "frontend")]
        );
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.trace_id.len(), 16);
        assert_eq!(s.trace_id[15], 0x42);
        assert_eq!(s.span_id, 7u64.to_be_bytes());
        assert_eq!(s.parent_span_id, 3u64.to_be_bytes());
        assert_eq!(s.kind, OtlpKind::Client as i32);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 400);
        assert_eq!(
            s.status.as_ref().map(|st| st.code),
            Some(StatusCode::Error as i32)
        );
        assert_eq!(s.attributes, [attribute("team", "core")]);
    }
}
