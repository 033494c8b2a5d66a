//! Table layouts of `kumactl get` and `kumactl inspect`. Pure functions of the API's JSON and
//! the current time, so golden tests pin them.

use std::collections::BTreeSet;
use std::io::Write;

use chrono::{DateTime, Utc};
use meshzone_model::ResourceType;
use serde_json::Value;

/// Renders rows under a header with columns aligned by spaces (three between columns).
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut tw = tabwriter::TabWriter::new(Vec::new()).padding(3);
    let _ = writeln!(tw, "{}", header.join("\t"));
    for row in rows {
        let _ = writeln!(tw, "{}", row.join("\t"));
    }
    let _ = tw.flush();
    let bytes = tw.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// `5s`, `3m`, `2h`, `4d`; `never` when there is no time.
pub fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let secs = (now - t).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn on_off(v: &Value) -> String {
    if v.as_bool().unwrap_or(false) {
        "on".into()
    } else {
        "off".into()
    }
}

/// `k=v` pairs of every inbound's tags (or the gateway's), deduplicated, sorted.
fn dataplane_tags(networking: &Value) -> String {
    let mut pairs = BTreeSet::new();
    let mut add = |tags: &Value| {
        if let Some(m) = tags.as_object() {
            for (k, v) in m {
                pairs.insert(format!("{k}={}", s(v)));
            }
        }
    };
    if let Some(inbounds) = networking["inbound"].as_array() {
        for i in inbounds {
            add(&i["tags"]);
        }
    }
    add(&networking["gateway"]["tags"]);
    pairs.into_iter().collect::<Vec<_>>().join(" ")
}

fn host_port(addr: &Value, port: &Value) -> String {
    if addr.is_null() && port.is_null() {
        return "-".into();
    }
    format!("{}:{}", s(addr), s(port))
}

/// `kumactl get <type>`.
pub fn get_table(rt: ResourceType, items: &[Value], now: DateTime<Utc>) -> String {
    let age = |r: &Value| ago(time(&r["creationTime"]), now);
    match rt {
        ResourceType::Mesh => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    let mtls = match r["mtls"]["enabledBackend"].as_str() {
                        Some(b) if !b.is_empty() => {
                            let kind = r["mtls"]["backends"]
                                .as_array()
                                .and_then(|bs| bs.iter().find(|x| x["name"] == b))
                                .map(|x| s(&x["type"]))
                                .unwrap_or_default();
                            format!("{kind}/{b}")
                        }
                        _ => "off".into(),
                    };
                    let enabled = |section: &str| {
                        if r[section].is_null() {
                            "off".into()
                        } else {
                            "on".to_string()
                        }
                    };
                    vec![
                        s(&r["name"]),
                        mtls,
                        enabled("metrics"),
                        enabled("logging"),
                        enabled("tracing"),
                        on_off(&r["routing"]["localityAwareLoadBalancing"]),
                        on_off(&r["routing"]["zoneEgress"]),
                        age(r),
                    ]
                })
                .collect();
            render(
                &[
                    "NAME",
                    "mTLS",
                    "METRICS",
                    "LOGGING",
                    "TRACING",
                    "LOCALITY",
                    "ZONEEGRESS",
                    "AGE",
                ],
                &rows,
            )
        }
        ResourceType::Dataplane => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    vec![
                        s(&r["mesh"]),
                        s(&r["name"]),
                        dataplane_tags(&r["networking"]),
                        s(&r["networking"]["address"]),
                        age(r),
                    ]
                })
                .collect();
            render(&["MESH", "NAME", "TAGS", "ADDRESS", "AGE"], &rows)
        }
        ResourceType::ZoneIngress => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    let n = &r["networking"];
                    let advertised = if n["advertisedAddress"].is_null() {
                        "not advertised".to_string()
                    } else {
                        host_port(&n["advertisedAddress"], &n["advertisedPort"])
                    };
                    let zone = r["zone"].as_str().filter(|z| !z.is_empty()).unwrap_or("-");
                    vec![
                        s(&r["name"]),
                        zone.to_string(),
                        host_port(&n["address"], &n["port"]),
                        advertised,
                        r["availableServices"]
                            .as_array()
                            .map_or(0, Vec::len)
                            .to_string(),
                        age(r),
                    ]
                })
                .collect();
            render(
                &["NAME", "ZONE", "ADDRESS", "ADVERTISED", "SERVICES", "AGE"],
                &rows,
            )
        }
        ResourceType::ZoneEgress => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    let zone = r["zone"].as_str().filter(|z| !z.is_empty()).unwrap_or("-");
                    vec![
                        s(&r["name"]),
                        zone.to_string(),
                        host_port(&r["networking"]["address"], &r["networking"]["port"]),
                        age(r),
                    ]
                })
                .collect();
            render(&["NAME", "ZONE", "ADDRESS", "AGE"], &rows)
        }
        ResourceType::Zone => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    let enabled = r["enabled"].as_bool().unwrap_or(true);
                    vec![s(&r["name"]), enabled.to_string(), age(r)]
                })
                .collect();
            render(&["NAME", "ENABLED", "AGE"], &rows)
        }
        // Kuma's columns: the tags as `k=v` (sorted) and the address.
        ResourceType::ExternalService => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    let tags = r["tags"]
                        .as_object()
                        .map(|t| {
                            t.iter()
                                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    vec![
                        s(&r["mesh"]),
                        s(&r["name"]),
                        tags,
                        s(&r["networking"]["address"]),
                        age(r),
                    ]
                })
                .collect();
            render(&["MESH", "NAME", "TAGS", "ADDRESS", "AGE"], &rows)
        }
        // Policies: what they apply to (Kuma's columns; no top-level targetRef means Mesh).
        _ if rt.descriptor().policy => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    let target = &r["spec"]["targetRef"];
                    let kind = target["kind"].as_str().unwrap_or("Mesh").to_string();
                    vec![
                        s(&r["mesh"]),
                        s(&r["name"]),
                        kind,
                        s(&target["name"]),
                        age(r),
                    ]
                })
                .collect();
            render(
                &["MESH", "NAME", "TARGETREF KIND", "TARGETREF NAME", "AGE"],
                &rows,
            )
        }
        _ if rt.is_mesh_scoped() => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| vec![s(&r["mesh"]), s(&r["name"]), age(r)])
                .collect();
            render(&["MESH", "NAME", "AGE"], &rows)
        }
        _ => {
            let rows: Vec<Vec<String>> =
                items.iter().map(|r| vec![s(&r["name"]), age(r)]).collect();
            render(&["NAME", "AGE"], &rows)
        }
    }
}

/// Whether a subscription is open (connected, not disconnected).
/// The subscriptions of the insight named `name` (none when it has no insight).
fn subscriptions_of(insights: &[Value], name: &Value) -> Vec<Value> {
    insights
        .iter()
        .find(|i| i["name"] == *name)
        .and_then(|i| i["subscriptions"].as_array().cloned())
        .unwrap_or_default()
}

fn any_open(subs: &[Value]) -> bool {
    subs.iter()
        .any(|s| !s["connectTime"].is_null() && s["disconnectTime"].is_null())
}

/// Responses sent and rejected over all subscriptions.
fn totals(subs: &[Value]) -> (u64, u64) {
    let sum = |field: &str| {
        subs.iter()
            .map(|s| s["status"]["total"][field].as_u64().unwrap_or(0))
            .sum()
    };
    (sum("responsesSent"), sum("responsesRejected"))
}

fn status_word(online: bool) -> &'static str {
    if online { "Online" } else { "Offline" }
}

/// `kumactl inspect dataplanes`, from `dataplanes+insights` items.
pub fn inspect_dataplanes(items: &[Value], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            let insight = &r["dataplaneInsight"];
            let subs = insight["subscriptions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let online = any_open(&subs);
            let last = subs.last();
            let last_connected = last.and_then(|s| time(&s["connectTime"]));
            let last_updated = last.and_then(|s| time(&s["status"]["lastUpdateTime"]));
            let (updates, errors) = totals(&subs);
            let mtls = &insight["mTLS"];
            let expiration = time(&mtls["certificateExpirationTime"])
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into());
            let dp_version = last
                .map(|sub| s(&sub["version"]["kumaDp"]["version"]))
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "-".into());
            vec![
                s(&r["mesh"]),
                s(&r["name"]),
                dataplane_tags(&r["dataplane"]["networking"]),
                status_word(online).to_string(),
                ago(last_connected, now),
                ago(last_updated, now),
                updates.to_string(),
                errors.to_string(),
                ago(time(&mtls["lastCertificateRegeneration"]), now),
                expiration,
                mtls["certificateRegenerations"]
                    .as_u64()
                    .unwrap_or(0)
                    .to_string(),
                mtls["issuedBackend"]
                    .as_str()
                    .filter(|b| !b.is_empty())
                    .unwrap_or("-")
                    .to_string(),
                dp_version,
            ]
        })
        .collect();
    render(
        &[
            "MESH",
            "NAME",
            "TAGS",
            "STATUS",
            "LAST CONNECTED AGO",
            "LAST UPDATED AGO",
            "TOTAL UPDATES",
            "TOTAL ERRORS",
            "CERT REGENERATED AGO",
            "CERT EXPIRATION",
            "CERT REGENERATIONS",
            "CERT BACKEND",
            "KUMA-DP",
        ],
        &rows,
    )
}

/// `kumactl get zones`: each zone with whether its zone CP is connected now (the seed verifies
/// zone connectivity with this command).
pub fn get_zones(zones: &[Value], insights: &[Value], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = zones
        .iter()
        .map(|z| {
            let subs = subscriptions_of(insights, &z["name"]);
            let enabled = z["enabled"].as_bool().unwrap_or(true);
            vec![
                s(&z["name"]),
                status_word(enabled && any_open(&subs)).to_string(),
                enabled.to_string(),
                ago(time(&z["creationTime"]), now),
            ]
        })
        .collect();
    render(&["NAME", "STATUS", "ENABLED", "AGE"], &rows)
}

/// `kumactl inspect zoneingresses` / `zoneegresses`: each zone proxy with its status from its
/// insight (Online while its ADS stream is open), where it listens and, for an ingress, what it
/// advertises to other zones ("not advertised": other zones cannot reach it) and how many
/// services it offers.
pub fn inspect_zone_proxies(
    rt: ResourceType,
    items: &[Value],
    insights: &[Value],
    now: DateTime<Utc>,
) -> String {
    let ingress = rt == ResourceType::ZoneIngress;
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            let subs = subscriptions_of(insights, &r["name"]);
            let last = subs.last();
            let (updates, errors) = totals(&subs);
            let n = &r["networking"];
            let mut row = vec![
                s(&r["name"]),
                r["zone"]
                    .as_str()
                    .filter(|z| !z.is_empty())
                    .unwrap_or("-")
                    .to_string(),
                status_word(any_open(&subs)).to_string(),
                host_port(&n["address"], &n["port"]),
            ];
            if ingress {
                row.push(if n["advertisedAddress"].is_null() {
                    "not advertised".to_string()
                } else {
                    host_port(&n["advertisedAddress"], &n["advertisedPort"])
                });
                row.push(
                    r["availableServices"]
                        .as_array()
                        .map_or(0, Vec::len)
                        .to_string(),
                );
            }
            row.extend([
                ago(last.and_then(|l| time(&l["connectTime"])), now),
                updates.to_string(),
                errors.to_string(),
                last.map(|l| s(&l["version"]["kumaDp"]["version"]))
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "-".into()),
            ]);
            row
        })
        .collect();
    let mut header = vec!["NAME", "ZONE", "STATUS", "ADDRESS"];
    if ingress {
        header.extend(["ADVERTISED", "SERVICES"]);
    }
    header.extend([
        "LAST CONNECTED AGO",
        "TOTAL UPDATES",
        "TOTAL ERRORS",
        "KUMA-DP VERSION",
    ]);
    render(&header, &rows)
}

/// `kumactl inspect zones`: a zone is Online when it is enabled and a subscription is open.
pub fn inspect_zones(zones: &[Value], insights: &[Value], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = zones
        .iter()
        .map(|z| {
            let name = s(&z["name"]);
            let subs = subscriptions_of(insights, &z["name"]);
            let enabled = z["enabled"].as_bool().unwrap_or(true);
            let connected = any_open(&subs);
            let last = subs.last();
            let (updates, errors) = totals(&subs);
            let backend = last
                .and_then(|l| {
                    serde_json::from_str::<Value>(l["config"].as_str().unwrap_or("")).ok()
                })
                .map(|c| s(&c["store"]["type"]))
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| "-".into());
            vec![
                name,
                status_word(enabled && connected).to_string(),
                ago(last.and_then(|l| time(&l["connectTime"])), now),
                ago(last.and_then(|l| time(&l["status"]["lastUpdateTime"])), now),
                updates.to_string(),
                errors.to_string(),
                last.map(|l| s(&l["version"]["kumaCp"]["version"]))
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "-".into()),
                backend,
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "STATUS",
            "LAST CONNECTED AGO",
            "LAST UPDATED AGO",
            "TOTAL UPDATES",
            "TOTAL ERRORS",
            "ZONE-CP VERSION",
            "BACKEND",
        ],
        &rows,
    )
}

/// `kumactl inspect services`, from `service-insights` items.
pub fn inspect_services(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            let status = match r["status"].as_str().unwrap_or("") {
                "online" => "Online",
                "offline" => "Offline",
                "partially_degraded" => "Partially degraded",
                "not_available" => "Not available",
                other => other,
            };
            let d = &r["dataplanes"];
            vec![
                s(&r["name"]),
                status.to_string(),
                format!(
                    "{}/{}",
                    d["online"].as_u64().unwrap_or(0),
                    d["total"].as_u64().unwrap_or(0)
                ),
            ]
        })
        .collect();
    let mut out = render(&["SERVICE", "STATUS", "DATAPLANES"], &rows);
    for r in items {
        if let Some(why) = r["crossZone"].as_str() {
            out.push_str(&format!("\n{}: cross-zone traffic {why}\n", s(&r["name"])));
        }
    }
    out
}

#[cfg(test)]
mod tests;

/// `k=v` / `k!=v` of a rule's matchers; `*` for the subset of everything.
fn matchers(rule: &Value) -> String {
    let parts: Vec<String> = rule["matchers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let op = if m["not"].as_bool().unwrap_or(false) {
                "!="
            } else {
                "="
            };
            format!("{}{op}{}", s(&m["key"]), s(&m["value"]))
        })
        .collect();
    if parts.is_empty() {
        "*".into()
    } else {
        parts.join(" ")
    }
}

/// The names of the policies a rule's conf came from.
fn origins(rule: &Value) -> String {
    rule["origin"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| s(&o["resourceMeta"]["name"]))
        .collect::<Vec<_>>()
        .join(",")
}

fn rule_rows(rules: &Value) -> Vec<Vec<String>> {
    rules
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| vec![matchers(r), r["conf"].to_string(), origins(r)])
        .collect()
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// `kumactl inspect dataplane NAME --type policies`, from the `_rules` answer: per policy type
/// its warnings, then its `to` rules and its `from` rules per inbound (subset, merged conf, the
/// policies it came from).
pub fn inspect_rules(rules: &Value) -> String {
    let header = ["MATCHERS", "CONF", "ORIGIN"];
    let mut out = String::new();
    let entries = rules["rules"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        out.push_str("no policy selects this proxy\n");
    }
    for entry in &entries {
        out.push_str(&format!("{}\n", s(&entry["type"])));
        for w in entry["warnings"].as_array().into_iter().flatten() {
            out.push_str(&format!("  warning: {}\n", s(w)));
        }
        if let Some(p) = entry.get("proxyRule").filter(|p| !p.is_null()) {
            out.push_str(&format!("  proxy: {}\n", p["conf"]));
        }
        let to = rule_rows(&entry["toRules"]);
        if !to.is_empty() {
            out.push_str("  to:\n");
            out.push_str(&indent(&render(&header, &to), "    "));
        }
        for from in entry["fromRules"].as_array().into_iter().flatten() {
            let inbound = &from["inbound"];
            let tags: Vec<String> = inbound["tags"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect();
            out.push_str(&format!(
                "  from, inbound {} ({}):\n",
                s(&inbound["port"]),
                tags.join(" ")
            ));
            out.push_str(&indent(
                &render(&header, &rule_rows(&from["rules"])),
                "    ",
            ));
        }
    }
    out
}

/// `kumactl inspect <policy> NAME`: the proxies the policy selects.
pub fn inspect_policy_dataplanes(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| vec![s(&d["mesh"]), s(&d["name"])])
        .collect();
    render(&["MESH", "DATAPLANE"], &rows)
}
