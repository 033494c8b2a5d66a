//! Global's questions and a zone's answers over the Inspect stream, with the zone's store and a
//! channel standing in for the gRPC stream.

use std::time::Instant;

use meshzone_model::{Resource, parse_documents};
use meshzone_store::{AnyBackend, MemoryBackend};
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;

use super::*;

const ZONE: &str = "zone-1";

async fn zone_store() -> Store {
    let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
    let docs = parse_documents(
        "type: Mesh\nname: default\n---\n\
         type: Dataplane\nmesh: default\nname: web-1\n\
         networking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: web\n",
    )
    .expect("yaml");
    for doc in docs {
        store
            .create(Resource::from_value(doc).expect("resource"))
            .await
            .expect("stored");
    }
    store
}

/// A rules answerer that says which local Dataplane it was asked about.
fn rules_echo() -> LocalRulesFn {
    Arc::new(|key: ResourceKey| {
        Box::pin(async move {
            Ok(
                json!({"resource": {"type": "Dataplane", "mesh": key.mesh, "name": key.name}, "rules": []}),
            )
        })
    })
}

/// An admin reader that names what it was asked, of which local proxy.
fn admin_echo() -> LocalAdminFn {
    Arc::new(|key: ResourceKey, what: &'static str| {
        Box::pin(async move { Ok(format!("{what} of {key}\n")) })
    })
}

#[tokio::test]
async fn a_zone_reads_its_proxy_s_stats_and_clusters_as_text() {
    let store = zone_store().await;
    let answers = LocalAnswers {
        proxy_admin: Some(admin_echo()),
        ..LocalAnswers::default()
    };
    let web = global_name(ZONE, "web-1");
    for what in [STATS, CLUSTERS] {
        let r = answer(ZONE, &store, &answers, &request(what, &web)).await;
        assert_eq!(r.error, "", "{what}");
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        let local = ResourceKey::new(ResourceType::Dataplane, "default", "web-1");
        assert_eq!(body, Value::String(format!("{what} of {local}\n")));
    }
}

fn request(what: &str, name: &str) -> InspectRequest {
    InspectRequest {
        id: "1".into(),
        what: what.into(),
        key: Some(key_to_wire(&ResourceKey::new(
            ResourceType::Dataplane,
            "default",
            name,
        ))),
    }
}

#[tokio::test]
async fn a_zone_answers_a_rules_request_about_its_own_dataplane() {
    let store = zone_store().await;
    let answers = LocalAnswers {
        config_dump: None,
        rules: Some(rules_echo()),
        proxy_admin: Some(admin_echo()),
    };
    let web = global_name(ZONE, "web-1");
    let r = answer(ZONE, &store, &answers, &request(RULES, &web)).await;
    assert_eq!(r.error, "");
    assert_eq!((r.id.as_str(), r.zone.as_str()), ("1", ZONE));
    let body: Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(
        body["resource"]["name"], "web-1",
        "the zone's own name is looked up"
    );

    let cases = [
        (
            "unknown proxy",
            request(RULES, &global_name(ZONE, "nope")),
            &answers,
            "is not a Dataplane of zone \"zone-1\"",
        ),
        (
            "another zone's name",
            request(RULES, &global_name("zone-2", "web-1")),
            &answers,
            "is not a Dataplane of zone",
        ),
        (
            "unknown kind",
            request("memory", &web),
            &answers,
            "cannot show \"memory\"",
        ),
        (
            "rules of a zone proxy",
            InspectRequest {
                key: Some(key_to_wire(&ResourceKey::global(
                    ResourceType::ZoneIngress,
                    &global_name(ZONE, "ingress-1"),
                ))),
                ..request(RULES, "")
            },
            &answers,
            "cannot show \"rules\" of a ZoneIngress",
        ),
        (
            "no admin reader",
            request(STATS, &web),
            &LocalAnswers::default(),
            "serves no proxies",
        ),
        (
            "no rules answerer",
            request(RULES, &web),
            &LocalAnswers::default(),
            "zone \"zone-1\" cannot compute policy rules",
        ),
        (
            "no dump answerer",
            request(CONFIG_DUMP, &web),
            &LocalAnswers::default(),
            "serves no proxies",
        ),
    ];
    for (what, req, answers, expected) in cases {
        let r = answer(ZONE, &store, answers, &req).await;
        assert!(r.body.is_empty(), "{what}");
        assert!(r.error.contains(expected), "{what}: {}", r.error);
    }
}

/// Attaches a zone to the hub whose answers come from `answers` (a zone's side of the stream);
/// aborting the returned task ends the zone's stream.
fn connect_zone(
    hub: &InspectHub,
    zone: &'static str,
    store: Store,
    answers: LocalAnswers,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<()> {
    let (responses, rx) = mpsc::channel(16);
    let mut requests = hub.attach(zone.into(), ReceiverStream::new(rx), shutdown.clone());
    tokio::spawn(async move {
        while let Some(Ok(request)) = requests.recv().await {
            let r = answer(zone, &store, &answers, &request).await;
            if responses.send(Ok(r)).await.is_err() {
                break;
            }
        }
    })
}

#[tokio::test]
async fn global_asks_the_owning_zone_and_says_which_zone_is_offline() {
    let hub = InspectHub::default();
    let shutdown = Shutdown::new();
    let key = ResourceKey::new(
        ResourceType::Dataplane,
        "default",
        &global_name(ZONE, "web-1"),
    );

    let offline = hub.rules(ZONE, &key).await.expect_err("no zone yet");
    assert_eq!(offline, InspectError::Offline(ZONE.into()));
    assert!(offline.unavailable());
    assert!(offline.to_string().contains("\"zone-1\""), "{offline}");

    let dump: LocalDumpFn =
        Arc::new(|k: ResourceKey| Box::pin(async move { Ok(json!({"dump": k.name})) }));
    let zone = connect_zone(
        &hub,
        ZONE,
        zone_store().await,
        LocalAnswers {
            config_dump: Some(dump),
            rules: Some(rules_echo()),
            proxy_admin: None,
        },
        &shutdown,
    );
    let rules = hub.rules(ZONE, &key).await.expect("rules");
    assert_eq!(
        rules,
        json!({"resource": {"type": "Dataplane", "mesh": "default", "name": "web-1"}, "rules": []}),
        "the zone's answer, unchanged"
    );
    assert_eq!(
        hub.config_dump(ZONE, &key).await.expect("dump"),
        json!({"dump": "web-1"})
    );
    let refused = hub
        .rules(
            ZONE,
            &ResourceKey::new(ResourceType::Dataplane, "default", "zone-1.nope"),
        )
        .await
        .expect_err("unknown proxy");
    assert!(!refused.unavailable(), "{refused}");
    assert!(matches!(refused, InspectError::Refused { .. }), "{refused}");

    // The zone's stream ends: global says so instead of answering from its copies.
    zone.abort();
    let _ = zone.await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match hub.rules(ZONE, &key).await {
            Err(InspectError::Offline(z)) => {
                assert_eq!(z, ZONE);
                break;
            }
            // A request that went out as the stream ended fails at once, not after a timeout.
            Err(InspectError::Gone(z)) => assert_eq!(z, ZONE),
            other => panic!("answered after the stream ended: {other:?}"),
        }
        assert!(Instant::now() < deadline, "the zone is still attached");
        tokio::task::yield_now().await;
    }
    shutdown.begin();
}

/// A zone of an older version knows only config dumps: it refuses the new kind with its words.
#[tokio::test]
async fn an_older_zone_refuses_the_rules_request() {
    let hub = InspectHub::default();
    let shutdown = Shutdown::new();
    let (responses, rx) = mpsc::channel(16);
    let mut requests = hub.attach(ZONE.into(), ReceiverStream::new(rx), shutdown.clone());
    tokio::spawn(async move {
        while let Some(Ok(request)) = requests.recv().await {
            let error = if request.what == CONFIG_DUMP {
                String::new()
            } else {
                format!("cannot show {:?}", request.what)
            };
            let r = InspectResponse {
                id: request.id,
                zone: ZONE.into(),
                body: b"{}".to_vec(),
                error,
                ..Default::default()
            };
            if responses.send(Ok(r)).await.is_err() {
                break;
            }
        }
    });
    let key = ResourceKey::new(ResourceType::Dataplane, "default", "zone-1.web-1");
    let e = hub.rules(ZONE, &key).await.expect_err("old zone");
    assert_eq!(
        e,
        InspectError::Refused {
            zone: ZONE.into(),
            message: "cannot show \"rules\"".into()
        }
    );
    assert!(!e.unavailable());
    shutdown.begin();
}
