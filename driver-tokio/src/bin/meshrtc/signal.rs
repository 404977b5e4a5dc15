//! `meshrtc signal`: the signaling server until SIGINT or SIGTERM; `meshrtc token`: a room token

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshrtc::signal::auth::{mint_room_token, RoomClaims, Secret};
use meshrtc::signal::server::ServerConfig;
use meshrtc::signal::IceServer;
use meshrtc::signal::NodeId;
use meshrtc_tokio::{RedisConfig, SignalServer, SignalServerConfig};

use crate::{SignalArgs, TokenArgs};

pub(crate) async fn run(args: SignalArgs) -> Result<(), String> {
    let token_secret = args
        .token_secret_file
        .as_deref()
        .map(|f| read_secret(f, "token secret"))
        .transpose()?;
    let turn_secret = args
        .turn_secret_file
        .as_deref()
        .map(|f| read_secret(f, "TURN secret"))
        .transpose()?;
    if turn_secret.is_some() && !args.ice_server.iter().any(|s| is_turn(s)) {
        return Err("--turn-secret-file needs a turn: or turns: --ice-server to mint for".into());
    }
    let rooms = ServerConfig {
        max_peers_per_room: args.max_peers_per_room as usize,
        resume_grace: Duration::from_secs(args.resume_grace),
        token_secret,
        ice_servers: args
            .ice_server
            .iter()
            .cloned()
            .map(IceServer::new)
            .collect(),
        turn_secret,
        turn_ttl: Duration::from_secs(args.turn_ttl),
        ..ServerConfig::default()
    };
    let config = SignalServerConfig {
        rooms,
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        max_connections_per_ip: usize::try_from(args.max_connections_per_ip).unwrap_or(usize::MAX),
        allowed_origins: args.allow_origin,
        metrics_addr: args.metrics,
        redis: match (args.redis, args.node_id) {
            (Some(url), Some(node)) => {
                let ttl = Duration::from_secs(args.node_ttl);
                Some(RedisConfig {
                    node_ttl: ttl,
                    refresh: ttl / 5,
                    ..RedisConfig::new(url, node)
                })
            }
            _ => None,
        },
        ..SignalServerConfig::default()
    };
    // Watch the signals before saying we are ready: a SIGTERM right after the listening
    // line must end the server cleanly, not by the default action.
    let termination = Termination::install()?;
    let server = SignalServer::bind_with(args.listen, config)
        .await
        .map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on ws://{}/", server.local_addr())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);
    if let Some(at) = server.metrics_addr() {
        eprintln!("metrics on http://{at}/metrics");
    }
    termination.wait().await?;
    server.shutdown().await;
    Ok(())
}

/// `meshrtc token`: prints one room token (JWT, HS256)
pub(crate) fn token(args: TokenArgs) -> Result<(), String> {
    let secret = read_secret(&args.secret_file, "secret")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_string())?;
    let claims = RoomClaims {
        room: args.room,
        sub: args.id,
        exp: now.as_secs().saturating_add(args.ttl),
        nbf: None,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", mint_room_token(&secret, &claims))
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// A secret from a file (never from the command line, where `ps` shows it)
fn read_secret(path: &Path, what: &str) -> Result<Secret, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read {what} file {}: {e}", path.display()))?;
    Secret::from_file_contents(&bytes)
        .ok_or_else(|| format!("{what} file {} is empty", path.display()))
}

/// Checks a Redis URL: `redis://HOST:PORT[/DB]` (or `redis+unix://`, `unix://`)
pub(crate) fn parse_redis_url(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("redis://") else {
        if lower.starts_with("unix://") || lower.starts_with("redis+unix://") {
            return Ok(s.to_string());
        }
        return Err("not a Redis URL (e.g. redis://127.0.0.1:6379)".into());
    };
    let hostport = rest.split('/').next().unwrap_or("");
    let hostport = hostport.rsplit('@').next().unwrap_or("");
    if hostport.is_empty() {
        return Err("the Redis URL has no host (e.g. redis://127.0.0.1:6379)".into());
    }
    Ok(s.to_string())
}

/// Checks a node id: 1-64 characters of `[A-Za-z0-9_.-]`
pub(crate) fn parse_node_id(s: &str) -> Result<NodeId, String> {
    NodeId::new(s).map_err(|e| format!("bad node id: {e}"))
}

fn is_turn(url: &str) -> bool {
    let url = url.to_ascii_lowercase();
    url.starts_with("turn:") || url.starts_with("turns:")
}

/// Checks an ICE server URL: `stun:`, `stuns:`, `turn:` or `turns:`, then `HOST:PORT` (IPv6
/// hosts in brackets), then for TURN an optional `?transport=udp|tcp`
pub(crate) fn parse_ice_server(s: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "{why} (e.g. stun:HOST:PORT or turn:HOST:PORT?transport=udp)"
        ))
    };
    let lower = s.to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once(':') else {
        return bad("not an ICE server URL");
    };
    let turn = match scheme {
        "stun" | "stuns" => false,
        "turn" | "turns" => true,
        _ => return bad("the scheme must be stun, stuns, turn or turns"),
    };
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    match query {
        None => {}
        Some(q) if turn && matches!(q, "transport=udp" | "transport=tcp") => {}
        Some(_) => return bad("the only query is ?transport=udp or ?transport=tcp, on turn: URLs"),
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => return bad("HOST:PORT expected"),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    if !host_ok {
        return bad("bad host");
    }
    if !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return bad("bad port");
    }
    Ok(s.to_string())
}

/// SIGINT and SIGTERM, watched from the moment it is installed
pub(crate) struct Termination {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Termination {
    pub(crate) fn install() -> Result<Self, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                int: signal(SignalKind::interrupt())
                    .map_err(|e| format!("cannot watch SIGINT: {e}"))?,
                term: signal(SignalKind::terminate())
                    .map_err(|e| format!("cannot watch SIGTERM: {e}"))?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for SIGINT (Ctrl-C) or, on Unix, SIGTERM
    pub(crate) async fn wait(mut self) -> Result<(), String> {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => Ok(()),
                _ = self.term.recv() => Ok(()),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            tokio::signal::ctrl_c()
                .await
                .map_err(|e| format!("cannot watch Ctrl-C: {e}"))
        }
    }
}

/// Waits for SIGINT (Ctrl-C) or, on Unix, SIGTERM
pub(crate) async fn wait_for_termination() -> Result<(), String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(|e| format!("cannot watch SIGINT: {e}")),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| format!("cannot watch Ctrl-C: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_server_urls_are_checked() {
        for good in [
            "stun:127.0.0.1:3478",
            "stun:stun.example.org:19302",
            "turn:10.0.0.1:3478?transport=udp",
            "TURNS:turn.example:5349?transport=tcp",
            "turn:[::1]:3478",
        ] {
            assert_eq!(parse_ice_server(good).as_deref(), Ok(good), "{good}");
        }
        for bad in [
            "",
            "stun",
            "http://x:1",
            "stun:host",
            "stun:host:0",
            "stun:host:70000",
            "stun::3478",
            "stun:host:3478?transport=udp",
            "turn:host:3478?transport=sctp",
            "turn:[nope]:3478",
            "turn:a b:1",
        ] {
            assert!(parse_ice_server(bad).is_err(), "{bad}");
        }
    }
}
