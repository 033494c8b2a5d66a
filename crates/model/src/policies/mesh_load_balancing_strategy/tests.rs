use serde_json::{Value, json};

use super::*;
use crate::resource::Resource;

fn doc(spec: Value) -> Value {
    json!({"type": "MeshLoadBalancingStrategy", "name": "lb", "mesh": "default", "spec": spec})
}

fn check(spec: Value) -> Result<Resource, Vec<(String, String)>> {
    let r = Resource::from_value(doc(spec)).map_err(|v| {
        v.violations
            .into_iter()
            .map(|x| (x.field, x.message))
            .collect::<Vec<_>>()
    })?;
    crate::validate(&r).map_err(|v| {
        v.violations
            .into_iter()
            .map(|x| (x.field, x.message))
            .collect::<Vec<_>>()
    })?;
    Ok(r)
}

const FULL: &str = r#"{
  "targetRef": {"kind": "Mesh"},
  "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {
    "localityAwareness": {
      "disabled": false,
      "localZone": {"affinityTags": [{"key": "k8s.io/hostname", "weight": 9000}, {"key": "topology.kubernetes.io/zone", "weight": 9}]},
      "crossZone": {
        "failover": [
          {"from": {"zones": ["us-1", "us-2"]}, "to": {"type": "Only", "zones": ["us-1", "us-2"]}},
          {"to": {"type": "AnyExcept", "zones": ["eu-1"]}},
          {"to": {"type": "Any"}}],
        "failoverThreshold": {"percentage": 50}}},
    "loadBalancer": {"type": "RingHash", "ringHash": {"hashFunction": "XXHash", "minRingSize": 1024, "maxRingSize": 8000000,
        "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}, "terminal": true}]}},
    "hashPolicies": [{"type": "Cookie", "cookie": {"name": "sid", "ttl": "1h", "path": "/"}},
                     {"type": "Connection", "connection": {"sourceIP": true}},
                     {"type": "SourceIP"},
                     {"type": "QueryParameter", "queryParameter": {"name": "u"}},
                     {"type": "FilterState", "filterState": {"key": "k"}}]}}]
}"#;

#[test]
fn valid_documents_parse_and_round_trip() {
    let full: Value = serde_json::from_str(FULL).expect("json");
    let valid = [
        full,
        json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"localityAwareness": {"disabled": true}}}]}),
        json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"loadBalancer": {"type": "LeastRequest", "leastRequest": {"choiceCount": 3, "activeRequestBias": "1.5"}}}}]}),
        json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 5000011}}}}]}),
        json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"loadBalancer": {"type": "Random"}}}]}),
        json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"loadBalancer": {"type": "RoundRobin", "roundRobin": {}}}}]}),
        json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"localityAwareness": {"crossZone": {"failoverThreshold": {"percentage": "12.5"}}}}}]}),
        json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"localityAwareness": {"localZone": {"affinityTags": [{"key": "a"}, {"key": "b"}]}}}}]}),
    ];
    for spec in valid {
        let r = check(spec.clone()).unwrap_or_else(|v| panic!("{spec}: {v:?}"));
        let back = Resource::from_value(r.to_value()).expect("round trip");
        assert_eq!(back, r);
    }
}

#[test]
fn each_mistake_names_its_field() {
    let to = |default: Value| json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": default}]});
    let d = "spec.to[0].default";
    let cases: Vec<(Value, String)> = vec![
        (json!({}), "spec.to".into()),
        (
            json!({"to": [{"targetRef": {"kind": "MeshSubset", "tags": {"a": "b"}}, "default": {}}]}),
            "spec.to[0].targetRef.kind".into(),
        ),
        (
            to(
                json!({"localityAwareness": {"localZone": {"affinityTags": [{"key": "a", "weight": 1}, {"key": "b"}]}}}),
            ),
            format!("{d}.localityAwareness.localZone.affinityTags"),
        ),
        (
            to(json!({"localityAwareness": {"localZone": {"affinityTags": [{"key": ""}]}}})),
            format!("{d}.localityAwareness.localZone.affinityTags[0].key"),
        ),
        (
            to(
                json!({"localityAwareness": {"crossZone": {"failover": [{"to": {"type": "Only"}}]}}}),
            ),
            format!("{d}.localityAwareness.crossZone.failover[0].to.zones"),
        ),
        (
            to(
                json!({"localityAwareness": {"crossZone": {"failover": [{"to": {"type": "Any", "zones": ["a"]}}]}}}),
            ),
            format!("{d}.localityAwareness.crossZone.failover[0].to.zones"),
        ),
        (
            to(
                json!({"localityAwareness": {"crossZone": {"failover": [{"from": {"zones": []}, "to": {"type": "None"}}]}}}),
            ),
            format!("{d}.localityAwareness.crossZone.failover[0].from.zones"),
        ),
        (
            to(
                json!({"localityAwareness": {"crossZone": {"failoverThreshold": {"percentage": 0}}}}),
            ),
            format!("{d}.localityAwareness.crossZone.failoverThreshold.percentage"),
        ),
        (
            to(
                json!({"localityAwareness": {"crossZone": {"failoverThreshold": {"percentage": "abc"}}}}),
            ),
            format!("{d}.localityAwareness.crossZone.failoverThreshold.percentage"),
        ),
        (
            to(
                json!({"loadBalancer": {"type": "LeastRequest", "leastRequest": {"choiceCount": 1}}}),
            ),
            format!("{d}.loadBalancer.leastRequest.choiceCount"),
        ),
        (
            to(
                json!({"loadBalancer": {"type": "LeastRequest", "leastRequest": {"activeRequestBias": -1}}}),
            ),
            format!("{d}.loadBalancer.leastRequest.activeRequestBias"),
        ),
        (
            to(
                json!({"loadBalancer": {"type": "RingHash", "ringHash": {"minRingSize": 10, "maxRingSize": 5}}}),
            ),
            format!("{d}.loadBalancer.ringHash.minRingSize"),
        ),
        (
            to(json!({"loadBalancer": {"type": "RingHash", "ringHash": {"maxRingSize": 9000000}}})),
            format!("{d}.loadBalancer.ringHash.maxRingSize"),
        ),
        (
            to(json!({"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 65536}}})),
            format!("{d}.loadBalancer.maglev.tableSize"),
        ),
        (
            to(json!({"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 5000101}}})),
            format!("{d}.loadBalancer.maglev.tableSize"),
        ),
        (
            to(json!({"loadBalancer": {"type": "Random", "maglev": {}}})),
            format!("{d}.loadBalancer.maglev"),
        ),
        (
            to(json!({"hashPolicies": [{"type": "Header"}]})),
            format!("{d}.hashPolicies[0].header"),
        ),
        (
            to(json!({"hashPolicies": [{"type": "Header", "header": {"name": ""}}]})),
            format!("{d}.hashPolicies[0].header.name"),
        ),
        (
            to(
                json!({"hashPolicies": [{"type": "Cookie", "cookie": {"name": "a", "ttl": "soon"}}]}),
            ),
            format!("{d}.hashPolicies[0].cookie.ttl"),
        ),
        (
            to(
                json!({"hashPolicies": [{"type": "Header", "header": {"name": "a"}, "cookie": {"name": "b"}}]}),
            ),
            format!("{d}.hashPolicies[0].cookie"),
        ),
        (
            to(
                json!({"loadBalancer": {"type": "RingHash", "ringHash": {"hashPolicies": [{"type": "QueryParameter"}]}}}),
            ),
            format!("{d}.loadBalancer.ringHash.hashPolicies[0].queryParameter"),
        ),
        (
            to(json!({"loadBalancer": {"type": "Fastest"}})),
            format!("{d}.loadBalancer.type"),
        ),
        (to(json!({"weights": 1})), d.to_string()),
    ];
    for (spec, field) in cases {
        let errs = check(spec.clone()).expect_err(&format!("{spec} is invalid"));
        assert!(
            errs.iter().any(|(f, _)| f.starts_with(&field)),
            "{spec}: expected {field}, got {errs:?}"
        );
    }
}

#[test]
fn thresholds_zones_and_deprecated_hash_policies() {
    let t = |p: IntOrString| FailoverThreshold { percentage: p }.overprovisioning_factor();
    assert_eq!(t(IntOrString::Int(50)), Some(200));
    assert_eq!(t(IntOrString::Int(100)), Some(100));
    assert_eq!(t(IntOrString::String("25".into())), Some(400));
    assert_eq!(t(IntOrString::Int(101)), None);

    let only = ToZones {
        to_type: ToZoneType::Only,
        zones: Some(vec!["a".into()]),
    };
    let except = ToZones {
        to_type: ToZoneType::AnyExcept,
        ..only.clone()
    };
    assert!(only.covers("a") && !only.covers("b"));
    assert!(!except.covers("a") && except.covers("b"));
    assert!(
        ToZones {
            to_type: ToZoneType::Any,
            zones: None
        }
        .covers("x")
    );
    assert!(
        !ToZones {
            to_type: ToZoneType::None,
            zones: None
        }
        .covers("x")
    );

    let conf: LbConf = serde_json::from_value(json!({"loadBalancer": {"type": "Maglev",
        "maglev": {"hashPolicies": [{"type": "SourceIP"}]}}}))
    .expect("conf");
    assert_eq!(
        conf.effective_hash_policies()[0].hash_type,
        HashPolicyType::SourceIP
    );
    let conf: LbConf = serde_json::from_value(json!({"hashPolicies": [],
        "loadBalancer": {"type": "Maglev", "maglev": {"hashPolicies": [{"type": "SourceIP"}]}}}))
    .expect("conf");
    assert!(
        conf.effective_hash_policies().is_empty(),
        "the conf's own list wins"
    );
    assert!(is_prime(65537) && is_prime(5_000_011) && !is_prime(65536));
}
