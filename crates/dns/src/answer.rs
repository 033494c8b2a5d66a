//! Pure DNS answering from a name → VIP table: A records for known names of the domain,
//! NXDOMAIN for unknown names of the domain, REFUSED for other domains. Used by the zone CP's
//! DNS server and by kuma-dp's local resolver.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// Answers carry a short TTL so a removed service disappears quickly from caches.
const TTL: u32 = 30;

/// Whether `name` (any case, trailing dot or not) is in `domain`.
pub fn in_domain(name: &str, domain: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == domain || name.ends_with(&format!(".{domain}"))
}

/// Builds the answer to one query message (pure; unit-tested).
pub fn answer(query: &Message, table: &BTreeMap<String, Ipv4Addr>, domain: &str) -> Message {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.authoritative = true;
    response.metadata.message_type = MessageType::Response;
    let mut code = ResponseCode::NoError;
    for q in &query.queries {
        response.add_query(q.clone());
        let name = q.name().to_ascii();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match table.get(&name) {
            Some(ip) => {
                if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                    response.add_answer(Record::from_rdata(
                        q.name().clone(),
                        TTL,
                        RData::A(A(*ip)),
                    ));
                }
            }
            None if in_domain(&name, domain) => {
                code = ResponseCode::NXDomain;
            }
            None => code = ResponseCode::Refused,
        }
    }
    response.metadata.response_code = code;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::Name;

    fn query(name: &str) -> Message {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m
    }

    #[test]
    fn answers_known_names_and_nxdomain_for_unknown_ones() {
        let table = BTreeMap::from([("web.mesh".to_string(), Ipv4Addr::new(240, 0, 0, 1))]);
        let r = answer(&query("Web.Mesh."), &table, "mesh");
        assert_eq!(r.metadata.id, 7);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        let r = answer(&query("nope.mesh."), &table, "mesh");
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.answers.is_empty());
        let r = answer(&query("example.com."), &table, "mesh");
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    }
}
