use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use huiyi::Config;
use signaling::auth;

/// Huiyi: a media server for video meetings and live classes.
///
/// With no subcommand, runs signaling and an embedded media node in one process and
/// prints the address of the web client. Settings come from the config file, then
/// environment variables, then these flags.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// TOML config file (keys: http, [media] bind/public_ips/shards/ice_timeout_secs/
    /// max_participants_per_room/max_publications_per_participant, [auth] api_secret,
    /// [log] json/level); see huiyi.example.toml.
    #[arg(long, short, env = "HUIYI_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// HTTP and WebSocket address (default 127.0.0.1:7700).
    #[arg(long, env = "HUIYI_HTTP")]
    http: Option<SocketAddr>,
    /// Serve `/metrics` and the admin API on this address only (e.g. 127.0.0.1:7702), not
    /// on the public HTTP port.
    #[arg(long, env = "HUIYI_ADMIN_HTTP")]
    admin_http: Option<SocketAddr>,
    /// UDP address for all WebRTC media (default 127.0.0.1:7701).
    #[arg(long, env = "HUIYI_MEDIA")]
    media: Option<SocketAddr>,
    /// IP announced to browsers as the media candidate; repeat for several. Needed when
    /// --media binds 0.0.0.0 behind NAT or on a server.
    #[arg(long = "public-ip", env = "HUIYI_PUBLIC_IPS", value_delimiter = ',')]
    public_ips: Vec<IpAddr>,
    /// Forwarding threads (default: one per core).
    #[arg(long, env = "HUIYI_SHARDS")]
    shards: Option<usize>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "HUIYI_LOG_JSON")]
    log_json: bool,
    /// Log filter, e.g. `info` or `huiyi=debug,sfu=debug` (also RUST_LOG).
    #[arg(long, env = "HUIYI_LOG")]
    log: Option<String>,
    /// A throwaway server: allow the public development secret (and /v1/dev/token) on an
    /// address other than loopback, and secrets shorter than 32 bytes.
    #[arg(long, env = "HUIYI_DEV")]
    dev: bool,
    /// Broadcast tier role: `all` (meetings and live classes in one process, the
    /// default), `origin` (holds publishers, feeds edges) or `edge` (plays an origin's
    /// live classes to viewers; needs --origin).
    #[arg(long, env = "HUIYI_ROLE", value_enum)]
    role: Option<huiyi::config::Role>,
    /// An edge's origin (or parent edge): its relay address, e.g. 10.0.0.5:7703.
    #[arg(long, env = "HUIYI_ORIGIN")]
    origin: Option<SocketAddr>,
    /// UDP address for relay links from edges (an origin's default: 127.0.0.1:7703).
    #[arg(long, env = "HUIYI_RELAY_LISTEN")]
    relay_listen: Option<SocketAddr>,
    /// This node's HTTP base URL as viewers reach it; an origin sends viewers to its
    /// edges' URLs (default: http:// and --http).
    #[arg(long, env = "HUIYI_PUBLIC_URL")]
    public_url: Option<String>,
    /// This node's name on relay links (default: the host name).
    #[arg(long, env = "HUIYI_NODE_NAME")]
    node_name: Option<String>,
    /// Serve HTTPS and WSS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "HUIYI_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "HUIYI_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS and WSS with a certificate made at start for this machine's names and
    /// addresses (a LAN classroom without a proxy); with --tls-cert/--tls-key it is kept
    /// there and used again on the next start.
    #[arg(long, env = "HUIYI_TLS_SELF_SIGNED")]
    tls_self_signed: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Print an access token signed with the configured secret (HUIYI_API_SECRET).
    Token {
        /// Room the token admits to (`*` with --admin for every room).
        #[arg(long, default_value = "*")]
        room: String,
        /// Participant identity.
        #[arg(long, default_value = "admin")]
        identity: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 6 * 3600)]
        ttl: u64,
        /// Grant roomAdmin (for the admin API) instead of publish and subscribe.
        #[arg(long)]
        admin: bool,
        /// A participant who may also use the host controls: publish, subscribe and
        /// roomAdmin for its room.
        #[arg(long, conflicts_with_all = ["admin", "subscribe_only"])]
        host: bool,
        /// Receive only: no publish grant.
        #[arg(long)]
        subscribe_only: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.serve.config.as_deref())?;
    apply_flags(&mut config, &cli.serve);
    match cli.command {
        Some(Command::Token { room, identity, name, ttl, admin, host, subscribe_only }) => {
            let claims = auth::Claims {
                sub: identity,
                name,
                room,
                exp: auth::now_unix() + ttl,
                nbf: None,
                grants: auth::Grants {
                    can_publish: !admin && !subscribe_only,
                    can_subscribe: !admin,
                    room_admin: admin || host,
                },
            };
            println!("{}", auth::mint(config.secret(), &claims));
            Ok(())
        }
        None | Some(Command::Serve) => serve(config),
    }
}

fn apply_flags(config: &mut Config, args: &ServeArgs) {
    if let Some(http) = args.http {
        config.http = http;
    }
    if let Some(admin) = args.admin_http {
        config.admin_http = Some(admin);
    }
    if let Some(media) = args.media {
        config.media.bind = media;
    }
    if !args.public_ips.is_empty() {
        config.media.public_ips = args.public_ips.clone();
    }
    if let Some(shards) = args.shards {
        config.media.shards = shards;
    }
    if args.log_json {
        config.log.json = true;
    }
    if let Some(level) = &args.log {
        config.log.level = level.clone();
    }
    config.dev |= args.dev;
    if let Some(role) = args.role {
        config.relay.role = role;
    }
    if let Some(origin) = args.origin {
        config.relay.origin = Some(origin);
    }
    if let Some(listen) = args.relay_listen {
        config.relay.listen = Some(listen);
    }
    if let Some(url) = &args.public_url {
        config.relay.public_url = Some(url.trim_end_matches('/').to_string());
    }
    if let Some(name) = &args.node_name {
        config.relay.node = Some(name.clone());
    }
    if let Some(cert) = &args.tls_cert {
        config.tls.cert = Some(cert.clone());
    }
    if let Some(key) = &args.tls_key {
        config.tls.key = Some(key.clone());
    }
    config.tls.self_signed |= args.tls_self_signed;
}

fn serve(config: Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .context("bad log filter")?;
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log.json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
    config.check_exposure()?;
    huiyi::keep_freed_memory();
    match huiyi::raise_open_file_limit() {
        Ok(n) if n < 4096 => {
            tracing::warn!(limit = n, "few open files allowed; raise the hard limit (ulimit -Hn)")
        }
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open-file limit"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let running = huiyi::start(&config).await?;
        if config.dev_mode() {
            tracing::warn!(
                "no api_secret configured: tokens use the public dev secret and /v1/dev/token is on; \
                 set HUIYI_API_SECRET (at least 32 bytes) before exposing this server"
            );
        }
        println!();
        let scheme = if running.tls.is_some() { "https" } else { "http" };
        let port = running.http_addr.port();
        if running.http_addr.ip().is_unspecified() {
            // 0.0.0.0 is no address to open: name the machine's own.
            let mut addresses: Vec<IpAddr> = huiyi::tls::interface_addresses();
            addresses.insert(0, std::net::Ipv4Addr::LOCALHOST.into());
            let urls: Vec<String> =
                addresses.iter().map(|a| format!("{scheme}://{}/", SocketAddr::new(*a, port))).collect();
            println!("  Huiyi is running. Open one of {} in two browser tabs.", urls.join(", "));
        } else {
            println!("  Huiyi is running. Open {scheme}://{}/ in two browser tabs.", running.http_addr);
        }
        if let Some(tls) = &running.tls {
            println!("  {}", tls.describe());
        }
        // Metrics share the public port (and its TLS) unless they have a listener of their own.
        let metrics = match running.admin_addr {
            Some(admin) => format!("http://{admin}/metrics"),
            None => format!("{scheme}://{}/metrics", running.http_addr),
        };
        match running.media_tcp_addr {
            Some(tcp) => {
                println!("  Media on udp/{} and tcp/{tcp}. Metrics at {metrics}", running.media_addr)
            }
            None => println!("  Media on udp/{}. Metrics at {metrics}", running.media_addr),
        }
        if let (huiyi::config::Role::Edge, Some(origin)) = (config.relay.role, config.relay.origin) {
            println!("  Edge of the origin at udp/{origin}: viewers play its live classes here.");
        }
        if let Some(relay) = running.relay_addr {
            println!("  Relay links from edges on udp/{relay}.");
        }
        println!();
        let mut task = running.task;
        tokio::select! {
            result = &mut task => result.context("HTTP server task")?.context("HTTP server")?,
            () = stop_signal() => {
                let grace = std::time::Duration::from_secs(config.drain_secs);
                tracing::info!(?grace, "draining: new joins are refused; waiting for participants to leave");
                let drained = huiyi::drain(&running.state, grace);
                tokio::select! {
                    () = drained => tracing::info!("shutting down"),
                    () = stop_signal() => tracing::info!("second signal: shutting down now"),
                }
            }
        }
        Ok(())
    })
}

/// SIGTERM (what orchestrators send) or Ctrl-C.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
