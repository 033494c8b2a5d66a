//! `kuma-cp`: the control plane. Reads its configuration, opens the store, and serves the REST
//! API and diagnostics, as a global or a zone control plane.
//!
//! This binary only wires components together; the logic lives in the library crates.

mod api_https;
mod config;
mod diagnostics;
mod dp_server;
mod leader;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use meshzone_api::{ApiContext, ApiMetrics, ApiSettings, CpMode};
use meshzone_lifecycle::{Backoff, Shutdown, Supervisor};
use meshzone_model::{DEFAULT_MESH, Meta, Resource, Spec};
use meshzone_store::postgres::{FollowSettings, SchemaState};
use meshzone_store::{
    AnyBackend, MemoryBackend, PostgresBackend, SqliteBackend, Store, StoreError,
};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::config::{Config, Role, env_name};

#[derive(Parser)]
#[command(name = "kuma-cp", version = meshzone_model::VERSION, about = "Control plane of the multi-zone service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (global or zone, chosen by KUMA_MODE).
    Run {
        /// YAML configuration; see kuma-cp.defaults.yaml for every key. KUMA_* variables win.
        #[arg(short = 'c', long)]
        config_file: Option<PathBuf>,
        /// Log level: error, warn, info, debug, trace.
        #[arg(long, default_value = "info", env = "KUMA_LOG_LEVEL")]
        log_level: String,
    },
    /// Manage the Postgres store's schema.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Print the version.
    Version,
    /// Print the default configuration.
    Defaults,
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Create or upgrade the schema of the Postgres store (KUMA_STORE_TYPE=postgres), with the
    /// same settings `run` takes; `run` refuses a database that is not migrated.
    Up {
        /// YAML configuration, as for `run`. KUMA_* variables win.
        #[arg(short = 'c', long)]
        config_file: Option<PathBuf>,
        /// Log level: error, warn, info, debug, trace.
        #[arg(long, default_value = "info", env = "KUMA_LOG_LEVEL")]
        log_level: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("kuma-cp {}", meshzone_model::VERSION);
            Ok(())
        }
        Command::Defaults => {
            print!("{}", config::DEFAULTS_YAML);
            Ok(())
        }
        Command::Run {
            config_file,
            log_level,
        } => run(config_file, &log_level),
        Command::Migrate {
            action:
                MigrateAction::Up {
                    config_file,
                    log_level,
                },
        } => migrate_up(config_file, &log_level),
    };
    if let Err(e) = result {
        eprintln!("kuma-cp: {e:#}");
        std::process::exit(1);
    }
}

/// The configuration from `-c` and the environment, with logging set up.
fn load_config(
    config_file: Option<PathBuf>,
    log_level: &str,
) -> anyhow::Result<(Config, BTreeMap<String, String>)> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let file_text = match &config_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?,
        ),
        None => None,
    };
    let file_name = config_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let config = config::load(file_text.as_deref().map(|t| (file_name.as_str(), t)), &env)
        .context("invalid configuration")?;

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(quiet_database_notices(log_level))
                .map_err(|e| anyhow!("--log-level {log_level:?}: {e}"))?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok((config, env))
}

/// Postgres's notices (e.g. "relation … already exists, skipping" on `migrate up`) are logged by
/// sqlx at info; they are only shown when the level names sqlx.
fn quiet_database_notices(log_level: &str) -> String {
    if log_level.contains("sqlx") {
        log_level.to_string()
    } else {
        format!("{log_level},sqlx::postgres::notice=warn")
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn migrate_up(config_file: Option<PathBuf>, log_level: &str) -> anyhow::Result<()> {
    let (config, _) = load_config(config_file, log_level)?;
    if config.store.store_type != "postgres" {
        return Err(anyhow!(
            "`kuma-cp migrate up` migrates the Postgres store, but store.type (KUMA_STORE_TYPE) is {:?}: set KUMA_STORE_TYPE=postgres and the KUMA_STORE_POSTGRES_* settings (the SQLite and memory stores need no migration)",
            config.store.store_type
        ));
    }
    let settings = config.postgres_settings()?;
    let report = runtime()?
        .block_on(PostgresBackend::migrate(&settings))
        .map_err(|e| anyhow!("{e}"))?;
    let target = settings.describe();
    match report.before {
        SchemaState::Current => println!(
            "database {target} is already at schema version {}; nothing to do",
            report.version
        ),
        SchemaState::Unmigrated => println!(
            "database {target} migrated to schema version {}",
            report.version
        ),
        before => println!(
            "database {target} migrated to schema version {} (was: {before:?})",
            report.version
        ),
    }
    Ok(())
}

fn run(config_file: Option<PathBuf>, log_level: &str) -> anyhow::Result<()> {
    let (config, env) = load_config(config_file, log_level)?;
    let runtime = runtime()?;
    let outcome = runtime.block_on(serve(config, env));
    // Whatever is still running after the shutdown deadline is not waited for.
    runtime.shutdown_timeout(Duration::from_millis(200));
    outcome
}

async fn bind(ip: &str, port: u16, key: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = format!("{ip}:{port}")
        .parse()
        .map_err(|_| anyhow!("{ip}:{port} is not a socket address ({key})"))?;
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow!(
                "port {port} is already in use ({}); stop the other process or choose another port",
                env_name(key)
            )
        } else {
            anyhow!("cannot listen on {addr} ({}): {e}", env_name(key))
        }
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn serve(config: Config, env: BTreeMap<String, String>) -> anyhow::Result<()> {
    let home = env.get("HOME").cloned().unwrap_or_else(|| "/root".into());
    let role = config.role();

    // Bind first: a busy port is reported before anything is written.
    let api_listener = bind(
        &config.api_server.http.interface,
        config.api_server.http.port,
        "apiServer.http.port",
    )
    .await?;
    let https = &config.api_server.https;
    let https_listener = if https.enabled {
        Some(bind(&https.interface, https.port, "apiServer.https.port").await?)
    } else {
        None
    };
    let diag_listener = bind(
        "0.0.0.0",
        config.diagnostics.server_port,
        "diagnostics.serverPort",
    )
    .await?;

    let dp_listener = Some(bind("0.0.0.0", config.dp_server.port, "dpServer.port").await?);
    let dns_socket = match role {
        Role::Global => None,
        _ => {
            let port = config.dns_server.port;
            Some(
                tokio::net::UdpSocket::bind(("0.0.0.0", port))
                    .await
                    .map_err(|e| {
                        if e.kind() == std::io::ErrorKind::AddrInUse {
                            anyhow!("UDP port {port} is already in use (KUMA_DNS_SERVER_PORT); stop the other process or choose another port")
                        } else {
                            anyhow!("cannot listen on UDP port {port} (KUMA_DNS_SERVER_PORT): {e}")
                        }
                    })?,
            )
        }
    };
    let kds_listener = match role {
        Role::Global => Some(
            bind(
                "0.0.0.0",
                config.multizone.global.kds.grpc_port,
                "multizone.global.kds.grpcPort",
            )
            .await?,
        ),
        _ => None,
    };

    let backend = match config.store.store_type.as_str() {
        "memory" => AnyBackend::Memory(MemoryBackend::new()),
        "postgres" => {
            let mut settings = config.postgres_settings()?;
            settings.application_name = format!("kuma-cp {}", hostname());
            let target = settings.describe();
            let backend = PostgresBackend::connect(settings)
                .await
                .map_err(|e| anyhow!("cannot open the Postgres store: {e}"))?;
            info!(database = target, "opened Postgres store");
            AnyBackend::Postgres(backend)
        }
        _ => {
            let path = config.sqlite_path(&home);
            let backend = SqliteBackend::open(&path).await.with_context(|| {
                format!(
                    "cannot open the store at {} (KUMA_STORE_SQLITE_PATH / KUMA_GENERAL_WORK_DIR)",
                    path.display()
                )
            })?;
            info!(path = %path.display(), "opened SQLite store");
            AnyBackend::Sqlite(backend)
        }
    };
    let store_type = backend.type_name().to_string();
    let registry = meshzone_metrics::Registry::new();
    let store = Store::new(backend).with_metrics(&registry);
    let shutdown_timeout = config.shutdown_timeout()?;
    let shutdown = Shutdown::new();
    let (supervisor, mut failures) = Supervisor::new(shutdown.clone(), Backoff::default());
    if let AnyBackend::Postgres(backend) = store.backend() {
        // Other instances' writes become this store's events; it reconnects and resyncs itself.
        let (backend, sink) = (backend.clone(), store.event_sink());
        supervisor.restarting("store change listener", move || {
            backend
                .clone()
                .follow_changes(sink.clone(), FollowSettings::default())
        });
    }

    let host = hostname();
    let instance_id = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);

    // Leader election: on Postgres the instances sharing the database elect one; on a store of
    // its own an instance always leads.
    let timings = leader::ElectionTimings::default();
    let shared_db = match store.backend() {
        AnyBackend::Postgres(b) => Some(b.clone()),
        _ => None,
    };
    let leadership = Arc::new(leader::Leadership::new(&registry, shared_db.is_none()));
    let leading = leadership.subscribe();
    if let Some(backend) = &shared_db {
        // Alive before serving anything, so no other instance takes this one's proxies for dead.
        backend
            .heartbeat(&instance_id)
            .await
            .map_err(|e| anyhow!("cannot record this instance in the Postgres store: {e}"))?;
        let (backend, id, leadership) = (backend.clone(), instance_id.clone(), leadership.clone());
        supervisor.restarting("leader election", move || {
            leader::campaign(backend.clone(), id.clone(), leadership.clone(), timings)
        });
    }
    let mode = match &role {
        Role::Global => CpMode::Global,
        Role::StandaloneZone { name } => CpMode::Zone {
            name: name.clone(),
            federated: false,
        },
        Role::FederatedZone { name, .. } => CpMode::Zone {
            name: name.clone(),
            federated: true,
        },
    };

    // The admin's user token, for requests from elsewhere than the CP's host.
    if meshzone_identity::ensure_admin_token(&store, std::time::SystemTime::now())
        .await
        .map_err(|e| anyhow::anyhow!("creating the admin user token: {e}"))?
    {
        info!(
            "stored an admin user token in the GlobalSecret {}; read it on this host with `kumactl get global-secret {}`",
            meshzone_identity::ADMIN_USER_TOKEN,
            meshzone_identity::ADMIN_USER_TOKEN
        );
    }
    if !config.defaults.skip_mesh && !matches!(role, Role::FederatedZone { .. }) {
        ensure_default_mesh(&store, mode.role()).await?;
    }

    // Every role lists every name (a dashboard shows zeros, not "no data").
    let xds_metrics = meshzone_dp_server::XdsMetrics::register(&registry);
    let kds_metrics = meshzone_kds::KdsMetrics::register(&registry);

    // The DP server's settings come first: the API reads the proxies' configuration from it.
    // Global serves no proxies: its DP port only turns them away (`AdsRefuser`).
    let ads = dp_listener
        .as_ref()
        .filter(|_| !matches!(role, Role::Global))
        .map(|_| {
            // Inbounds carry `kuma.io/zone` once the zone has a name (multi-zone).
            let zone = Some(config.multizone.zone.name.clone()).filter(|z| !z.is_empty());
            meshzone_dp_server::AdsService::new(
                store.clone(),
                meshzone_dp_server::DpServerSettings {
                    instance_id: instance_id.clone(),
                    require_token: config.dp_server.authn != "none",
                    deregistration_delay: meshzone_model::validate::parse_duration(
                        &config.dp_server.deregistration_delay,
                    )
                    .unwrap_or(std::time::Duration::from_secs(10)),
                    zone,
                    create_ca: !matches!(role, Role::FederatedZone { .. }),
                },
                shutdown.clone(),
                xds_metrics.clone(),
            )
        });
    // Config dumps: a zone reads its own DP server; global asks the zone that owns the proxy,
    // over that zone's KDS Inspect stream.
    let inspect_hub = meshzone_kds::inspect::InspectHub::default();
    let local_dumps = ads.as_ref().map(|a| a.config_dumps());
    let config_dump: Option<meshzone_api::ConfigDumpFn> = match (&role, &local_dumps) {
        (Role::Global, _) => {
            let (hub, store) = (inspect_hub.clone(), store.clone());
            Some(Arc::new(move |key: meshzone_model::ResourceKey| {
                let (hub, store) = (hub.clone(), store.clone());
                Box::pin(async move {
                    use meshzone_api::ZoneAnswerError;
                    use meshzone_kds::inspect::InspectError;
                    let zone = owning_zone(&store, &key)
                        .await
                        .map_err(ZoneAnswerError::NotConnected)?;
                    hub.config_dump(&zone, &key).await.map_err(|e| match e {
                        // The zone's own answer: it holds no configuration of that proxy.
                        InspectError::Refused { .. } => {
                            ZoneAnswerError::NotConnected(e.to_string())
                        }
                        e => zone_answer_error(e),
                    })
                })
            }))
        }
        (_, None) => None,
        (_, Some(dumps)) => {
            let dumps = dumps.clone();
            Some(Arc::new(move |key: meshzone_model::ResourceKey| {
                let dumps = dumps.clone();
                Box::pin(async move {
                    dumps
                        .dump_anywhere(&key)
                        .await
                        .map_err(meshzone_api::ZoneAnswerError::NotConnected)
                })
            }))
        }
    };

    // Stats and clusters: a zone reads them from the proxy over its admin stream; global asks
    // the zone that owns the proxy, over its KDS Inspect stream.
    let local_admins = ads.as_ref().map(|a| a.proxy_admins());
    let proxy_admin: Option<meshzone_api::ProxyAdminFn> = match (&role, &local_admins) {
        (Role::Global, _) => {
            let (hub, store) = (inspect_hub.clone(), store.clone());
            Some(Arc::new(move |key: meshzone_model::ResourceKey, what| {
                let (hub, store) = (hub.clone(), store.clone());
                Box::pin(async move {
                    use meshzone_api::ZoneAnswerError;
                    let zone = owning_zone(&store, &key)
                        .await
                        .map_err(ZoneAnswerError::Refused)?;
                    hub.proxy_admin(&zone, &key, what)
                        .await
                        .map_err(zone_answer_error)
                })
            }))
        }
        (_, None) => None,
        (_, Some(admins)) => {
            let admins = admins.clone();
            Some(Arc::new(move |key: meshzone_model::ResourceKey, what| {
                let admins = admins.clone();
                Box::pin(async move {
                    admins
                        .ask(&key, what)
                        .await
                        .map_err(meshzone_api::ZoneAnswerError::NotConnected)
                })
            }))
        }
    };

    // Policy rules: global asks the owning zone over the same stream, and returns its answer.
    let zone_rules: Option<meshzone_api::ZoneRulesFn> = matches!(role, Role::Global).then(|| {
        let (hub, store) = (inspect_hub.clone(), store.clone());
        let ask: meshzone_api::ZoneRulesFn = Arc::new(move |key: meshzone_model::ResourceKey| {
            let (hub, store) = (hub.clone(), store.clone());
            Box::pin(async move {
                use meshzone_api::ZoneAnswerError;
                let zone = owning_zone(&store, &key)
                    .await
                    .map_err(ZoneAnswerError::Refused)?;
                hub.rules(&zone, &key).await.map_err(zone_answer_error)
            })
        });
        ask
    });

    let metrics = ApiMetrics::register(&registry);
    let settings = ApiSettings {
        mode,
        instance_id: instance_id.clone(),
        hostname: host,
        config: shown_config(&config),
        store_type,
        config_dump,
        zone_rules,
        proxy_admin,
        auth: meshzone_api::AuthSettings {
            localhost_is_admin: config.api_server.authn.localhost_is_admin,
            unauthenticated_read: config.api_server.authn.unauthenticated_read,
        },
    };
    let api = meshzone_api::router(ApiContext::new(store.clone(), settings, metrics));

    if let Some(listener) = https_listener {
        let https = &config.api_server.https;
        let admins = Arc::new(api_https::AdminCerts::read_dir(
            &config.api_server.auth.client_certs_dir,
        )?);
        let cert = dp_server::certificate_from(
            &https.tls_cert_file,
            &https.tls_key_file,
            &config.work_dir(&home),
            &hostname(),
        )
        .context("the HTTPS API's certificate (KUMA_API_SERVER_HTTPS_TLS_CERT_FILE, KUMA_API_SERVER_HTTPS_TLS_KEY_FILE)")?;
        let acceptor = api_https::tls_acceptor(&cert, admins.clone(), https.require_client_cert)?;
        info!(
            port = https.port,
            cert = %cert.cert_path.display(),
            admin_client_certs = admins.len(),
            require_client_cert = https.require_client_cert,
            "HTTPS API listening; clients verify it with {}",
            cert.cert_path.display()
        );
        supervisor.critical(
            "HTTPS API server",
            api_https::serve(listener, acceptor, admins, api.clone(), shutdown.begun()),
        );
    }

    if let Some(listener) = dp_listener {
        let work_dir = config.work_dir(&home);
        let dp_server::ServerCertificate {
            cert_pem: cert,
            key_pem: key,
            cert_path,
            ..
        } = dp_server::certificate(&config, &work_dir, &hostname())?;
        if let (Some(ads), Some(backend)) = (&ads, &shared_db) {
            // Several zone instances: each advertises its DP server and the certificate it serves
            // there, and a request about a proxy connected to another instance goes there.
            let url = format!(
                "https://{}:{}",
                instance_address(&config),
                config.dp_server.port
            );
            let token = advertise_instance(backend, &instance_id, &url, &cert).await?;
            ads.forward_between_instances(backend.clone(), instance_id.clone(), token);
        }
        info!(cert = %cert_path.display(), port = config.dp_server.port, "DP server (xDS) listening; kuma-dp verifies it with --ca-cert-file {}", cert_path.display());
        let server = dp_server::tls_server(
            cert,
            key,
            (Duration::from_secs(15), Duration::from_secs(5)),
            "DP server",
        )?;
        let stop = shutdown.begun();
        match ads {
            Some(ads) => {
                let dead = leader::dead_instances(shared_db.as_ref(), &instance_id, timings)
                    .await
                    .map_err(|e| anyhow!("cannot read the live instances: {e}"))?;
                supervisor.critical(
                    "DP server",
                    dp_server::serve(listener, server, store.clone(), ads, dead, stop),
                );
                if let Some(backend) = shared_db.clone() {
                    // The leader closes the subscriptions that dead instances left open.
                    let (store, id) = (store.clone(), instance_id.clone());
                    supervisor.leader_only("subscription finalizer", leading.clone(), move || {
                        finalize_subscriptions(
                            store.clone(),
                            backend.clone(),
                            id.clone(),
                            timings,
                            false,
                        )
                    });
                }
                if let Some(age) = config.dataplane_cleanup_age()? {
                    // Proxies a stopped control plane could not deregister (as Kuma's GC).
                    let store = store.clone();
                    supervisor.leader_only("offline proxy cleanup", leading.clone(), move || {
                        clean_up_offline_proxies(store.clone(), age)
                    });
                }
            }
            None => supervisor.critical(
                "DP server",
                dp_server::serve_refusal(listener, server, GLOBAL_DP_REFUSAL, stop),
            ),
        }
    }
    if let Some(listener) = kds_listener {
        let work_dir = config.work_dir(&home);
        let kds = &config.multizone.global.kds;
        let dp_server::ServerCertificate {
            cert_pem: cert,
            key_pem: key,
            cert_path,
            ..
        } = dp_server::certificate_from(
            &kds.tls_cert_file,
            &kds.tls_key_file,
            &work_dir,
            &hostname(),
        )?;
        info!(
            port = kds.grpc_port,
            "KDS server listening; zones verify it with KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE={}",
            cert_path.display()
        );
        let dead = leader::dead_instances(shared_db.as_ref(), &instance_id, timings)
            .await
            .map_err(|e| anyhow!("cannot read the live instances: {e}"))?;
        if let Some(backend) = shared_db.clone() {
            // The leader closes the zone subscriptions that dead global instances left open.
            let (store, id) = (store.clone(), instance_id.clone());
            supervisor.leader_only("subscription finalizer", leading.clone(), move || {
                finalize_subscriptions(store.clone(), backend.clone(), id.clone(), timings, true)
            });
        }
        let closed = meshzone_kds::global::close_stale_subscriptions(&store, dead)
            .await
            .map_err(|e| anyhow!("cannot read zone insights: {e}"))?;
        if closed > 0 {
            info!(closed, "marked zones of the previous run offline");
        }
        let require_zone_token = kds.auth_type == "zoneToken";
        if !require_zone_token {
            warn!(
                "zone control planes are not authenticated on KDS (as in Kuma): expose port {} only to your zones, or set KUMA_MULTIZONE_GLOBAL_KDS_AUTH_TYPE=zoneToken",
                kds.grpc_port
            );
        }
        let public_key: meshzone_kds::global::PublicKeyFn = Arc::new(|pem: &[u8]| {
            let private_pem = String::from_utf8(pem.to_vec()).ok()?;
            meshzone_pki::SigningKey {
                key_id: String::new(),
                private_pem,
            }
            .public_pem()
            .ok()
            .map(String::into_bytes)
        });
        let mut service = meshzone_kds::global::GlobalKds::new(
            store.clone(),
            instance_id.clone(),
            public_key,
            require_zone_token,
            inspect_hub.clone(),
            shutdown.clone(),
            kds_metrics.clone(),
        );
        if let Some(backend) = &shared_db {
            // Several global instances: each advertises where its KDS port is and the certificate
            // it presents there, and a request about a zone another instance holds goes there.
            let url = format!("https://{}:{}", instance_address(&config), kds.grpc_port);
            let token = advertise_instance(backend, &instance_id, &url, &cert).await?;
            inspect_hub.forward_with(meshzone_kds::inter_cp::forwarder(
                store.clone(),
                backend.clone(),
                instance_id.clone(),
                token.clone(),
            ));
            service = service.taking_forwarded_requests(token);
            info!(
                url,
                "other global instances reach this one at {url} (KUMA_INTER_CP_CATALOG_INSTANCE_ADDRESS)"
            );
        }
        let service = service.into_server();
        let server = dp_server::tls_server(
            cert,
            key,
            (Duration::from_secs(2), Duration::from_secs(2)),
            "KDS",
        )?
        .add_service(service)
        // A kuma-dp pointed here by mistake learns where to go.
        .add_service(meshzone_dp_server::AdsRefuser::new(KDS_PORT_REFUSAL).into_server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.begun(),
        );
        supervisor.critical("KDS server", server);
    }
    if matches!(role, Role::Global) {
        let store = store.clone();
        supervisor.leader_only("mesh CA provisioning", leading.clone(), move || {
            returns_only_on_error(provision_mesh_cas(store.clone()))
        });
    } else {
        let store = store.clone();
        let zone = Some(config.multizone.zone.name.clone()).filter(|z| !z.is_empty());
        supervisor.leader_only(
            "zone ingress available services",
            leading.clone(),
            move || {
                returns_only_on_error(meshzone_dp_server::available_services::maintain(
                    store.clone(),
                    zone.clone(),
                ))
            },
        );
    }
    if let Some(socket) = dns_socket {
        let cidr = meshzone_dns::vips::Cidr::parse(&config.dns_server.cidr).ok_or_else(|| {
            anyhow!(
                "KUMA_DNS_SERVER_CIDR {:?} is not an IPv4 CIDR",
                config.dns_server.cidr
            )
        })?;
        let domain = config.dns_server.domain.to_ascii_lowercase();
        let (table_tx, table_rx) = tokio::sync::watch::channel(Arc::new(Default::default()));
        let table_tx = Arc::new(table_tx);
        {
            // The leader assigns VIPs (as Kuma's allocator); every instance answers the stored ones.
            let store = store.clone();
            supervisor.leader_only("DNS VIP allocation", leading.clone(), move || {
                returns_only_on_error(meshzone_dns::server::allocate_vips(store.clone(), cidr))
            });
        }
        {
            let (store, domain) = (store.clone(), domain.clone());
            supervisor.restarting("DNS virtual IPs", move || {
                let table_tx = table_tx.clone();
                let (store, domain) = (store.clone(), domain.clone());
                async move {
                    returns_only_on_error(meshzone_dns::server::maintain(store, domain, &table_tx))
                        .await
                }
            });
        }
        supervisor.serving(
            "DNS server",
            meshzone_dns::server::serve(socket, table_rx, domain),
        );
        info!(
            port = config.dns_server.port,
            cidr = config.dns_server.cidr,
            "DNS for .{} names listening (UDP)",
            config.dns_server.domain
        );
    }
    if let Role::FederatedZone { name, global } = &role {
        let kds = &config.multizone.zone.kds;
        if kds.tls_skip_verify {
            warn!(
                "global's KDS certificate is not verified (KUMA_MULTIZONE_ZONE_KDS_TLS_SKIP_VERIFY): set KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE instead outside of trials"
            );
        }
        let root_ca = if kds.root_ca_file.is_empty() {
            None
        } else {
            Some(meshzone_tls_client::read_pem_roots(
                "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE",
                std::path::Path::new(&kds.root_ca_file),
            )?)
        };
        let settings = meshzone_kds::zone::ZoneSettings {
            zone: name.clone(),
            global_url: format!(
                "{}://{}:{}",
                if global.tls { "https" } else { "http" },
                global.host,
                global.port
            ),
            tls: global.tls,
            root_ca,
            skip_verify: kds.tls_skip_verify,
            instance_id: instance_id.clone(),
            cp_version: meshzone_model::VERSION.into(),
            config: serde_json::json!({"store": {"type": config.store.store_type}}).to_string(),
            inspect: meshzone_kds::inspect::LocalAnswers {
                config_dump: local_dumps.clone().map(|dumps| {
                    let lookup: meshzone_kds::inspect::LocalDumpFn =
                        Arc::new(move |key: meshzone_model::ResourceKey| {
                            let dumps = dumps.clone();
                            Box::pin(async move { dumps.dump_anywhere(&key).await })
                        });
                    lookup
                }),
                rules: Some(local_rules(store.clone(), name.clone())),
                proxy_admin: local_admins.clone().map(|admins| {
                    let read: meshzone_kds::inspect::LocalAdminFn = Arc::new(move |key, what| {
                        let admins = admins.clone();
                        Box::pin(async move { admins.ask(&key, what).await })
                    });
                    read
                }),
            },
            metrics: kds_metrics.clone(),
            token: if kds.auth_token_file.is_empty() {
                None
            } else {
                let token = std::fs::read_to_string(&kds.auth_token_file).with_context(|| {
                    format!(
                        "cannot read KUMA_MULTIZONE_ZONE_KDS_AUTH_TOKEN_FILE {}",
                        kds.auth_token_file
                    )
                })?;
                meshzone_tls_client::bearer::check(&token).with_context(|| {
                    format!(
                        "KUMA_MULTIZONE_ZONE_KDS_AUTH_TOKEN_FILE {}",
                        kds.auth_token_file
                    )
                })?;
                Some(token)
            },
        };
        let store = store.clone();
        // Only the leader syncs with global (as in Kuma): one stream per zone.
        supervisor.leader_only("KDS client", leading.clone(), move || {
            returns_only_on_error(meshzone_kds::zone::run(settings.clone(), store.clone()))
        });
    }
    let diag_metrics = diagnostics::Metrics::register(
        registry,
        store.clone(),
        &[
            ("product", "meshzone"),
            ("version", meshzone_model::VERSION),
            ("instance_id", &instance_id),
            ("mode", &config.mode),
            ("zone", &config.multizone.zone.name),
        ],
    );
    let diag = diagnostics::router(supervisor.readiness(), diag_metrics);

    let api_addr = api_listener.local_addr().ok();
    supervisor.critical(
        "API server",
        axum::serve(
            api_listener,
            api.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.begun())
        .into_future(),
    );
    supervisor.critical(
        "diagnostics server",
        axum::serve(diag_listener, diag)
            .with_graceful_shutdown(shutdown.begun())
            .into_future(),
    );
    supervisor.set_started();
    info!(
        mode = config.mode,
        instance = %instance_id,
        api = ?api_addr,
        "kuma-cp is ready"
    );

    let outcome = tokio::select! {
        signal = meshzone_lifecycle::stop_on_signal(&shutdown) => {
            let signal = signal.context("cannot watch SIGTERM and SIGINT")?;
            info!(signal, deadline = ?shutdown_timeout, "shutting down: closing every stream, then exiting (a second signal exits at once)");
            Ok(())
        }
        failure = failures.next() => Err(anyhow!("{failure}")),
    };
    let left = shutdown.finish(shutdown_timeout).await;
    if let Some(backend) = &shared_db {
        // The leader-only components have stopped: the next instance may take over at once.
        if let Err(e) = backend.release_lease(leader::LEASE, &instance_id).await {
            warn!(error = %e, "cannot release the leader lease; it lapses by itself");
        }
    }
    if left > 0 {
        warn!(
            tasks = left,
            "the shutdown deadline ({shutdown_timeout:?}, KUMA_GENERAL_GRACEFUL_SHUTDOWN_TIMEOUT) passed; exiting without them"
        );
    }
    match &outcome {
        Ok(()) => info!("stopped"),
        Err(e) => error!(error = %e, "stopped because a component failed"),
    }
    outcome
}

/// Closes, every [`leader::ElectionTimings::alive_within`], the subscriptions of instances that
/// stopped beating (killed, or cut off from the database): on a zone its proxies', which show
/// Offline unless they reconnected elsewhere; on global the zones' KDS subscriptions.
async fn finalize_subscriptions(
    store: Store,
    backend: meshzone_store::postgres::PostgresBackend,
    instance_id: String,
    timings: leader::ElectionTimings,
    global: bool,
) -> Result<(), String> {
    loop {
        tokio::time::sleep(timings.alive_within()).await;
        let dead = leader::dead_instances(Some(&backend), &instance_id, timings).await?;
        let closed = if global {
            meshzone_kds::global::close_stale_subscriptions(&store, dead).await
        } else {
            meshzone_dp_server::close_stale_subscriptions(&store, dead).await
        };
        match closed {
            Ok(0) => {}
            Ok(n) => info!(closed = n, "closed the subscriptions of dead instances"),
            Err(e) => warn!(error = %e, "cannot close the subscriptions of dead instances"),
        }
    }
}

/// The configuration the API shows, without the database password (as Kuma's config dump).
fn shown_config(config: &Config) -> serde_json::Value {
    let mut shown = config.clone();
    shown.store.postgres.password = "*****".into();
    serde_json::to_value(&shown).unwrap_or_default()
}

/// Deletes, every so often, the proxies offline for `age` (`KUMA_RUNTIME_UNIVERSAL_DATAPLANE_CLEANUP_AGE`).
async fn clean_up_offline_proxies(store: Store, age: Duration) -> Result<(), String> {
    let every = (age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        match meshzone_dp_server::delete_offline_proxies(&store, chrono::Utc::now(), age).await {
            Ok(deleted) => {
                for key in deleted {
                    info!(%key, offline_for_at_least = ?age, "deleted a proxy that stayed offline");
                }
            }
            Err(e) => warn!(error = %e, "cannot clean up offline proxies"),
        }
    }
}

/// For a background loop that only returns when something went wrong (its store event channel
/// closed): the supervisor restarts it.
async fn returns_only_on_error(task: impl std::future::Future<Output = ()>) -> Result<(), String> {
    task.await;
    Err("it stopped following store changes".into())
}

/// Where other instances on the same database reach this one:
/// `KUMA_INTER_CP_CATALOG_INSTANCE_ADDRESS`, else the host name.
fn instance_address(config: &Config) -> String {
    Some(config.inter_cp.catalog.instance_address.clone())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(hostname)
}

/// Publishes this instance's inter-CP URL and certificate; returns the instances' shared token.
async fn advertise_instance(
    backend: &meshzone_store::postgres::PostgresBackend,
    instance_id: &str,
    url: &str,
    cert_pem: &str,
) -> anyhow::Result<String> {
    let db_err =
        |e: meshzone_store::StoreError| anyhow!("cannot set up forwarding between instances: {e}");
    backend
        .advertise(instance_id, url, cert_pem)
        .await
        .map_err(db_err)?;
    backend
        .instance_secret(meshzone_store::postgres::lease::INTER_CP_TOKEN_SECRET)
        .await
        .map_err(db_err)
}

/// How the API shows a zone's failure to answer: unreachable (503) or refusing (502).
fn zone_answer_error(e: meshzone_kds::inspect::InspectError) -> meshzone_api::ZoneAnswerError {
    if e.unavailable() {
        meshzone_api::ZoneAnswerError::Unavailable(e.to_string())
    } else {
        meshzone_api::ZoneAnswerError::Refused(e.to_string())
    }
}

async fn owning_zone(store: &Store, key: &meshzone_model::ResourceKey) -> Result<String, String> {
    let resource = store
        .find(key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{key} not found"))?;
    resource
        .meta
        .labels
        .get(meshzone_kds::sync::ZONE_LABEL)
        .cloned()
        .ok_or_else(|| format!("{key} belongs to no zone"))
}

/// A zone's answer to global's `_rules` question: what its own API answers.
fn local_rules(store: Store, zone: String) -> meshzone_kds::inspect::LocalRulesFn {
    Arc::new(move |key: meshzone_model::ResourceKey| {
        let (store, zone) = (store.clone(), zone.clone());
        Box::pin(async move {
            meshzone_api::local_dataplane_rules(
                &store,
                &key,
                Some(&zone).filter(|z| !z.is_empty()).map(String::as_str),
            )
            .await
            .map_err(|e| format!("zone {zone:?}: {}: {}", e.title, e.details))
        })
    })
}

async fn provision_mesh_cas(store: Store) {
    let mut events = store.subscribe();
    loop {
        match store.list(meshzone_model::ResourceType::Mesh, None).await {
            Ok(meshes) => {
                for m in meshes {
                    if let Spec::Mesh(spec) = &m.spec
                        && meshzone_identity::builtin_backend(spec).is_some()
                        && let Err(e) = meshzone_identity::ensure_mesh_ca(
                            &store,
                            &m.meta.name,
                            spec,
                            std::time::SystemTime::now(),
                        )
                        .await
                    {
                        warn!(mesh = m.meta.name, error = %e, "cannot create the mesh CA");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list meshes"),
        }
        if !meshzone_store::changed(&mut events, &[meshzone_model::ResourceType::Mesh]).await {
            return;
        }
    }
}

/// What a data plane proxy that dialled global's DP server port is told.
const GLOBAL_DP_REFUSAL: &str =
    "global control plane does not accept data plane proxies; connect to a zone control plane";

/// What a data plane proxy that dialled global's KDS port is told.
const KDS_PORT_REFUSAL: &str = "this is the global control plane's KDS port, where zone control planes connect; a data plane proxy connects to its zone control plane's DP server (port 5678 by default): kuma-dp run --cp-address=https://<zone-cp>:5678";

async fn ensure_default_mesh(store: &Store, role: meshzone_model::CpRole) -> anyhow::Result<()> {
    let mesh = Resource::new(
        Meta::named(DEFAULT_MESH, ""),
        Spec::Mesh(Default::default()),
    );
    match store.create(mesh).await {
        Ok(mesh) => {
            info!("created Mesh \"default\"");
            let policies = meshzone_api::create_initial_policies(store, role, &mesh)
                .await
                .map_err(|e| anyhow!("cannot create the default Mesh's initial policies: {e}"))?;
            for key in policies {
                info!("created {key}");
            }
            Ok(())
        }
        Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(anyhow!("cannot create the default Mesh: {e}")),
    }
}
