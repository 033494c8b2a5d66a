//! The RBAC filters (network and HTTP) as a plan kuma-dp enforces: who is allowed, who is
//! shadow-denied, and the stats prefix. Only what kuma-dp evaluates is accepted — action ALLOW
//! rules (and DENY shadow rules) whose permissions are all `any`, with principals made of `any`,
//! an exact authenticated principal name, `and_ids`, `or_ids` and `not_id`. Anything else is a
//! decode error naming the field, so the control plane gets a NACK instead of a proxy that
//! silently allows what Envoy would deny (or the reverse).

use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::config::rbac::v3::{Principal, Rbac, permission};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::rbac::EnforcementType;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;

use super::{DecodeError, err, unpack};

/// Who a principal names, as kuma-dp evaluates it against a peer certificate's URI SANs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalPlan {
    /// Anyone, with or without a certificate.
    Any,
    /// A peer whose certificate carries this URI SAN (`spiffe://…` or `kuma://…`).
    Name(String),
    And(Vec<PrincipalPlan>),
    Or(Vec<PrincipalPlan>),
    Not(Box<PrincipalPlan>),
}

impl PrincipalPlan {
    /// Whether a peer with these URI SANs (none for a plaintext peer) is named.
    pub fn matches(&self, sans: &[String]) -> bool {
        match self {
            PrincipalPlan::Any => true,
            PrincipalPlan::Name(name) => sans.iter().any(|s| s == name),
            PrincipalPlan::And(all) => all.iter().all(|p| p.matches(sans)),
            PrincipalPlan::Or(any) => any.iter().any(|p| p.matches(sans)),
            PrincipalPlan::Not(p) => !p.matches(sans),
        }
    }
}

/// An inbound's RBAC: a client is allowed when one of `allow` names it (none: nobody is), and
/// counted as shadow-denied when one of `shadow_deny` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RbacPlan {
    /// Stats: `<stat_prefix>rbac.allowed`, `.denied`, `.shadow_denied` (Envoy's names; the
    /// prefix ends with a dot).
    pub stat_prefix: String,
    pub allow: Vec<PrincipalPlan>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow_deny: Vec<PrincipalPlan>,
}

/// What the plan decides for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub shadow_denied: bool,
}

impl RbacPlan {
    /// The decision for a peer with these URI SANs.
    pub fn evaluate(&self, sans: &[String]) -> Verdict {
        Verdict {
            allowed: self.allow.iter().any(|p| p.matches(sans)),
            shadow_denied: self.shadow_deny.iter().any(|p| p.matches(sans)),
        }
    }
}

/// Envoy's `statPrefixJoin`: a prefix gets a trailing dot unless it has one.
fn joined(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        prefix.to_string()
    } else {
        format!("{prefix}.")
    }
}

/// `envoy.filters.network.rbac` at `at` (e.g. `filter_chains[0].filters[0]`) of listener `name`.
pub(super) fn network_rbac(name: &str, at: &str, cfg: &Any) -> Result<RbacPlan, DecodeError> {
    let f: NetworkRbac = unpack(cfg).map_err(|e| err(name, format!("{at}: {e}")))?;
    let unsupported = |field: &str| {
        err(
            name,
            format!("{at}.{field}: not enforced by kuma-dp (network RBAC)"),
        )
    };
    if f.matcher.is_some() {
        return Err(unsupported("matcher"));
    }
    if f.shadow_matcher.is_some() {
        return Err(unsupported("shadow_matcher"));
    }
    if !f.shadow_rules_stat_prefix.is_empty() {
        return Err(unsupported("shadow_rules_stat_prefix"));
    }
    if f.enforcement_type != EnforcementType::OneTimeOnFirstByte as i32 {
        return Err(unsupported("enforcement_type"));
    }
    if f.delay_deny.is_some() {
        return Err(unsupported("delay_deny"));
    }
    if f.stat_prefix.is_empty() {
        return Err(err(name, format!("{at}.stat_prefix: required")));
    }
    plan(
        name,
        at,
        joined(&f.stat_prefix),
        f.rules.as_ref(),
        f.shadow_rules.as_ref(),
    )
}

/// `envoy.filters.http.rbac` at `at` of listener `name`, inside an HTTP connection manager
/// whose stat prefix is `hcm_stat_prefix` (Envoy counts under `http.<that>.rbac.`).
pub(super) fn http_rbac(
    name: &str,
    at: &str,
    cfg: &Any,
    hcm_stat_prefix: &str,
) -> Result<RbacPlan, DecodeError> {
    let f: HttpRbac = unpack(cfg).map_err(|e| err(name, format!("{at}: {e}")))?;
    let unsupported = |field: &str| {
        err(
            name,
            format!("{at}.{field}: not enforced by kuma-dp (HTTP RBAC)"),
        )
    };
    if f.matcher.is_some() {
        return Err(unsupported("matcher"));
    }
    if f.shadow_matcher.is_some() {
        return Err(unsupported("shadow_matcher"));
    }
    if !f.rules_stat_prefix.is_empty() {
        return Err(unsupported("rules_stat_prefix"));
    }
    if !f.shadow_rules_stat_prefix.is_empty() {
        return Err(unsupported("shadow_rules_stat_prefix"));
    }
    if f.track_per_rule_stats {
        return Err(unsupported("track_per_rule_stats"));
    }
    plan(
        name,
        at,
        format!("http.{}", joined(hcm_stat_prefix)),
        f.rules.as_ref(),
        f.shadow_rules.as_ref(),
    )
}

fn plan(
    name: &str,
    at: &str,
    stat_prefix: String,
    rules: Option<&Rbac>,
    shadow: Option<&Rbac>,
) -> Result<RbacPlan, DecodeError> {
    let allow = match rules {
        // Envoy: without rules the filter enforces nothing.
        None => vec![PrincipalPlan::Any],
        Some(r) => principals_of(name, &format!("{at}.rules"), r, Action::Allow)?,
    };
    let shadow_deny = match shadow {
        None => Vec::new(),
        Some(r) => principals_of(name, &format!("{at}.shadow_rules"), r, Action::Deny)?,
    };
    Ok(RbacPlan {
        stat_prefix,
        allow,
        shadow_deny,
    })
}

/// Every principal of every policy (a policy matches when one of its principals does: its
/// permissions are all `any`), in policy-name order.
fn principals_of(
    name: &str,
    at: &str,
    rbac: &Rbac,
    action: Action,
) -> Result<Vec<PrincipalPlan>, DecodeError> {
    let fail = |field: String, what: &str| err(name, format!("{at}.{field}: {what}"));
    if rbac.action != action as i32 {
        let got = Action::try_from(rbac.action).map_or("unknown", |a| a.as_str_name());
        return Err(fail(
            "action".into(),
            &format!(
                "{got} is not enforced by kuma-dp here (only {})",
                action.as_str_name()
            ),
        ));
    }
    if rbac.audit_logging_options.is_some() {
        return Err(fail(
            "audit_logging_options".into(),
            "not enforced by kuma-dp",
        ));
    }
    let mut policies: Vec<_> = rbac.policies.iter().collect();
    policies.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    for (policy_name, policy) in policies {
        let p = format!("policies[{policy_name:?}]");
        if policy.condition.is_some() || policy.checked_condition.is_some() {
            return Err(fail(format!("{p}.condition"), "not enforced by kuma-dp"));
        }
        if policy.cel_config.is_some() {
            return Err(fail(format!("{p}.cel_config"), "not enforced by kuma-dp"));
        }
        if policy.permissions.is_empty() {
            return Err(fail(format!("{p}.permissions"), "required"));
        }
        for (i, perm) in policy.permissions.iter().enumerate() {
            if perm.rule != Some(permission::Rule::Any(true)) {
                return Err(fail(
                    format!("{p}.permissions[{i}]"),
                    "only {any: true} is enforced by kuma-dp",
                ));
            }
        }
        for (i, principal) in policy.principals.iter().enumerate() {
            let plan = principal_plan(principal)
                .map_err(|(field, what)| fail(format!("{p}.principals[{i}]{field}"), what))?;
            out.push(plan);
        }
    }
    Ok(out)
}

/// One principal; on error, the path below it and what is wrong.
fn principal_plan(p: &Principal) -> Result<PrincipalPlan, (String, &'static str)> {
    let nested = |prefix: String, r: Result<PrincipalPlan, (String, &'static str)>| {
        r.map_err(|(field, what)| (format!("{prefix}{field}"), what))
    };
    let set = |key: &str, ids: &[Principal]| -> Result<Vec<PrincipalPlan>, _> {
        if ids.is_empty() {
            return Err((format!(".{key}.ids"), "must not be empty"));
        }
        ids.iter()
            .enumerate()
            .map(|(i, id)| nested(format!(".{key}.ids[{i}]"), principal_plan(id)))
            .collect()
    };
    match &p.identifier {
        Some(Identifier::Any(true)) => Ok(PrincipalPlan::Any),
        Some(Identifier::Authenticated(Authenticated {
            principal_name: Some(matcher),
        })) => match matcher {
            StringMatcher {
                match_pattern: Some(MatchPattern::Exact(name)),
                ignore_case: false,
            } => Ok(PrincipalPlan::Name(name.clone())),
            _ => Err((
                ".authenticated.principal_name".into(),
                "only an exact, case-sensitive name is enforced by kuma-dp",
            )),
        },
        Some(Identifier::Authenticated(_)) => Err((
            ".authenticated.principal_name".into(),
            "required by kuma-dp",
        )),
        Some(Identifier::AndIds(s)) => set("and_ids", &s.ids).map(PrincipalPlan::And),
        Some(Identifier::OrIds(s)) => set("or_ids", &s.ids).map(PrincipalPlan::Or),
        Some(Identifier::NotId(inner)) => {
            nested(".not_id".into(), principal_plan(inner)).map(|p| PrincipalPlan::Not(Box::new(p)))
        }
        _ => Err((
            String::new(),
            "only any, authenticated (exact name), and_ids, or_ids and not_id are enforced by kuma-dp",
        )),
    }
}

#[cfg(test)]
mod tests;
