//! The data echo of `meshrtc peer --data echo` on a tokio [`SessionHandle`]
//!
//! The logic is the core's sans-IO [`meshrtc::echo::Echo`]; [`run_echo`] only wires it to
//! the session's events, a ticker and the handle.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

pub use meshrtc::echo::{Echo, RemoteReport, StatsFile, PING_INTERVAL};
use meshrtc::signal::PeerId;
use tokio::sync::watch;

use crate::session::{Event, EventStream, SessionHandle};
use crate::Result;

/// Runs the echo behaviour on a joined session until `stop` completes (or the session
/// ends), then returns the report
///
/// `stop` is typically `tokio::time::sleep(duration)`. The caller leaves the session
/// afterwards. If `progress` is given, the report is published there on every tick and
/// whenever a peer connects or leaves.
pub async fn run_echo(
    handle: &SessionHandle,
    events: &mut EventStream,
    stop: impl Future<Output = ()>,
    progress: Option<&watch::Sender<BTreeMap<PeerId, RemoteReport>>>,
) -> Result<BTreeMap<PeerId, RemoteReport>> {
    let mut echo = Echo::new(handle.peer_id().clone());
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(PING_INTERVAL);
    // The first tick is immediate; pings start one interval after joining.
    ticker.tick().await;
    let publish = |echo: &Echo| {
        if let Some(p) = progress {
            p.send_replace(echo.report());
        }
    };
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticker.tick() => {
                if let Ok(stats) = handle.stats().await {
                    echo.record_stats(&stats.peers);
                }
                for (peer, msg) in echo.tick(Instant::now()) {
                    handle.send(&peer, msg).await?;
                }
                publish(&echo);
            }
            event = events.recv() => {
                let Some(event) = event else {
                    break;
                };
                let notable = matches!(
                    &event,
                    Event::Mesh(
                        meshrtc::Event::PeerConnected { .. }
                            | meshrtc::Event::PeerLeft { .. }
                            | meshrtc::Event::PeerFailed { .. }
                    )
                );
                if let Event::SendFailed { peer, error } = &event {
                    tracing::debug!(?peer, %error, "send failed");
                }
                if let Event::Mesh(event) = &event {
                    for (peer, msg) in echo.handle_event(Instant::now(), event) {
                        handle.send(&peer, msg).await?;
                    }
                }
                if notable {
                    publish(&echo);
                }
            }
        }
    }
    if let Ok(stats) = handle.stats().await {
        echo.record_stats(&stats.peers);
    }
    publish(&echo);
    Ok(echo.report())
}
