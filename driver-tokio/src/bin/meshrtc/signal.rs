//! `meshrtc signal`: the signaling server until SIGINT or SIGTERM

use std::io::Write;

use meshrtc::signal::server::ServerConfig;
use meshrtc_tokio::{SignalServer, SignalServerConfig};

use crate::SignalArgs;

pub(crate) async fn run(args: SignalArgs) -> Result<(), String> {
    let config = SignalServerConfig {
        rooms: ServerConfig {
            max_peers_per_room: args.max_peers_per_room as usize,
            ..ServerConfig::default()
        },
        ..SignalServerConfig::default()
    };
    let server = SignalServer::bind_with(args.listen, config)
        .await
        .map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on ws://{}/", server.local_addr())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);
    wait_for_termination().await?;
    server.shutdown().await;
    Ok(())
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
