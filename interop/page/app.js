// The interop test page: one browser peer of a meshrtc room.
//
// It speaks shared/contracts/signaling.md (JSON-RPC 2.0 over WebSocket) with RTCPeerConnection:
// announces, offers to every peer already in the room (the newcomer offers), answers offers from
// later peers, trickles ICE candidates both ways (only UDP candidates on 127.0.0.1; every other
// candidate is dropped before it is sent or added), opens the data channel "meshrtc" when it
// offers, sends fake-device audio and video when asked, and answers the data channel the way
// `meshrtc peer --data echo` does (contracts/cli.md): a ping gets a pong, a pong nothing, and
// anything else is sent back unchanged. Besides pings it sends its own probes (text and
// binary) and checks that they come back byte for byte.
//
// Twice a second it POSTs a JSON report (connection states, data counters, getStats figures,
// SDPs, log) to /report?tag=TAG on the server that served it: that is how the test reads it.
//
// Query parameters: ws (signaling URL, required), room, id, audio=1, video=1,
// codec=h264|vp8|vp9, width, height, fps, tag, probe_sizes (comma-separated byte sizes of the
// binary probes sent when the channel opens), burst (text probes sent when it opens), turn
// (a turn: URL on 127.0.0.1), turn_user, turn_pass, policy=all|relay (iceTransportPolicy).
'use strict';

const q = new URLSearchParams(location.search);
const cfg = {
  ws: q.get('ws'),
  room: q.get('room') || 'interop',
  id: q.get('id') || undefined,
  audio: q.get('audio') === '1',
  video: q.get('video') === '1',
  codec: (q.get('codec') || '').toLowerCase(),
  width: Number(q.get('width') || 320),
  height: Number(q.get('height') || 180),
  fps: Number(q.get('fps') || 30),
  tag: q.get('tag') || 'page',
  burst: Number(q.get('burst') || 0),
  probeSizes: (q.get('probe_sizes') || '')
    .split(',')
    .filter((s) => s !== '')
    .map(Number),
  turn: q.get('turn'),
  turnUser: q.get('turn_user') || undefined,
  turnPass: q.get('turn_pass') || undefined,
  policy: q.get('policy') || 'all',
  // Send the camera track disabled (black frames, a few kbit/s): receive video, send next to none.
  muteVideo: q.get('mute_video') === '1',
  // Text probes per second (round trips through the data channel's echo); default 1.
  probeHz: Number(q.get('probe_hz') || 1),
};

function rtcConfig() {
  const iceServers = cfg.turn ? [{ urls: [cfg.turn], username: cfg.turnUser, credential: cfg.turnPass }] : [];
  return { iceServers, iceTransportPolicy: cfg.policy };
}

const T0 = performance.now();
const now = () => performance.now() - T0;

const report = {
  tag: cfg.tag,
  id: null,
  room: cfg.room,
  state: 'loading',
  user_agent: navigator.userAgent,
  errors: [],
  rpc_errors: [],
  log: [],
  send_video_codecs: [],
  peers: {},
  seq: 0,
  now_ms: 0,
};

function log(...parts) {
  const text = parts.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join(' ');
  const line = (now() / 1000).toFixed(3) + ' ' + text;
  console.log(line);
  report.log.push(line);
  if (report.log.length > 400) report.log.splice(0, report.log.length - 400);
}

function fail(where, e) {
  const msg = where + ': ' + (e && e.message ? e.message : String(e));
  log('ERROR', msg);
  report.errors.push(msg);
}

window.addEventListener('error', (e) => fail('uncaught', e.error || e.message));
window.addEventListener('unhandledrejection', (e) => fail('unhandled rejection', e.reason));

// ---- candidates: loopback UDP only ----

// `candidate:FOUNDATION COMPONENT TRANSPORT PRIORITY ADDRESS PORT typ TYPE ...`
function isLoopbackUdp(line) {
  const f = line.replace(/^a=/, '').trim().split(/\s+/);
  return f.length >= 8 && f[2].toLowerCase() === 'udp' && f[4] === '127.0.0.1';
}

// The `typ` of a candidate line (host, srflx, prflx, relay)
function candType(line) {
  const f = line.replace(/^a=/, '').trim().split(/\s+/);
  const i = f.indexOf('typ');
  return i >= 0 && i + 1 < f.length ? f[i + 1] : 'unknown';
}

// Drops every a=candidate line that is not loopback UDP; counts what it dropped.
function filterSdp(sdp, counters, key) {
  const lines = sdp.split('\r\n');
  const kept = lines.filter((l) => {
    if (!l.startsWith('a=candidate:')) return true;
    if (isLoopbackUdp(l)) return true;
    counters[key] += 1;
    return false;
  });
  return kept.join('\r\n');
}

// ---- signaling (JSON-RPC 2.0 over WebSocket) ----

let ws = null;
let nextRpcId = 1;
const pending = new Map();
let myId = null;

function rpc(method, params) {
  return new Promise((resolve, reject) => {
    const id = nextRpcId++;
    pending.set(id, { resolve, reject, method });
    ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
  });
}

// A request whose failure is worth recording but not fatal (a candidate for a peer that left).
function rpcQuiet(method, params) {
  rpc(method, params).catch((e) => {
    report.rpc_errors.push(method + ': ' + e.message);
    log('rpc error', method, e.message);
  });
}

function onSignal(ev) {
  let m;
  try {
    m = JSON.parse(ev.data);
  } catch (e) {
    fail('signal parse', e);
    return;
  }
  if (m.method === undefined) {
    const p = pending.get(m.id);
    if (!p) {
      log('response to unknown request', m);
      return;
    }
    pending.delete(m.id);
    if (m.error) {
      const err = new Error(p.method + ' failed: ' + m.error.code + ' ' + m.error.message);
      err.code = m.error.code;
      p.reject(err);
    } else {
      p.resolve(m.result);
    }
    return;
  }
  const params = m.params || {};
  switch (m.method) {
    case 'peer.joined':
      log('peer joined', params.peer_id, params.capabilities);
      break;
    case 'peer.left':
      onLeft(params.peer_id, params.reason);
      break;
    case 'peer.offer':
      onOffer(params.from, params.sdp).catch((e) => fail('offer from ' + params.from, e));
      break;
    case 'peer.answer':
      onAnswer(params.from, params.sdp).catch((e) => fail('answer from ' + params.from, e));
      break;
    case 'peer.ice_candidate':
      onRemoteCandidate(params).catch((e) => fail('candidate from ' + params.from, e));
      break;
    default:
      log('unknown notification', m.method);
  }
}

// ---- peers ----

const peers = new Map();
const earlyCandidates = new Map();
let localStream = null;

function newPeer(remoteId, role) {
  const pc = new RTCPeerConnection(rtcConfig());
  const p = {
    id: remoteId,
    role,
    pc,
    dc: null,
    offerAt: null,
    descriptionSent: false,
    haveRemote: false,
    queuedRemote: [],
    queuedLocal: [],
    probes: new Map(),
    probeSentAt: new Map(),
    nextProbe: 1,
    nextPing: 1,
    timer: null,
    history: [],
    r: {
      role,
      left: null,
      connect_ms: null,
      ice_connected_ms: null,
      ice_state: pc.iceConnectionState,
      connection_state: pc.connectionState,
      dc_state: null,
      dc_label: null,
      pings_sent: 0,
      pongs_received: 0,
      pings_received: 0,
      pongs_sent: 0,
      messages_received: 0,
      echoed: 0,
      probes_sent: 0,
      probes_ok: 0,
      probes_bad: 0,
      probe_bytes_ok: 0,
      local_cands_sent: 0,
      local_cands_filtered: 0,
      local_cand_types: {},
      remote_cands_added: 0,
      remote_cands_filtered: 0,
      remote_end_of_candidates: 0,
      remote_cand_errors: [],
      local_sdp: null,
      remote_sdp: null,
      stats: null,
      history: [],
      probe_rtts: [],
    },
  };
  peers.set(remoteId, p);
  report.peers[remoteId] = p.r;

  pc.onicecandidate = (e) => {
    const c = e.candidate;
    let msg;
    if (!c || !c.candidate) {
      msg = { to: remoteId, candidate: '', sdp_mid: c ? c.sdpMid : null, sdp_m_line_index: c ? c.sdpMLineIndex : null };
    } else if (!isLoopbackUdp(c.candidate)) {
      p.r.local_cands_filtered += 1;
      return;
    } else {
      p.r.local_cands_sent += 1;
      const t = candType(c.candidate);
      p.r.local_cand_types[t] = (p.r.local_cand_types[t] || 0) + 1;
      msg = { to: remoteId, candidate: c.candidate, sdp_mid: c.sdpMid, sdp_m_line_index: c.sdpMLineIndex };
    }
    if (p.descriptionSent) rpcQuiet('peer.ice_candidate', msg);
    else p.queuedLocal.push(msg);
  };
  pc.oniceconnectionstatechange = () => {
    p.r.ice_state = pc.iceConnectionState;
    log(remoteId, 'ice', pc.iceConnectionState);
    if ((pc.iceConnectionState === 'connected' || pc.iceConnectionState === 'completed') && p.r.ice_connected_ms === null) {
      p.r.ice_connected_ms = now() - p.offerAt;
    }
  };
  pc.onconnectionstatechange = () => {
    p.r.connection_state = pc.connectionState;
    log(remoteId, 'connection', pc.connectionState);
  };
  pc.ondatachannel = (e) => setupChannel(p, e.channel);
  pc.ontrack = (e) => {
    log(remoteId, 'track', e.track.kind, 'mid', e.transceiver.mid);
    const el = document.createElement(e.track.kind === 'video' ? 'video' : 'audio');
    el.autoplay = true;
    el.playsInline = true;
    el.muted = e.track.kind === 'video';
    el.srcObject = new MediaStream([e.track]);
    document.getElementById('videos').appendChild(el);
    el.play().catch((err) => log('play()', e.track.kind, String(err)));
  };
  return p;
}

function markDescriptionSent(p) {
  p.descriptionSent = true;
  for (const msg of p.queuedLocal) rpcQuiet('peer.ice_candidate', msg);
  p.queuedLocal = [];
}

async function addRemoteCandidate(p, params) {
  if (params.candidate === '') {
    p.r.remote_end_of_candidates += 1;
    if (params.sdp_mid === null && params.sdp_m_line_index === null) return;
    try {
      await p.pc.addIceCandidate({ candidate: '', sdpMid: params.sdp_mid, sdpMLineIndex: params.sdp_m_line_index });
    } catch (e) {
      p.r.remote_cand_errors.push('end-of-candidates ' + JSON.stringify(params) + ': ' + e.message);
      log(p.id, 'end-of-candidates rejected', e.message);
    }
    return;
  }
  if (!isLoopbackUdp(params.candidate)) {
    p.r.remote_cands_filtered += 1;
    return;
  }
  try {
    await p.pc.addIceCandidate({ candidate: params.candidate, sdpMid: params.sdp_mid, sdpMLineIndex: params.sdp_m_line_index });
    p.r.remote_cands_added += 1;
  } catch (e) {
    p.r.remote_cand_errors.push(JSON.stringify(params) + ': ' + e.message);
    log(p.id, 'candidate rejected', params, e.message);
  }
}

async function onRemoteCandidate(params) {
  const p = peers.get(params.from);
  if (!p) {
    // Before its offer: keep it until the peer exists.
    if (!earlyCandidates.has(params.from)) earlyCandidates.set(params.from, []);
    earlyCandidates.get(params.from).push(params);
    return;
  }
  if (!p.haveRemote) {
    p.queuedRemote.push(params);
    return;
  }
  await addRemoteCandidate(p, params);
}

async function remoteDescriptionSet(p) {
  p.haveRemote = true;
  const queued = [...(earlyCandidates.get(p.id) || []), ...p.queuedRemote];
  earlyCandidates.delete(p.id);
  p.queuedRemote = [];
  for (const params of queued) await addRemoteCandidate(p, params);
}

// Puts the asked-for video codec first and leaves out the other video codecs, so that both
// directions must use it.
function preferCodec(t) {
  if (!cfg.codec || t.receiver.track.kind !== 'video') return;
  const want = { h264: 'video/h264', vp8: 'video/vp8', vp9: 'video/vp9' }[cfg.codec];
  if (!want) throw new Error('unknown codec ' + cfg.codec);
  const caps = RTCRtpReceiver.getCapabilities('video').codecs;
  const main = caps.filter((c) => {
    if (c.mimeType.toLowerCase() !== want) return false;
    if (want === 'video/vp9') return !c.sdpFmtpLine || /profile-id=0/.test(c.sdpFmtpLine);
    return true;
  });
  // H.264: packetization-mode=1 first, constrained baseline (42e0) before baseline (4200).
  const score = (c) => {
    const f = c.sdpFmtpLine || '';
    return (/packetization-mode=1/.test(f) ? 0 : 2) + (/profile-level-id=42e0/.test(f) ? 0 : 1);
  };
  if (want === 'video/h264') main.sort((a, b) => score(a) - score(b));
  const extra = caps.filter((c) => ['video/rtx', 'video/red', 'video/ulpfec'].includes(c.mimeType.toLowerCase()));
  if (main.length === 0) throw new Error('this browser cannot receive ' + want);
  t.setCodecPreferences([...main, ...extra]);
}

// Offerer: one sendrecv transceiver per local track.
function addMediaAsOfferer(p) {
  if (!localStream) return;
  for (const track of localStream.getTracks()) {
    const t = p.pc.addTransceiver(track, { direction: 'sendrecv', streams: [localStream] });
    preferCodec(t);
  }
}

// Answerer: our tracks go on the transceivers the offer created; no new m-lines (that would
// need a renegotiation).
async function addMediaAsAnswerer(p) {
  const used = new Set();
  for (const t of p.pc.getTransceivers()) {
    const kind = t.receiver.track.kind;
    if (kind === 'video') preferCodec(t);
    if (!localStream || used.has(kind)) continue;
    const track = localStream.getTracks().find((x) => x.kind === kind);
    if (!track) continue;
    used.add(kind);
    t.direction = 'sendrecv';
    await t.sender.replaceTrack(track);
    t.sender.setStreams(localStream);
  }
}

async function offerTo(info) {
  const p = newPeer(info.peer_id, 'offerer');
  setupChannel(p, p.pc.createDataChannel('meshrtc'));
  addMediaAsOfferer(p);
  await p.pc.setLocalDescription(await p.pc.createOffer());
  const sdp = filterSdp(p.pc.localDescription.sdp, p.r, 'local_cands_filtered');
  p.r.local_sdp = sdp;
  p.offerAt = now();
  log('offer to', p.id);
  await rpc('peer.offer', { to: p.id, sdp });
  markDescriptionSent(p);
}

async function onOffer(from, sdp) {
  let p = peers.get(from);
  if (p) {
    // A renegotiation on an existing connection; we never offer again, so no glare.
    log('re-offer from', from);
    await p.pc.setRemoteDescription({ type: 'offer', sdp: filterSdp(sdp, p.r, 'remote_cands_filtered') });
    await p.pc.setLocalDescription(await p.pc.createAnswer());
    await rpc('peer.answer', { to: from, sdp: filterSdp(p.pc.localDescription.sdp, p.r, 'local_cands_filtered') });
    return;
  }
  p = newPeer(from, 'answerer');
  p.offerAt = now();
  log('offer from', from);
  p.r.remote_sdp = sdp;
  await p.pc.setRemoteDescription({ type: 'offer', sdp: filterSdp(sdp, p.r, 'remote_cands_filtered') });
  await remoteDescriptionSet(p);
  await addMediaAsAnswerer(p);
  await p.pc.setLocalDescription(await p.pc.createAnswer());
  const answer = filterSdp(p.pc.localDescription.sdp, p.r, 'local_cands_filtered');
  p.r.local_sdp = answer;
  await rpc('peer.answer', { to: from, sdp: answer });
  markDescriptionSent(p);
}

async function onAnswer(from, sdp) {
  const p = peers.get(from);
  if (!p) throw new Error('answer from unknown peer');
  p.r.remote_sdp = sdp;
  log('answer from', from);
  await p.pc.setRemoteDescription({ type: 'answer', sdp: filterSdp(sdp, p.r, 'remote_cands_filtered') });
  await remoteDescriptionSet(p);
}

function onLeft(id, reason) {
  log('peer left', id, reason);
  const p = peers.get(id);
  if (!p) return;
  p.r.left = reason || 'unknown';
  clearInterval(p.timer);
  // One last look at its figures before the connection goes.
  collectStats(p).finally(() => {
    p.pc.close();
    peers.delete(id);
  });
}

// ---- data channel ----

const encoder = new TextEncoder();

function probeBytes(n, size) {
  const b = new Uint8Array(Math.max(size, 8));
  b.set(encoder.encode('MRTC'), 0);
  new DataView(b.buffer).setUint32(4, n);
  for (let i = 8; i < b.length; i++) b[i] = (i * 7 + n) & 255;
  return b;
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function send(p, data) {
  if (!p.dc || p.dc.readyState !== 'open') return false;
  p.dc.send(data);
  return true;
}

function sendTextProbe(p) {
  const n = p.nextProbe++;
  const text = JSON.stringify({ probe: n, from: myId, text: 'héllo ✓ 𝄞 ' + 'x'.repeat((n * 37) % 2000) });
  p.probes.set('t' + n, text);
  p.probeSentAt.set('t' + n, now());
  if (send(p, text)) p.r.probes_sent += 1;
}

function sendBinaryProbe(p, size) {
  const n = p.nextProbe++;
  const bytes = probeBytes(n, size);
  p.probes.set('b' + n, bytes);
  if (send(p, bytes)) p.r.probes_sent += 1;
}

function setupChannel(p, dc) {
  p.dc = dc;
  dc.binaryType = 'arraybuffer';
  p.r.dc_label = dc.label;
  p.r.dc_state = dc.readyState;
  dc.onopen = () => {
    p.r.dc_state = 'open';
    p.r.connect_ms = now() - p.offerAt;
    log(p.id, 'data channel open after', p.r.connect_ms.toFixed(1), 'ms');
    for (const size of cfg.probeSizes) sendBinaryProbe(p, size);
    for (let i = 0; i < cfg.burst; i++) sendTextProbe(p);
    if (cfg.probeSizes.length + cfg.burst > 0) {
      log(p.id, 'sent at open:', cfg.probeSizes.length, 'binary,', cfg.burst, 'text; channel id', dc.id,
        'buffered', dc.bufferedAmount);
    }
    p.timer = setInterval(() => {
      if (send(p, JSON.stringify({ ping: p.nextPing, from: myId }))) {
        p.nextPing += 1;
        p.r.pings_sent += 1;
      }
    }, 1000);
    p.probeTimer = setInterval(() => sendTextProbe(p), 1000 / Math.max(cfg.probeHz, 0.1));
  };
  dc.onclose = () => {
    p.r.dc_state = 'closed';
    clearInterval(p.timer);
    clearInterval(p.probeTimer);
    log(p.id, 'data channel closed');
  };
  dc.onerror = (e) => log(p.id, 'data channel error', e.error ? e.error.message : String(e));
  dc.onmessage = (e) => onData(p, e.data);
}

function onData(p, data) {
  p.r.messages_received += 1;
  if (typeof data === 'string') {
    let obj = null;
    try {
      obj = JSON.parse(data);
    } catch (_) {
      obj = null;
    }
    if (obj !== null && typeof obj === 'object' && !Array.isArray(obj)) {
      if ('ping' in obj) {
        p.r.pings_received += 1;
        if (send(p, JSON.stringify({ pong: obj.ping, from: myId }))) p.r.pongs_sent += 1;
        return;
      }
      if ('pong' in obj) {
        p.r.pongs_received += 1;
        return;
      }
      if ('probe' in obj && obj.from === myId) {
        const sent = p.probes.get('t' + obj.probe);
        p.probes.delete('t' + obj.probe);
        const at = p.probeSentAt.get('t' + obj.probe);
        p.probeSentAt.delete('t' + obj.probe);
        if (at !== undefined) {
          // [when it came back, round trip] in ms, the last 600
          p.r.probe_rtts.push([Math.round(now()), Math.round((now() - at) * 10) / 10]);
          if (p.r.probe_rtts.length > 600) p.r.probe_rtts.splice(0, p.r.probe_rtts.length - 600);
        }
        if (sent === data) p.r.probes_ok += 1;
        else {
          p.r.probes_bad += 1;
          log(p.id, 'text probe came back changed', data);
        }
        return;
      }
    }
    if (send(p, data)) p.r.echoed += 1;
    return;
  }
  const bytes = new Uint8Array(data);
  if (bytes.length >= 8 && bytes[0] === 77 && bytes[1] === 82 && bytes[2] === 84 && bytes[3] === 67) {
    const n = new DataView(bytes.buffer, bytes.byteOffset).getUint32(4);
    const sent = p.probes.get('b' + n);
    if (sent) {
      p.probes.delete('b' + n);
      if (sameBytes(sent, bytes)) {
        p.r.probes_ok += 1;
        p.r.probe_bytes_ok += bytes.length;
      } else {
        p.r.probes_bad += 1;
        log(p.id, 'binary probe', n, 'came back changed: length', bytes.length, 'sent', sent.length);
      }
      return;
    }
  }
  if (send(p, data)) p.r.echoed += 1;
}

// ---- stats ----

async function collectStats(p) {
  const stats = await p.pc.getStats();
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  const codecOf = (s) => {
    const c = s.codecId ? byId.get(s.codecId) : null;
    return c ? c.mimeType + (c.sdpFmtpLine ? ' ' + c.sdpFmtpLine : '') : null;
  };
  const out = { inbound_video: null, inbound_audio: null, outbound_video: null, outbound_audio: null, selected_pair: null, data_channel: null };
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.inbound_video = {
        frames_decoded: s.framesDecoded || 0,
        frames_received: s.framesReceived || 0,
        key_frames_decoded: s.keyFramesDecoded || 0,
        frames_dropped: s.framesDropped || 0,
        frame_width: s.frameWidth || null,
        frame_height: s.frameHeight || null,
        packets_received: s.packetsReceived || 0,
        packets_lost: s.packetsLost || 0,
        nack_count: s.nackCount || 0,
        pli_count: s.pliCount || 0,
        bytes_received: (s.bytesReceived || 0) + (s.headerBytesReceived || 0),
        codec: codecOf(s),
        decoder: s.decoderImplementation || null,
      };
    } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.inbound_audio = {
        total_samples_received: s.totalSamplesReceived || 0,
        concealed_samples: s.concealedSamples || 0,
        packets_received: s.packetsReceived || 0,
        packets_lost: s.packetsLost || 0,
        jitter_buffer_delay: s.jitterBufferDelay || 0,
        jitter_buffer_emitted_count: s.jitterBufferEmittedCount || 0,
        codec: codecOf(s),
      };
    } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
      out.outbound_video = {
        frames_encoded: s.framesEncoded || 0,
        frames_sent: s.framesSent || 0,
        key_frames_encoded: s.keyFramesEncoded || 0,
        packets_sent: s.packetsSent || 0,
        bytes_sent: (s.bytesSent || 0) + (s.headerBytesSent || 0),
        target_bitrate: s.targetBitrate || null,
        quality_limitation_reason: s.qualityLimitationReason || null,
        frame_width: s.frameWidth || null,
        frame_height: s.frameHeight || null,
        codec: codecOf(s),
        encoder: s.encoderImplementation || null,
      };
    } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
      out.outbound_audio = { packets_sent: s.packetsSent || 0, codec: codecOf(s) };
    } else if (s.type === 'data-channel') {
      out.data_channel = { messages_sent: s.messagesSent, messages_received: s.messagesReceived, bytes_sent: s.bytesSent, bytes_received: s.bytesReceived };
    } else if (s.type === 'transport' && s.selectedCandidatePairId) {
      const pair = byId.get(s.selectedCandidatePairId);
      const l = pair && byId.get(pair.localCandidateId);
      const r = pair && byId.get(pair.remoteCandidateId);
      if (pair) {
        out.selected_pair = {
          local: l ? l.protocol + ' ' + l.address + ':' + l.port + ' ' + l.candidateType : null,
          remote: r ? r.protocol + ' ' + r.address + ':' + r.port + ' ' + r.candidateType : null,
          rtt_ms: pair.currentRoundTripTime !== undefined ? pair.currentRoundTripTime * 1000 : null,
          available_outgoing_bitrate: pair.availableOutgoingBitrate || null,
          dtls_state: s.dtlsState,
        };
      }
    }
  });
  p.r.stats = out;
  p.r.history.push([
    Math.round(now()),
    out.inbound_video ? out.inbound_video.frames_decoded : 0,
    out.outbound_video ? out.outbound_video.frames_encoded : 0,
    out.inbound_audio ? out.inbound_audio.total_samples_received : 0,
    out.inbound_audio ? out.inbound_audio.concealed_samples : 0,
    // 5-9: video bytes received and sent (RTP payload and headers),
    // the sender's estimate (bit/s) and encoder target (bit/s), the sent frame height
    out.inbound_video ? out.inbound_video.bytes_received : 0,
    out.outbound_video ? out.outbound_video.bytes_sent : 0,
    out.selected_pair ? out.selected_pair.available_outgoing_bitrate : null,
    out.outbound_video ? out.outbound_video.target_bitrate : null,
    out.outbound_video ? out.outbound_video.frame_height : null,
  ]);
  if (p.r.history.length > 240) p.r.history.splice(0, p.r.history.length - 240);
}

async function tick() {
  for (const p of peers.values()) {
    try {
      await collectStats(p);
    } catch (e) {
      log(p.id, 'getStats failed', e.message);
    }
  }
  report.seq += 1;
  report.now_ms = now();
  try {
    await fetch('/report?tag=' + encodeURIComponent(cfg.tag), { method: 'POST', body: JSON.stringify(report) });
  } catch (e) {
    console.log('report POST failed: ' + e.message);
  }
}

// ---- start ----

async function main() {
  if (!cfg.ws) throw new Error('no ws= in the query string');
  report.send_video_codecs = RTCRtpSender.getCapabilities('video').codecs.map((c) => c.mimeType + (c.sdpFmtpLine ? ' ' + c.sdpFmtpLine : ''));
  if (cfg.audio || cfg.video) {
    report.state = 'media';
    const video = cfg.video ? { width: cfg.width, height: cfg.height, frameRate: cfg.fps } : false;
    localStream = await navigator.mediaDevices.getUserMedia({ audio: cfg.audio, video });
    if (cfg.muteVideo) for (const t of localStream.getVideoTracks()) t.enabled = false;
    log('local tracks', localStream.getTracks().map((t) => t.kind + ':' + t.label).join(', '));
  }
  report.state = 'connecting';
  ws = new WebSocket(cfg.ws);
  ws.onmessage = onSignal;
  ws.onclose = (e) => {
    log('signaling closed', e.code, e.reason);
    if (report.state !== 'error') report.state = 'closed';
  };
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error('cannot reach the signaling server ' + cfg.ws));
  });
  const res = await rpc('peer.announce', {
    room: cfg.room,
    peer_id: cfg.id,
    capabilities: { audio: cfg.audio, video: cfg.video, data: true },
    metadata: { agent: 'meshrtc-interop-page' },
  });
  myId = res.peer_id;
  report.id = myId;
  report.state = 'announced';
  log('announced as', myId, 'peers', res.peers.map((x) => x.peer_id));
  for (const info of res.peers) offerTo(info).catch((e) => fail('offer to ' + info.peer_id, e));
}

setInterval(tick, 500);
main().catch((e) => {
  report.state = 'error';
  fail('start', e);
  tick();
});
