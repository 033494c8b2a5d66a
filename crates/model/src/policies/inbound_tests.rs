//! MeshFaultInjection and MeshRateLimit: valid documents, each mistake at its field path, the
//! value conversions the configurers use.

use serde_json::Value;

use super::inbound_from::Percentage;
use super::mesh_fault_injection::limit_kbps;
use super::*;
use crate::validate::Violations;

fn parse(yaml: &str) -> Result<Resource, Violations> {
    let value: Value = serde_norway::from_str(yaml).expect("test YAML parses");
    let r = Resource::from_value(value)?;
    crate::validate(&r)?;
    Ok(r)
}

const MFI: &str = "
type: MeshFaultInjection
name: backend-faults
mesh: default
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
    - targetRef: {kind: MeshSubset, tags: {kuma.io/service: frontend}}
      default:
        http:
          - abort: {httpStatus: 503, percentage: 5}
          - delay: {value: 2s, percentage: '12.5'}
          - responseBandwidth: {limit: 100kbps, percentage: 50}
    - targetRef: {kind: Mesh}
      default:
        http:
          - abort: {httpStatus: 500, percentage: 0}
            delay: {value: 500ms, percentage: 100}
";

const MRL: &str = "
type: MeshRateLimit
name: backend-limits
mesh: default
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
    - targetRef: {kind: Mesh}
      default:
        local:
          http:
            requestRate: {num: 100, interval: 1s}
            onRateLimit:
              status: 423
              headers:
                add: [{name: x-limited, value: 'true'}]
                set: [{name: retry-after, value: '60'}]
          tcp: {connectionRate: {num: 50, interval: 1m}}
";

fn edit(doc: &str, from: &str, to: &str) -> String {
    assert!(doc.contains(from), "test edit {from:?} not in document");
    doc.replacen(from, to, 1)
}

#[test]
fn valid_documents_parse_and_round_trip() {
    for (doc, rt) in [
        (MFI, ResourceType::MeshFaultInjection),
        (MRL, ResourceType::MeshRateLimit),
    ] {
        let r = parse(doc).unwrap_or_else(|v| panic!("{rt}: {v}"));
        assert_eq!(r.resource_type(), rt);
        let out = r.to_value();
        assert!(out.get("spec").is_some(), "{rt} keeps spec: {out}");
        let again = Resource::from_value(out).expect("output parses");
        assert_eq!(again.spec, r.spec, "{rt} round trip");
        let engine = to_engine_policy(&r).expect("a policy");
        assert_eq!(
            engine.spec.from.len(),
            r.to_value()["spec"]["from"].as_array().map_or(0, Vec::len)
        );
    }
    // Disabled parts need no rate.
    parse(&edit(
        MRL,
        "          tcp: {connectionRate: {num: 50, interval: 1m}}",
        "          tcp: {disabled: true}",
    ))
    .expect("disabled tcp");
}

#[test]
fn each_mistake_is_reported_at_its_path() {
    let d = "spec.from[0].default";
    let cases: Vec<(&str, String, String, &str)> = vec![
        ("status too high", edit(MFI, "httpStatus: 503", "httpStatus: 600"), format!("{d}.http[0].abort.httpStatus"), "[100, 599]"),
        ("status missing", edit(MFI, "httpStatus: 503, ", ""), format!("{d}.http[0].abort.httpStatus"), "must be defined"),
        ("percentage over 100", edit(MFI, "percentage: 5}", "percentage: 101}"), format!("{d}.http[0].abort.percentage"), "[0.0 - 100.0]"),
        ("negative percentage", edit(MFI, "percentage: 5}", "percentage: -1}"), format!("{d}.http[0].abort.percentage"), "[0.0 - 100.0]"),
        ("percentage not a number", edit(MFI, "percentage: '12.5'", "percentage: 'a lot'"), format!("{d}.http[1].delay.percentage"), "[0.0 - 100.0]"),
        ("bad delay", edit(MFI, "value: 2s", "value: two"), format!("{d}.http[1].delay.value"), "duration"),
        ("delay without value", edit(MFI, "value: 2s, ", ""), format!("{d}.http[1].delay.value"), "must be defined"),
        ("bad bandwidth unit", edit(MFI, "limit: 100kbps", "limit: 100kb"), format!("{d}.http[2].responseBandwidth.limit"), "kbps"),
        ("bandwidth under 1kbps", edit(MFI, "limit: 100kbps", "limit: 10bps"), format!("{d}.http[2].responseBandwidth.limit"), "kbps"),
        ("bandwidth percentage missing", edit(MFI, "limit: 100kbps, percentage: 50", "limit: 100kbps"), format!("{d}.http[2].responseBandwidth.percentage"), "must be defined"),
        ("empty fault", edit(MFI, "- abort: {httpStatus: 503, percentage: 5}", "- {}"), format!("{d}.http[0]"), "at least one defined"),
        ("unknown fault field", edit(MFI, "- abort: {httpStatus: 503, percentage: 5}", "- reset: {percentage: 5}"), format!("{d}.http[0].reset"), "unknown field"),
        ("fault from kind", edit(MFI, "kind: MeshSubset, tags: {kuma.io/service: frontend}", "kind: MeshHTTPRoute, name: r"), "spec.from[0].targetRef.kind".into(), "not allowed"),
        ("fault to", edit(MFI, "  from:\n", "  to: [{targetRef: {kind: Mesh}}]\n  from:\n"), "spec.to".into(), "MeshGateway"),
        ("fault without from", "type: MeshFaultInjection\nname: a\nmesh: default\nspec: {targetRef: {kind: Mesh}}\n".into(), "spec.from".into(), "at least one"),
        ("rate num 0", edit(MRL, "num: 100", "num: 0"), format!("{d}.local.http.requestRate.num"), "greater than 0"),
        ("rate interval short", edit(MRL, "interval: 1s", "interval: 10ms"), format!("{d}.local.http.requestRate.interval"), "50ms"),
        ("rate interval bad", edit(MRL, "interval: 1s", "interval: soon"), format!("{d}.local.http.requestRate.interval"), "duration"),
        ("rate missing", edit(MRL, "            requestRate: {num: 100, interval: 1s}\n", ""), format!("{d}.local.http.requestRate"), "must be defined"),
        ("tcp rate num missing", edit(MRL, "{num: 50, interval: 1m}", "{interval: 1m}"), format!("{d}.local.tcp.connectionRate.num"), "must be defined"),
        ("status", edit(MRL, "status: 423", "status: 99"), format!("{d}.local.http.onRateLimit.status"), "[100, 599]"),
        ("header name", edit(MRL, "name: x-limited", "name: 'X Limited'"), format!("{d}.local.http.onRateLimit.headers.add[0].name"), "header name"),
        ("local missing", edit(MRL, "        local:\n", "        locale:\n"), format!("{d}.locale"), "unknown field"),
        ("local empty", "type: MeshRateLimit\nname: a\nmesh: default\nspec: {from: [{targetRef: {kind: Mesh}, default: {local: {}}}]}\n".into(), format!("{d}.local"), "at least one defined"),
        ("no local", "type: MeshRateLimit\nname: a\nmesh: default\nspec: {from: [{targetRef: {kind: Mesh}, default: {}}]}\n".into(), format!("{d}.local"), "must be defined"),
        ("rate limit to", edit(MRL, "  from:\n", "  to: [{targetRef: {kind: Mesh}}]\n  from:\n"), "spec.to".into(), "not supported"),
    ];
    let mut failures = Vec::new();
    for (what, doc, field, message) in &cases {
        match parse(doc) {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(v) => {
                if !v
                    .violations
                    .iter()
                    .any(|x| x.field == *field && x.message.contains(message))
                {
                    failures.push(format!("{what}: want {field}: …{message}…, got {v}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn percentages_and_bandwidths_convert_as_kuma_does() {
    for (p, want) in [
        (Percentage::Int(5), Some(50_000)),
        (Percentage::Int(100), Some(1_000_000)),
        (Percentage::Int(0), Some(0)),
        (Percentage::Decimal("12.5".into()), Some(125_000)),
        (Percentage::Decimal("0.0001".into()), Some(1)),
        (Percentage::Int(101), None),
        (Percentage::Decimal("-0.5".into()), None),
        (Percentage::Decimal("NaN".into()), None),
    ] {
        assert_eq!(p.per_million(), want, "{p:?}");
    }
    for (limit, want) in [
        ("100kbps", Some(100)),
        ("1Mbps", Some(1000)),
        ("2gbps", Some(2_000_000)),
        ("8000bps", Some(8)),
        ("999bps", None),
        ("kbps", None),
        ("1.5mbps", None),
        ("100", None),
    ] {
        assert_eq!(limit_kbps(limit), want, "{limit}");
    }
}
