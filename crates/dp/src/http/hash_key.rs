//! A request's hash key for ring hash and maglev clusters, from the route's hash policies
//! (Envoy's `route.hash_policy`): each policy that finds its value contributes
//! `fnv64(value)`, combined as Envoy does (`rotl(hash, 1) ^ new`), and a terminal policy that
//! produced one ends the list. A cookie policy with a ttl whose cookie is missing generates a
//! value, hashes it, and asks for it to be set on the response.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::HeaderMap;
use hyper::header::COOKIE;
use meshzone_xds::decode::routes::{HashKeyPlan, HashPolicyPlan};

use crate::balancer::fnv64;

/// The key, and a `Set-Cookie` value to add to the response.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HashKey {
    pub key: Option<u64>,
    pub set_cookie: Option<String>,
}

static GENERATED: AtomicU64 = AtomicU64::new(0);

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The key of one request.
pub fn hash_key(
    policies: &[HashPolicyPlan],
    headers: &HeaderMap,
    query: Option<&str>,
    source: Option<IpAddr>,
) -> HashKey {
    let mut out = HashKey::default();
    for p in policies {
        let value: Option<String> = match &p.key {
            HashKeyPlan::Header(name) => {
                let values: Vec<&str> = headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                (!values.is_empty()).then(|| values.join(","))
            }
            HashKeyPlan::QueryParameter(name) => query_param(query, name).map(str::to_string),
            HashKeyPlan::SourceIp => source.map(|ip| ip.to_string()),
            HashKeyPlan::Cookie {
                name,
                ttl_seconds,
                path,
            } => match (cookie(headers, name), ttl_seconds) {
                (Some(v), _) => Some(v.to_string()),
                (None, Some(ttl)) => {
                    let n = GENERATED.fetch_add(1, Ordering::Relaxed);
                    let value = format!(
                        "{:016x}",
                        fnv64(&n.to_le_bytes()) ^ std::process::id() as u64
                    );
                    let mut set = format!("{name}=\"{value}\"; Max-Age={ttl}");
                    if !path.is_empty() {
                        set.push_str(&format!("; Path={path}"));
                    }
                    set.push_str("; HttpOnly");
                    out.set_cookie = Some(set);
                    Some(format!("\"{value}\""))
                }
                (None, None) => None,
            },
        };
        if let Some(v) = value {
            let h = fnv64(v.trim_matches('"').as_bytes());
            out.key = Some(match out.key {
                Some(k) => k.rotate_left(1) ^ h,
                None => h,
            });
            if p.terminal {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn header(name: &str) -> HashPolicyPlan {
        HashPolicyPlan {
            key: HashKeyPlan::Header(name.into()),
            terminal: false,
        }
    }

    #[test]
    fn keys_come_from_headers_cookies_and_query_in_order() {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        h.insert(COOKIE, HeaderValue::from_static("a=1; sid=s-42"));
        let alice = hash_key(&[header("x-user")], &h, None, None).key;
        assert_eq!(alice, Some(fnv64(b"alice")));
        assert_eq!(hash_key(&[header("x-none")], &h, None, None).key, None);
        // Terminal: the first found hash ends it.
        let terminal = HashPolicyPlan {
            terminal: true,
            ..header("x-user")
        };
        let q = HashPolicyPlan {
            key: HashKeyPlan::QueryParameter("u".into()),
            terminal: false,
        };
        assert_eq!(
            hash_key(&[terminal, q.clone()], &h, Some("u=bob"), None).key,
            alice
        );
        let both = hash_key(&[header("x-user"), q.clone()], &h, Some("x=1&u=bob"), None).key;
        assert_eq!(both, Some(fnv64(b"alice").rotate_left(1) ^ fnv64(b"bob")));
        let sid = HashPolicyPlan {
            key: HashKeyPlan::Cookie {
                name: "sid".into(),
                ttl_seconds: Some(3600),
                path: "/".into(),
            },
            terminal: false,
        };
        let k = hash_key(std::slice::from_ref(&sid), &h, None, None);
        assert_eq!(
            k,
            HashKey {
                key: Some(fnv64(b"s-42")),
                set_cookie: None
            }
        );
        // Missing cookie with a ttl: generated, set, and the key is the new value's.
        let fresh = hash_key(&[sid], &HeaderMap::new(), None, None);
        let set = fresh.set_cookie.expect("set-cookie");
        assert!(
            set.starts_with("sid=\"") && set.contains("Max-Age=3600") && set.contains("Path=/"),
            "{set}"
        );
        let value = set.split('"').nth(1).expect("value");
        assert_eq!(fresh.key, Some(fnv64(value.as_bytes())));
    }

    #[test]
    fn the_source_ip_policy_hashes_the_clients_address() {
        let source = HashPolicyPlan {
            key: HashKeyPlan::SourceIp,
            terminal: false,
        };
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let h = HeaderMap::new();
        assert_eq!(
            hash_key(std::slice::from_ref(&source), &h, None, Some(ip)).key,
            Some(fnv64(b"10.1.2.3"))
        );
        assert_eq!(hash_key(&[source], &h, None, None).key, None);
    }
}
