//! Flattening and merging (reference §1.5 steps B and C): the items of the sorted policies are
//! folded with JSON Merge Patch (RFC 7396) into one conf per destination, client subset,
//! inbound rule or proxy, with Kuma's exceptions: `append*` arrays are concatenated and route
//! `rules` are merged by their `matches`. The result, [`PolicyRules`], is shaped like one entry
//! of Kuma's `_rules` inspection (§5).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::specs::{SERVICE_TAG, Tags};

use super::matching::{
    InboundDescription, MatchedPolicy, ProxyDescription, compare_attributes, includes, select,
    sort_matched,
};
use super::target_ref::{TargetRef, TargetRefKind};
use super::{Policy, PolicyError, RouteRule, ToItem, compare_names};

/// The most tag combinations one section may enumerate.
pub const MAX_COMBINATIONS: usize = 4096;

/// RFC 7396 JSON Merge Patch of `patch` onto `target`: objects merge recursively, `null`
/// removes a field, anything else (arrays included, `[]` clears) replaces — except that an
/// array field whose name starts with `append` is concatenated to the one already there.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        return;
    };
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
            continue;
        }
        if key.starts_with("append")
            && let (Some(Value::Array(existing)), Value::Array(more)) =
                (target_map.get_mut(key), value)
        {
            existing.extend(more.iter().cloned());
            continue;
        }
        merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
    }
}

/// Folds confs in order, lowest priority first, with [`merge_patch`].
pub fn merge_confs<'a>(confs: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut out = Value::Object(Map::new());
    for conf in confs {
        merge_patch(&mut out, conf);
    }
    out
}

/// The metadata of a contributing policy, as Kuma's `_rules` `origin[].resourceMeta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceMeta {
    pub name: String,
    pub mesh: String,
    #[serde(skip_serializing_if = "Tags::is_empty")]
    pub labels: Tags,
}

/// One contribution to a conf: the policy and the index of its item in the section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleOrigin {
    pub resource_meta: ResourceMeta,
    pub rule_index: usize,
}

/// One tag condition of a subset: `key == value`, or `key != value` when `not`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagMatcher {
    pub key: String,
    pub value: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub not: bool,
}

/// A subset (every matcher holds) and the conf merged for it, with the policies that made it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub matchers: Vec<TagMatcher>,
    pub conf: Value,
    pub origin: Vec<RuleOrigin>,
}

impl Rule {
    /// True when `tags` are in this rule's subset.
    pub fn matches(&self, tags: &Tags) -> bool {
        self.matchers
            .iter()
            .all(|m| (tags.get(&m.key) == Some(&m.value)) != m.not)
    }
}

/// The merged `spec.default` of proxy-wide policies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyRule {
    pub conf: Value,
    pub origin: Vec<RuleOrigin>,
}

/// The conf of `to[]` items targeting one MeshHTTPRoute: the `Mesh` items and that route's
/// items, merged in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToRouteRule {
    pub route: String,
    pub conf: Value,
    pub origin: Vec<RuleOrigin>,
}

/// The `from` rules of one inbound, most specific subset first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FromRules {
    pub inbound: InboundRef,
    pub rules: Vec<Rule>,
}

/// An inbound as `_rules` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundRef {
    pub port: u32,
    pub tags: Tags,
}

impl From<&InboundDescription> for InboundRef {
    fn from(i: &InboundDescription) -> Self {
        InboundRef {
            port: i.port,
            tags: i.tags.clone(),
        }
    }
}

/// One merged `spec.rules[]` conf: `matches` absent for the catch-all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<Value>>,
    pub conf: Value,
    pub origin: Vec<RuleOrigin>,
}

/// The `spec.rules[]` confs of one inbound: entries with `matches` first (spiffeID Exact, then
/// Prefix, then sni), the catch-all last.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundRules {
    pub inbound: InboundRef,
    pub rules: Vec<InboundRule>,
}

/// Everything one policy type configures on one proxy, close to an entry of Kuma's
/// `_rules` (`proxyRule`, `toRules`, `fromRules`, `inboundRules`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRules {
    /// The policies that select the proxy, lowest priority first.
    pub policies: Vec<ResourceMeta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_rule: Option<ProxyRule>,
    pub to_rules: Vec<Rule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_route_rules: Vec<ToRouteRule>,
    pub from_rules: Vec<FromRules>,
    pub inbound_rules: Vec<InboundRules>,
}

impl PolicyRules {
    /// The `to` rule for an outbound to `service` (the most specific subset holding it).
    pub fn to_rule(&self, service: &str) -> Option<&Rule> {
        let tags = Tags::from([(SERVICE_TAG.to_string(), service.to_string())]);
        self.to_rules.iter().find(|r| r.matches(&tags))
    }

    /// The `from` rule of the inbound on `port` for a client carrying `client_tags`.
    pub fn from_rule(&self, port: u32, client_tags: &Tags) -> Option<&Rule> {
        self.from_rules
            .iter()
            .find(|f| f.inbound.port == port)?
            .rules
            .iter()
            .find(|r| r.matches(client_tags))
    }
}

/// One item of a section, ready to merge.
struct Item<'a> {
    tags: Tags,
    conf: Option<&'a Value>,
    route_rules: Option<&'a [RouteRule]>,
    origin: RuleOrigin,
}

/// The running merge of items.
#[derive(Default)]
struct Acc {
    conf: Value,
    route_rules: Option<Vec<RouteRule>>,
    origin: Vec<RuleOrigin>,
}

impl Acc {
    fn add(&mut self, item: &Item<'_>) {
        if let Some(conf) = item.conf {
            merge_patch(&mut self.conf, conf);
        }
        if let Some(rules) = item.route_rules {
            let acc = self.route_rules.get_or_insert_with(Vec::new);
            for rule in rules {
                match acc.iter_mut().find(|r| r.matches == rule.matches) {
                    Some(existing) => merge_patch(&mut existing.default, &rule.default),
                    None => acc.push(rule.clone()),
                }
            }
        }
        self.origin.push(item.origin.clone());
    }

    fn finish(mut self) -> (Value, Vec<RuleOrigin>) {
        if !self.conf.is_object() {
            self.conf = Value::Object(Map::new());
        }
        if let (Some(rules), Value::Object(map)) = (self.route_rules, &mut self.conf) {
            map.insert(
                "rules".to_string(),
                serde_json::to_value(rules).unwrap_or(Value::Null),
            );
        }
        (self.conf, self.origin)
    }
}

fn meta(policy: &Policy) -> ResourceMeta {
    ResourceMeta {
        name: policy.name.clone(),
        mesh: policy.mesh.clone(),
        labels: policy.labels.clone(),
    }
}

fn origin(policy: &Policy, index: usize) -> RuleOrigin {
    RuleOrigin {
        resource_meta: meta(policy),
        rule_index: index,
    }
}

/// The tag set a `to`/`from` targetRef stands for: Mesh → `{}`, MeshSubset → tags,
/// MeshService → `{kuma.io/service: name}`, MeshServiceSubset → both.
fn subset_tags(tr: &TargetRef) -> Tags {
    let mut tags = match tr.kind {
        TargetRefKind::MeshSubset | TargetRefKind::MeshServiceSubset => tr.tags_or_empty(),
        _ => Tags::new(),
    };
    if matches!(
        tr.kind,
        TargetRefKind::MeshService | TargetRefKind::MeshServiceSubset
    ) {
        tags.insert(SERVICE_TAG.to_string(), tr.name_str().to_string());
    }
    tags
}

/// Enumerates every subset of the items' tags — per key one of its values or none of them
/// (negated) — and merges, in order, the items whose tags all hold in it. Subsets no item
/// covers are left out; the most specific come first.
fn subset_rules(items: &[Item<'_>], section: &str) -> Result<Vec<Rule>, PolicyError> {
    let mut values: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for item in items {
        for (k, v) in &item.tags {
            let vs = values.entry(k).or_default();
            if !vs.contains(&v.as_str()) {
                vs.push(v);
            }
        }
    }
    let combinations = values
        .values()
        .try_fold(1usize, |acc, vs| acc.checked_mul(vs.len() + 1))
        .unwrap_or(usize::MAX);
    if combinations > MAX_COMBINATIONS {
        return Err(PolicyError::TooManyCombinations {
            section: section.to_string(),
            combinations,
            limit: MAX_COMBINATIONS,
        });
    }
    let keys: Vec<(&str, &Vec<&str>)> = values.iter().map(|(k, vs)| (*k, vs)).collect();
    let mut rules: Vec<(usize, Rule)> = Vec::new();
    for mut n in 0..combinations {
        let mut positive = Tags::new();
        let mut matchers = Vec::new();
        for (key, vs) in &keys {
            let choice = n % (vs.len() + 1);
            n /= vs.len() + 1;
            if choice == 0 {
                matchers.extend(vs.iter().map(|v| TagMatcher {
                    key: key.to_string(),
                    value: v.to_string(),
                    not: true,
                }));
            } else {
                let value = vs[choice - 1];
                positive.insert(key.to_string(), value.to_string());
                matchers.push(TagMatcher {
                    key: key.to_string(),
                    value: value.to_string(),
                    not: false,
                });
            }
        }
        let mut acc = Acc::default();
        for item in items.iter().filter(|i| includes(&positive, &i.tags)) {
            acc.add(item);
        }
        if acc.origin.is_empty() {
            continue;
        }
        let (conf, origin) = acc.finish();
        rules.push((
            positive.len(),
            Rule {
                matchers,
                conf,
                origin,
            },
        ));
    }
    rules.sort_by_key(|r| std::cmp::Reverse(r.0));
    Ok(rules.into_iter().map(|(_, r)| r).collect())
}

/// The sort rank of a `spec.rules[]` entry's `matches`: spiffeID Exact, spiffeID Prefix, sni.
fn matches_rank(matches: &[Value]) -> u8 {
    let spiffe_type = |t: &str| {
        matches
            .iter()
            .any(|m| m.pointer("/spiffeID/type").and_then(Value::as_str) == Some(t))
    };
    if spiffe_type("Exact") {
        0
    } else if matches.iter().any(|m| m.get("spiffeID").is_some()) {
        1
    } else if matches.iter().any(|m| m.get("sni").is_some()) {
        2
    } else {
        3
    }
}

fn inbound_rules(matched: &[MatchedPolicy<'_>], inbound: usize) -> Vec<InboundRule> {
    let mut catch_all = Acc::default();
    let mut keyed: Vec<(&Vec<Value>, Acc)> = Vec::new();
    for m in matched
        .iter()
        .filter(|m| m.selected.inbounds.contains(&inbound))
    {
        for (i, rule) in m.policy.spec.rules.iter().enumerate() {
            let item = Item {
                tags: Tags::new(),
                conf: rule.default.as_ref(),
                route_rules: None,
                origin: origin(m.policy, i),
            };
            match rule.matches.as_ref().filter(|ms| !ms.is_empty()) {
                None => catch_all.add(&item),
                Some(ms) => match keyed.iter_mut().find(|(k, _)| *k == ms) {
                    Some((_, acc)) => acc.add(&item),
                    None => {
                        let mut acc = Acc::default();
                        acc.add(&item);
                        keyed.push((ms, acc));
                    }
                },
            }
        }
    }
    keyed.sort_by_key(|(ms, _)| matches_rank(ms));
    let mut out: Vec<InboundRule> = keyed
        .into_iter()
        .map(|(ms, acc)| {
            let (conf, origin) = acc.finish();
            InboundRule {
                matches: Some(ms.clone()),
                conf,
                origin,
            }
        })
        .collect();
    if !catch_all.origin.is_empty() {
        let (conf, origin) = catch_all.finish();
        out.push(InboundRule {
            matches: None,
            conf,
            origin,
        });
    }
    out
}

type ToEntry<'a> = (&'a Policy, usize, &'a ToItem);

fn to_item<'a>((p, i, item): &ToEntry<'a>) -> Item<'a> {
    Item {
        tags: subset_tags(&item.target_ref),
        conf: item.default.as_ref(),
        route_rules: item.rules.as_deref(),
        origin: origin(p, *i),
    }
}

/// Builds the rules of one proxy from the policies that select it, sorted lowest priority
/// first (the output of [`select`] after [`sort_matched`]).
pub fn build_rules(
    proxy: &ProxyDescription,
    matched: &[MatchedPolicy<'_>],
) -> Result<PolicyRules, PolicyError> {
    let mut out = PolicyRules {
        policies: matched.iter().map(|m| meta(m.policy)).collect(),
        ..PolicyRules::default()
    };

    // Proxy-wide `spec.default`.
    let mut proxy_acc = Acc::default();
    for m in matched {
        if let Some(conf) = &m.policy.spec.default {
            proxy_acc.add(&Item {
                tags: Tags::new(),
                conf: Some(conf),
                route_rules: None,
                origin: origin(m.policy, 0),
            });
        }
    }
    if !proxy_acc.origin.is_empty() {
        let (conf, origin) = proxy_acc.finish();
        out.proxy_rule = Some(ProxyRule { conf, origin });
    }

    // `to`: flatten, then re-sort stably by policy attributes, to-kind, display name.
    let mut to: Vec<ToEntry<'_>> = matched
        .iter()
        .flat_map(|m| {
            m.policy
                .spec
                .to
                .iter()
                .enumerate()
                .map(move |(i, item)| (m.policy, i, item))
        })
        .collect();
    to.sort_by(|(pa, _, a), (pb, _, b)| {
        compare_attributes(pa, pb)
            .then_with(|| {
                a.target_ref
                    .kind
                    .to_rank()
                    .cmp(&b.target_ref.kind.to_rank())
            })
            .then_with(|| compare_names(pa.display_name(), pb.display_name()))
    });
    let is_route = |t: &&ToEntry<'_>| t.2.target_ref.kind == TargetRefKind::MeshHTTPRoute;
    let service_items: Vec<Item<'_>> = to.iter().filter(|t| !is_route(t)).map(to_item).collect();
    out.to_rules = subset_rules(&service_items, "to")?;
    let mut routes: Vec<&str> = Vec::new();
    for t in to.iter().filter(is_route) {
        if !routes.contains(&t.2.target_ref.name_str()) {
            routes.push(t.2.target_ref.name_str());
        }
    }
    for route in routes {
        let mut acc = Acc::default();
        for t in &to {
            let kind = &t.2.target_ref.kind;
            if *kind == TargetRefKind::Mesh || (is_route(&t) && t.2.target_ref.name_str() == route)
            {
                acc.add(&to_item(t));
            }
        }
        let (conf, origin) = acc.finish();
        out.to_route_rules.push(ToRouteRule {
            route: route.to_string(),
            conf,
            origin,
        });
    }

    // `from` and `rules`, per inbound the policies selected.
    for (index, inbound) in proxy.inbounds.iter().enumerate() {
        let items: Vec<Item<'_>> = matched
            .iter()
            .filter(|m| m.selected.inbounds.contains(&index))
            .flat_map(|m| {
                m.policy
                    .spec
                    .from
                    .iter()
                    .enumerate()
                    .map(move |(i, item)| Item {
                        tags: subset_tags(&item.target_ref),
                        conf: item.default.as_ref(),
                        route_rules: None,
                        origin: origin(m.policy, i),
                    })
            })
            .collect();
        if !items.is_empty() {
            let section = format!("from of inbound {}", inbound.port);
            out.from_rules.push(FromRules {
                inbound: inbound.into(),
                rules: subset_rules(&items, &section)?,
            });
        }
        let rules = inbound_rules(matched, index);
        if !rules.is_empty() {
            out.inbound_rules.push(InboundRules {
                inbound: inbound.into(),
                rules,
            });
        }
    }
    Ok(out)
}

/// Selection, ordering and merging in one call: the rules of one policy type for `proxy`.
pub fn rules_for_proxy(
    proxy: &ProxyDescription,
    policies: &[Policy],
    http_routes: &BTreeMap<String, TargetRef>,
) -> Result<PolicyRules, PolicyError> {
    let mut matched = select(proxy, policies, http_routes);
    sort_matched(&mut matched);
    build_rules(proxy, &matched)
}
