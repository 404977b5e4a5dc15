//! Rooms shared between server nodes through Redis
//!
//! The node's logic ([`Server`](meshrtc::signal::server::Server) with
//! [`ServerConfig::node`] set) decides everything; this adapter only carries what it asks for:
//!
//! * **The room store** is Redis. Each room is a hash `P:room:ROOM`, one field per member:
//!   `NODE \t RESUME-TOKEN \t SEQ \t METADATA-LEN \t MEMBER-JSON` (`SEQ` keeps join order).
//!   Claims run as one Lua script, so that "room full", "id taken" and the room's metadata
//!   budget hold for every node at once, and a resume moves a place between nodes
//!   atomically. Each node keeps the set `P:node:NODE` of its places and refreshes
//!   `P:alive:NODE` (expiring after [`RedisConfig::node_ttl`]).
//! * **Node death.** Every node reaps, every [`RedisConfig::refresh`], the places of nodes
//!   whose `alive` key expired, and tells the remaining nodes of each room (`peer.left`,
//!   reason `"timeout"`). A crashed node's peers are therefore reported left within
//!   `node_ttl + refresh` (12 s by default) unless they resumed on another node first.
//! * **Messages** between nodes go by pub/sub on `P:to:NODE`, in order per node (one
//!   pipeline at a time).
//! * **Recovery.** Every `refresh`, and at once after the subscription is re-established
//!   (Redis restarted), the node restores its own places that the store lacks and lists the
//!   store's members of its rooms, which settles events lost meanwhile.
//!
//! Scripts build some keys themselves, so this is for a single Redis server (or a primary
//! with replicas), not Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use meshrtc::signal::server::{
    Claim, ClaimOutcome, ClusterEvent, ClusterMember, ClusterOutput, Place, ServerConfig,
};
use meshrtc::signal::{LeftReason, NodeId, PeerId, RoomId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Value};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::ServerInput;
use crate::error::ServerError;

/// How a node reaches Redis and how it shares its rooms
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://HOST:PORT[/DB]`
    pub url: String,
    /// This node's name, unique among the nodes sharing the Redis
    pub node: NodeId,
    /// A node silent for this long is dead: its peers are reaped (default 10 s)
    pub node_ttl: Duration,
    /// How often the node refreshes its liveness, restores and lists its rooms, and reaps
    /// dead nodes (default 2 s)
    pub refresh: Duration,
    /// Prefix of every key and channel (default `meshrtc`)
    pub prefix: String,
}

impl RedisConfig {
    /// Node `node` on the Redis at `url`, with the default timings
    pub fn new(url: impl Into<String>, node: NodeId) -> Self {
        Self {
            url: url.into(),
            node,
            node_ttl: Duration::from_secs(10),
            refresh: Duration::from_secs(2),
            prefix: "meshrtc".into(),
        }
    }
}

/// What the logic task hands the adapter
#[derive(Debug)]
pub(super) struct Cluster {
    ops: mpsc::UnboundedSender<ClusterOutput>,
}

impl Cluster {
    /// Queues what the logic asked for; done in order
    pub(super) fn push(&self, out: ClusterOutput) {
        let _ = self.ops.send(out);
    }
}

/// Keys and channels of one deployment
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    node: NodeId,
}

impl Keys {
    fn room(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }
    fn node_places(&self, node: &NodeId) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn alive(&self) -> String {
        format!("{}:alive:{}", self.prefix, self.node)
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn channel(&self, node: &NodeId) -> String {
        format!("{}:to:{node}", self.prefix)
    }
}

/// Seats a member if the room allows (or moves a place here on a resume)
///
/// KEYS: room hash, this node's place set. ARGV: peer, node, presented resume token ('' =
/// fresh), max peers, max room metadata, metadata length, new token, member JSON, room,
/// prefix.
const CLAIM: &str = r"
local function split(v)
  return string.match(v, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
end
local peer, node = ARGV[1], ARGV[2]
local place = ARGV[9] .. '\t' .. peer
if ARGV[3] ~= '' then
  local cur = redis.call('HGET', KEYS[1], peer)
  if not cur then return {'noresume'} end
  local n, t, s, l, j = split(cur)
  if t ~= ARGV[3] then return {'noresume'} end
  redis.call('HSET', KEYS[1], peer, node .. '\t' .. t .. '\t' .. s .. '\t' .. l .. '\t' .. j)
  redis.call('SREM', ARGV[10] .. ':node:' .. n, place)
  redis.call('SADD', KEYS[2], place)
  local out = {'resumed', n}
  for _, x in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(out, x) end
  return out
end
local vals = redis.call('HVALS', KEYS[1])
if #vals >= tonumber(ARGV[4]) then return {'full'} end
if redis.call('HEXISTS', KEYS[1], peer) == 1 then return {'taken'} end
local used = 0
for _, v in ipairs(vals) do
  local _, _, _, l = split(v)
  used = used + tonumber(l)
end
if used + tonumber(ARGV[6]) > tonumber(ARGV[5]) then return {'meta', tostring(used)} end
local out = {'joined'}
for _, x in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(out, x) end
local seq = redis.call('INCR', ARGV[10] .. ':seq')
redis.call('HSET', KEYS[1], peer, node .. '\t' .. ARGV[7] .. '\t' .. seq .. '\t' .. ARGV[6] .. '\t' .. ARGV[8])
redis.call('SADD', KEYS[2], place)
return out
";

/// Removes this node's place (not one that moved on)
///
/// KEYS: room hash, this node's place set. ARGV: peer, node, room.
const RELEASE: &str = r"
redis.call('SREM', KEYS[2], ARGV[3] .. '\t' .. ARGV[1])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, #ARGV[2] + 1) == ARGV[2] .. '\t' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
";

/// Marks this node alive and restores its places the store lacks (within the room limit);
/// returns the places it could not restore
///
/// KEYS: alive key, node set, this node's place set. ARGV: node, ttl ms, prefix, max
/// peers, then per place: room, peer, token, metadata length, member JSON.
const HEARTBEAT: &str = r"
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
local lost = {}
for i = 5, #ARGV, 5 do
  local room, peer = ARGV[i], ARGV[i + 1]
  local key = ARGV[3] .. ':room:' .. room
  if redis.call('HEXISTS', key, peer) == 0 then
    if redis.call('HLEN', key) < tonumber(ARGV[4]) then
      local seq = redis.call('INCR', ARGV[3] .. ':seq')
      redis.call('HSET', key, peer, ARGV[1] .. '\t' .. ARGV[i + 2] .. '\t' .. seq .. '\t' .. ARGV[i + 3] .. '\t' .. ARGV[i + 4])
      redis.call('SADD', KEYS[3], room .. '\t' .. peer)
    else
      table.insert(lost, room .. '\t' .. peer)
    end
  end
end
return lost
";

/// Removes the places of dead nodes (and of node ARGV[2], if given: this node's previous
/// life); returns `room \t peer \t node,node,...` (the nodes still in the room) per place
///
/// KEYS: node set. ARGV: prefix, node to reap regardless.
const REAP: &str = r"
local candidates = redis.call('SMEMBERS', KEYS[1])
if ARGV[2] ~= '' then table.insert(candidates, ARGV[2]) end
local out = {}
for _, n in ipairs(candidates) do
  if n == ARGV[2] or redis.call('EXISTS', ARGV[1] .. ':alive:' .. n) == 0 then
    local set = ARGV[1] .. ':node:' .. n
    for _, place in ipairs(redis.call('SMEMBERS', set)) do
      local room, peer = string.match(place, '^([^\t]*)\t(.*)$')
      local key = ARGV[1] .. ':room:' .. room
      local cur = redis.call('HGET', key, peer)
      if cur and string.sub(cur, 1, #n + 1) == n .. '\t' then
        redis.call('HDEL', key, peer)
        local nodes, list = {}, {}
        for _, v in ipairs(redis.call('HVALS', key)) do
          local m = string.match(v, '^([^\t]*)')
          if not nodes[m] then
            nodes[m] = true
            table.insert(list, m)
          end
        end
        table.insert(out, room .. '\t' .. peer .. '\t' .. table.concat(list, ','))
      end
    end
    redis.call('DEL', set)
    redis.call('SREM', KEYS[1], n)
  end
end
return out
";

fn eval(script: &str) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(script);
    c
}

/// Connects to Redis, forgets this node's previous life and starts the adapter's tasks
///
/// Fails when Redis cannot be reached now; later outages are waited out.
pub(super) async fn start(
    config: &RedisConfig,
    rooms: &ServerConfig,
    logic: mpsc::Sender<ServerInput>,
    stop: watch::Receiver<bool>,
) -> Result<Cluster, ServerError> {
    let unreachable = |e: redis::RedisError| ServerError::Redis(format!("{}: {e}", config.url));
    let client = redis::Client::open(config.url.as_str()).map_err(unreachable)?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_max_delay(Duration::from_millis(500))
        .set_number_of_retries(2);
    let connect = client.get_connection_manager_with_config(manager_config);
    let mut conn = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| ServerError::Redis(format!("{}: no answer within 5 s", config.url)))?
        .map_err(unreachable)?;
    let keys = Keys {
        prefix: config.prefix.clone(),
        node: config.node.clone(),
    };
    // A previous process under this node id left places behind: end them.
    let reaped = reap(&mut conn, &keys, Some(&config.node))
        .await
        .map_err(unreachable)?;
    publish_reaped(&mut conn, &keys, reaped).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let resync = Arc::new(Notify::new());
    let limits = Limits {
        max_peers: rooms.max_peers_per_room,
        max_meta: rooms.max_room_metadata_bytes,
    };
    tokio::spawn(store_worker(
        conn.clone(),
        rx,
        logic.clone(),
        keys.clone(),
        limits,
        stop.clone(),
    ));
    tokio::spawn(subscriber(
        client,
        keys.clone(),
        logic.clone(),
        resync.clone(),
        stop.clone(),
    ));
    tokio::spawn(refresher(
        conn,
        keys,
        logic,
        resync,
        config.clone(),
        limits,
        stop,
    ));
    Ok(Cluster { ops: tx })
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_peers: usize,
    max_meta: usize,
}

/// Runs what the logic asked for, in order, a pipeline at a time
async fn store_worker(
    mut conn: ConnectionManager,
    mut rx: mpsc::UnboundedReceiver<ClusterOutput>,
    logic: mpsc::Sender<ServerInput>,
    keys: Keys,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::new();
    loop {
        let got = tokio::select! {
            n = rx.recv_many(&mut batch, 256) => n,
            _ = stop.changed() => return,
        };
        if got == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for op in &batch {
            match op {
                ClusterOutput::Claim(c) => {
                    pipe.add_command(claim_cmd(&keys, limits, c));
                }
                ClusterOutput::Release { room, peer_id } => {
                    pipe.add_command(
                        eval(RELEASE)
                            .arg(2)
                            .arg(keys.room(room.as_str()))
                            .arg(keys.node_places(&keys.node))
                            .arg(peer_id.as_str())
                            .arg(keys.node.as_str())
                            .arg(room.as_str())
                            .clone(),
                    );
                }
                ClusterOutput::Publish { node, event } => {
                    let payload = serde_json::to_string(event).expect("events serialize");
                    pipe.add_command(
                        redis::cmd("PUBLISH")
                            .arg(keys.channel(node))
                            .arg(payload)
                            .clone(),
                    );
                }
            }
        }
        let results: RedisResult<Vec<RedisResult<Value>>> = pipe.query_async(&mut conn).await;
        let results = match results {
            Ok(r) if r.len() == batch.len() => r.into_iter().map(Some).collect(),
            Ok(_) => {
                tracing::warn!("redis answered a pipeline with the wrong count");
                vec![None; batch.len()]
            }
            Err(e) => {
                tracing::warn!(%e, ops = batch.len(), "redis unavailable; operations lost");
                vec![None; batch.len()]
            }
        };
        for (op, result) in batch.drain(..).zip(results) {
            match op {
                ClusterOutput::Claim(c) => {
                    let outcome = match result {
                        Some(Ok(v)) => claim_outcome(&c, v).unwrap_or_else(|why| {
                            tracing::warn!(why, "unexpected claim result");
                            ClaimOutcome::Unavailable
                        }),
                        Some(Err(e)) => {
                            tracing::warn!(%e, "claim failed");
                            ClaimOutcome::Unavailable
                        }
                        None => ClaimOutcome::Unavailable,
                    };
                    let input = ServerInput::Claimed {
                        conn: c.conn,
                        outcome,
                    };
                    if logic.send(input).await.is_err() {
                        return;
                    }
                }
                ClusterOutput::Release { room, peer_id } => {
                    if let Some(Err(e)) = result {
                        tracing::warn!(%e, %room, peer = %peer_id, "release failed");
                    }
                }
                ClusterOutput::Publish { node, .. } => match result {
                    Some(Ok(Value::Int(0))) => {
                        tracing::debug!(%node, "no node listening on its channel");
                    }
                    Some(Err(e)) => tracing::warn!(%e, %node, "publish failed"),
                    _ => {}
                },
            }
        }
    }
}

fn claim_cmd(keys: &Keys, limits: Limits, c: &Claim) -> redis::Cmd {
    let json = serde_json::to_string(&c.member).expect("members serialize");
    eval(CLAIM)
        .arg(2)
        .arg(keys.room(c.room.as_str()))
        .arg(keys.node_places(&keys.node))
        .arg(c.member.peer_id.as_str())
        .arg(keys.node.as_str())
        .arg(c.resume.as_deref().unwrap_or(""))
        .arg(limits.max_peers)
        .arg(limits.max_meta)
        .arg(c.member.metadata.get().len())
        .arg(c.token.as_deref().unwrap_or(""))
        .arg(json)
        .arg(c.room.as_str())
        .arg(&keys.prefix)
        .clone()
}

/// One room hash field: the member (its node from the entry), its token and join order
fn parse_entry(value: &str) -> Option<(ClusterMember, String, u64)> {
    let mut parts = value.splitn(5, '\t');
    let node = NodeId::new(parts.next()?).ok()?;
    let token = parts.next()?.to_string();
    let seq = parts.next()?.parse().ok()?;
    let _len = parts.next()?;
    let mut member: ClusterMember = serde_json::from_str(parts.next()?).ok()?;
    member.node = node;
    Some((member, token, seq))
}

/// Members from `HGETALL` pairs, in join order
fn parse_members(pairs: &[String]) -> Vec<(ClusterMember, String)> {
    let mut members: Vec<(ClusterMember, String, u64)> = pairs
        .chunks_exact(2)
        .filter_map(|kv| {
            let parsed = parse_entry(&kv[1]);
            if parsed.is_none() {
                tracing::warn!(peer = %kv[0], "unreadable member in the room store; skipped");
            }
            parsed
        })
        .collect();
    members.sort_by_key(|m| m.2);
    members.into_iter().map(|(m, t, _)| (m, t)).collect()
}

fn claim_outcome(c: &Claim, v: Value) -> Result<ClaimOutcome, &'static str> {
    let parts: Vec<String> = redis::from_redis_value(v).map_err(|_| "not a list of strings")?;
    let (tag, rest) = parts.split_first().ok_or("empty")?;
    Ok(match tag.as_str() {
        "joined" => ClaimOutcome::Joined {
            peers: parse_members(rest).into_iter().map(|m| m.0).collect(),
        },
        "resumed" => {
            let (from, pairs) = rest.split_first().ok_or("no node")?;
            let from = NodeId::new(from.as_str()).map_err(|_| "bad node")?;
            let mut me = None;
            let mut peers = Vec::new();
            for (m, token) in parse_members(pairs) {
                if m.peer_id == c.member.peer_id {
                    me = Some((m, token));
                } else {
                    peers.push(m);
                }
            }
            let (me, token) = me.ok_or("resumed place missing")?;
            ClaimOutcome::Resumed {
                me,
                token,
                from,
                peers,
            }
        }
        "noresume" => ClaimOutcome::NotResumable,
        "full" => ClaimOutcome::RoomFull,
        "taken" => ClaimOutcome::IdTaken,
        "meta" => ClaimOutcome::RoomMetadataFull {
            used: rest.first().and_then(|u| u.parse().ok()).unwrap_or(0),
        },
        _ => return Err("unknown tag"),
    })
}

/// Hands events from other nodes to the logic; re-subscribes after Redis comes back
async fn subscriber(
    client: redis::Client,
    keys: Keys,
    logic: mpsc::Sender<ServerInput>,
    resync: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let channel = keys.channel(&keys.node);
    let mut lost = false;
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            RedisResult::Ok(pubsub)
        };
        let pubsub = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(2), subscribed) => r,
            _ = stop.changed() => return,
        };
        let pubsub = match pubsub {
            Ok(Ok(p)) => p,
            other => {
                if !lost {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(%why, "cannot subscribe to redis; retrying");
                    lost = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        if lost {
            tracing::info!("redis subscription back");
        }
        // Events sent while we were away are lost: restore and list the rooms now.
        resync.notify_one();
        let mut messages = pubsub.into_on_message();
        loop {
            let msg = tokio::select! {
                m = messages.next() => m,
                _ = stop.changed() => return,
            };
            let Some(msg) = msg else { break };
            match serde_json::from_slice::<ClusterEvent>(msg.get_payload_bytes()) {
                Ok(event) => {
                    if logic.send(ServerInput::Cluster(event)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(%e, "unreadable event from another node; dropped"),
            }
        }
        tracing::warn!("redis subscription lost; reconnecting");
        lost = true;
    }
}

/// Keeps this node alive in the store, restores its places, lists its rooms, reaps dead
/// nodes
async fn refresher(
    mut conn: ConnectionManager,
    keys: Keys,
    logic: mpsc::Sender<ServerInput>,
    resync: Arc<Notify>,
    config: RedisConfig,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = resync.notified() => {}
            _ = stop.changed() => return,
        }
        let (tx, rx) = oneshot::channel();
        if logic.send(ServerInput::Places(tx)).await.is_err() {
            return;
        }
        let Ok((places, rooms)) = rx.await else {
            return;
        };
        if let Err(e) = heartbeat(&mut conn, &keys, &config, limits, &places).await {
            tracing::warn!(%e, "redis heartbeat failed");
            continue;
        }
        match reap(&mut conn, &keys, None).await {
            Ok(reaped) => publish_reaped(&mut conn, &keys, reaped).await,
            Err(e) => tracing::warn!(%e, "reaping dead nodes failed"),
        }
        if rooms.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for room in &rooms {
            pipe.hgetall(keys.room(room.as_str()));
        }
        let listed: RedisResult<Vec<Vec<String>>> = pipe.query_async(&mut conn).await;
        let listed = match listed {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%e, "listing rooms failed");
                continue;
            }
        };
        for (room, pairs) in rooms.into_iter().zip(listed) {
            let members = parse_members(&pairs).into_iter().map(|m| m.0).collect();
            if logic
                .send(ServerInput::Listing { room, members })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

async fn heartbeat(
    conn: &mut ConnectionManager,
    keys: &Keys,
    config: &RedisConfig,
    limits: Limits,
    places: &[Place],
) -> RedisResult<()> {
    let mut cmd = eval(HEARTBEAT);
    cmd.arg(3)
        .arg(keys.alive())
        .arg(keys.nodes())
        .arg(keys.node_places(&keys.node))
        .arg(keys.node.as_str())
        .arg(u64::try_from(config.node_ttl.as_millis()).unwrap_or(u64::MAX))
        .arg(&keys.prefix)
        .arg(limits.max_peers);
    for p in places {
        let json = serde_json::to_string(&p.member).expect("members serialize");
        cmd.arg(p.room.as_str())
            .arg(p.member.peer_id.as_str())
            .arg(p.token.as_deref().unwrap_or(""))
            .arg(p.member.metadata.get().len())
            .arg(json);
    }
    let lost: Vec<String> = cmd.query_async(conn).await?;
    for place in lost {
        tracing::warn!(%place, "cannot restore a place: its room filled up meanwhile");
    }
    Ok(())
}

/// A place reaped from a dead node, with the nodes still in its room
struct Reaped {
    room: RoomId,
    peer_id: PeerId,
    nodes: Vec<NodeId>,
}

async fn reap(
    conn: &mut ConnectionManager,
    keys: &Keys,
    node: Option<&NodeId>,
) -> RedisResult<Vec<Reaped>> {
    let out: Vec<String> = eval(REAP)
        .arg(1)
        .arg(keys.nodes())
        .arg(&keys.prefix)
        .arg(node.map_or("", NodeId::as_str))
        .query_async(conn)
        .await?;
    Ok(out
        .iter()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '\t');
            let room = RoomId::new(parts.next()?).ok()?;
            let peer_id = PeerId::new(parts.next()?).ok()?;
            let nodes = parts
                .next()?
                .split(',')
                .filter_map(|n| NodeId::new(n).ok())
                .collect();
            Some(Reaped {
                room,
                peer_id,
                nodes,
            })
        })
        .collect())
}

/// Tells the nodes left in each room that a dead node's member left
async fn publish_reaped(conn: &mut ConnectionManager, keys: &Keys, reaped: Vec<Reaped>) {
    if reaped.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for r in &reaped {
        tracing::info!(room = %r.room, peer = %r.peer_id, "reaped a dead node's member");
        let event = ClusterEvent::Left {
            room: r.room.clone(),
            peer_id: r.peer_id.clone(),
            reason: LeftReason::Timeout,
        };
        let payload = serde_json::to_string(&event).expect("events serialize");
        for node in &r.nodes {
            pipe.publish(keys.channel(node), payload.clone()).ignore();
        }
    }
    if let Err(e) = pipe.query_async::<()>(conn).await {
        tracing::warn!(%e, "telling nodes about reaped members failed");
    }
}
