// Huiyi web client: lobby with preview, then a paginated grid of participants and a stage
// for screen shares. Talks the signaling protocol in docs/protocol.md over one WebSocket
// and one RTCPeerConnection: publishes the camera in simulcast, receives on slots, and
// subscribes to the videos its visible tiles show, at their size. The lobby's devices,
// tokens and messages are in lobby.js.

import {
  closeMessage, ensureLocal, forgetToken, keepToken, keptToken, liveDevices, openDevice, play, playBlocked,
  resetPlayback, showLobbyError, soundBlocked, stopLocal,
} from "./lobby.js";
import {
  clearHands, initTalk, onChat, onHand, onReaction, renderHands, renderPeople, resetTalk, talkState,
} from "./talk.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// A token given in the link. Best in the fragment (#token=...), which never reaches a
// server, a log or a Referer; a query token (?token=...) still works. Either is taken
// out of the address bar at once, so it is not bookmarked, shared or kept in history.
const linkToken = (() => {
  const token = new URLSearchParams(location.hash.slice(1)).get("token") || params.get("token");
  if (token) {
    const clean = new URL(location.href);
    clean.searchParams.delete("token");
    clean.hash = "";
    history.replaceState(null, "", clean);
  }
  return token;
})();
const roomFromPath = decodeURIComponent((location.pathname.match(/^\/room\/([^/]+)/) || [])[1] || "");

// 5x5: beyond that, tiles are too small to be worth a video each; on a phone, 2x2.
const PHONE = window.matchMedia("(max-width: 600px)");
const pageSize = () => (PHONE.matches ? 4 : 25);
// Resizes and page flips come in bursts; one `subscribe` per burst.
const SUBSCRIBE_DEBOUNCE_MS = 200;
// Quarter, half and full resolution; the server ranks q < h < f (docs/protocol.md, Simulcast).
const CAMERA_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", maxBitrate: 1_700_000 },
];

const state = {
  ws: null,
  pc: null,
  me: null,
  local: null,             // MediaStream from camera and mic
  screen: null,            // MediaStream from getDisplayMedia
  localTile: null,
  participants: new Map(), // id -> {info, tile, order}
  joinCounter: 0,
  tracks: new Map(),       // remote track id -> {participantId, kind, source, muted}
  screenTiles: new Map(),  // remote screen track id -> tile
  receivers: new Map(),    // mid -> {kind, track, stream, audio}
  slots: new Map(),        // mid -> {participantId, trackId} or null: from `slots`, authoritative
  msids: new Map(),        // mid -> {participantId, trackId}: the remote SDP's a=msid, until `slots` names the mid
  ownTracks: new Map(),    // mid -> published track id
  ownKinds: new Map(),     // mid -> "audio" or "video": the microphone's and the camera's senders
  pendingLayers: new Map(), // own track id -> rids, for a `layers` that arrived before the answer naming the track
  layersHistory: [],       // the last few `layers` received, for debugging: {at, trackId, active}
  layersQueue: Promise.resolve(),
  activeSpeaker: null,
  page: 0,
  pages: 1,
  subscribeTimer: null,
  lastSubscribe: null,     // JSON of the last `tracks` sent
  resizeObserver: null,
  makingOffer: false,
  left: false,
  token: null,
  resume: null,            // from `joined`: sent in `join` to take this participant back after a drop
  resumeUntil: null,       // while reconnecting: when to give up (the server's grace is 10 s)
  outbox: [],              // messages made while reconnecting, sent once back
  resumes: 0,              // signaling connections resumed (for tests and debugging)
  rejoined: false,         // this page load came back as the participant of the one before (a reload)
  iceRestartTimer: null,
  departures: 0,           // participantLeft messages received (for tests)
  ended: null,             // how the last meeting ended: {kind, code, text}, or null
};

function setConn(text, cls) {
  const el = $("conn");
  el.textContent = text;
  el.className = "conn " + cls;
}

function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(msg));
    return true;
  }
  // Reconnecting: an offer, answer or candidate made meanwhile goes once we are back.
  if (state.resumeUntil !== null && msg.type !== "join" && msg.type !== "ping") {
    state.outbox.push(msg);
    return true;
  }
  return false;
}

async function startPreview() {
  state.local = await ensureLocal();
}

async function fetchToken(room, name) {
  if (linkToken) return linkToken;
  const kept = keptToken(room);
  if (kept) return kept;
  const identity = name.toLowerCase().replace(/[^a-z0-9]+/g, "-").slice(0, 32) + "-" +
    Math.random().toString(36).slice(2, 7);
  const q = new URLSearchParams({ room, identity, name });
  const res = await fetch("/v1/dev/token?" + q);
  if (!res.ok) throw new Error("no token: this server needs one in the link (#token=...)");
  return (await res.json()).token;
}

// ---- Tiles ---------------------------------------------------------------------------

function makeTile(participantId, label, opts = {}) {
  const el = document.createElement("div");
  el.className = "tile" + (opts.local ? " local" : "") + (opts.screen ? " screen" : "");
  el.dataset.participant = participantId;
  if (opts.trackId) el.dataset.track = opts.trackId;
  const video = document.createElement("video");
  video.autoplay = true; video.playsInline = true; video.muted = true;
  const name = document.createElement("span");
  name.className = "label";
  name.textContent = label;
  // Shown instead of the picture while the camera is off (or there is none).
  const initials = document.createElement("span");
  initials.className = "initials";
  initials.textContent = label.replace(/\(.*\)/g, "").trim().split(/\s+/).map((w) => w[0] || "").join("").slice(0, 2).toUpperCase();
  el.append(video, initials, name);
  (opts.screen ? $("stage") : $("grid")).append(el);
  const tile = { el, video, name, participantId, screenTrackId: opts.trackId || null, mid: null };
  if (!opts.local && state.resizeObserver) state.resizeObserver.observe(el);
  return tile;
}

function dropTile(tile) {
  if (state.resizeObserver) state.resizeObserver.unobserve(tile.el);
  tile.video.srcObject = null;
  tile.el.remove();
}

function addRemoteParticipant(info) {
  let p = state.participants.get(info.id);
  if (p) {
    p.info = { ...p.info, ...info, tracks: undefined };
    p.tile.name.textContent = p.info.name || p.info.id;
  } else {
    p = { info, tile: makeTile(info.id, info.name || info.id), order: state.joinCounter++ };
    state.participants.set(info.id, p);
  }
  for (const t of info.tracks || []) noteTrack(info.id, t);
  return p;
}

function noteTrack(participantId, track) {
  state.tracks.set(track.id, { participantId, kind: track.kind, source: track.source, muted: track.muted });
  if (track.kind === "audio") setMicMuted(participantId, track.muted);
  showCamera(participantId);
  if (track.kind === "video" && track.source === "screen" && !state.screenTiles.has(track.id)) {
    const p = state.participants.get(participantId);
    const name = p ? p.info.name || participantId : participantId;
    state.screenTiles.set(track.id, makeTile(participantId, name + " (screen)", { screen: true, trackId: track.id }));
  }
}

function forgetTrack(trackId) {
  setPaused(trackId, false);
  state.tracks.delete(trackId);
  const tile = state.screenTiles.get(trackId);
  if (tile) { dropTile(tile); state.screenTiles.delete(trackId); }
}

// The tile that shows a video track: its screen tile, or its owner's grid tile.
function tileOfTrack(trackId) {
  if (state.screenTiles.has(trackId)) return state.screenTiles.get(trackId);
  const t = state.tracks.get(trackId);
  const p = t && state.participants.get(t.participantId);
  return p ? p.tile : null;
}

// The server paused a track this page shows (its bandwidth or the node's load cannot
// carry it): the tile says so rather than freezing on its last frame.
function setPaused(trackId, paused, reason) {
  const tile = tileOfTrack(trackId);
  if (!tile) return;
  tile.el.classList.toggle("paused", paused);
  if (paused) tile.el.dataset.paused = reason === "load" ? "server busy" : "low bandwidth";
  else delete tile.el.dataset.paused;
}

function setMicMuted(participantId, muted) {
  const p = state.participants.get(participantId);
  if (p) p.tile.name.classList.toggle("muted", muted);
}

// A participant's tile shows initials while it publishes no camera or has it off.
function showCamera(participantId) {
  const p = state.participants.get(participantId);
  if (!p) return;
  const on = [...state.tracks.values()].some((t) => t.participantId === participantId && t.kind === "video" && t.source === "camera" && !t.muted);
  p.tile.el.classList.toggle("video-off", !on);
}

// Whether a participant's microphone is muted (or it has none published).
function micOff(participantId) {
  const mics = [...state.tracks.values()].filter((t) => t.participantId === participantId && t.kind === "audio");
  return mics.length > 0 && mics.every((t) => t.muted);
}

function removeParticipant(id) {
  const p = state.participants.get(id);
  if (!p) return;
  dropTile(p.tile);
  for (const [trackId, t] of [...state.tracks]) if (t.participantId === id) forgetTrack(trackId);
  state.participants.delete(id);
  if (state.activeSpeaker === id) state.activeSpeaker = null;
}

// The camera track a participant's grid tile shows.
function cameraTrackOf(participantId) {
  for (const [id, t] of state.tracks) {
    if (t.participantId === participantId && t.kind === "video" && t.source !== "screen") return id;
  }
  return null;
}

// Grid order: self, then everyone in join order; an active speaker who would be beyond
// page one moves to just after self, so that the speaker is always on page one without
// reshuffling page one every time someone talks.
function orderedGridTiles() {
  const remote = [...state.participants.values()].sort((a, b) => a.order - b.order);
  const tiles = (state.localTile ? [state.localTile] : []).concat(remote.map((p) => p.tile));
  const speaker = state.participants.get(state.activeSpeaker);
  if (speaker) {
    const at = tiles.indexOf(speaker.tile);
    if (at >= pageSize()) { tiles.splice(at, 1); tiles.splice(state.localTile ? 1 : 0, 0, speaker.tile); }
  }
  return tiles;
}

// Shows the current page, sizes the grid for it, and puts every video where it belongs.
function layout() {
  const size = pageSize();
  document.body.classList.toggle("phone", PHONE.matches);
  const tiles = orderedGridTiles();
  state.pages = Math.max(1, Math.ceil(tiles.length / size));
  state.page = Math.min(state.page, state.pages - 1);
  const first = state.page * size;
  const onPage = tiles.slice(first, first + size);
  tiles.forEach((tile, i) => {
    // CSS order instead of moving DOM nodes: a <video> removed from the document pauses.
    tile.el.style.order = String(i);
    tile.el.hidden = i < first || i >= first + size;
    tile.onPage = !tile.el.hidden;
    tile.el.classList.toggle("speaking", tile.participantId === state.activeSpeaker && state.activeSpeaker !== null);
  });
  const cols = PHONE.matches && onPage.length <= 2 ? 1 : Math.max(1, Math.ceil(Math.sqrt(onPage.length)));
  const grid = $("grid");
  grid.style.setProperty("--cols", String(cols));
  grid.style.setProperty("--rows", String(Math.max(1, Math.ceil(onPage.length / cols))));
  $("stage").hidden = state.screenTiles.size === 0;
  $("pager").hidden = state.pages <= 1;
  $("page-label").textContent = `page ${state.page + 1} of ${state.pages}`;
  $("prev-page").disabled = state.page === 0;
  $("next-page").disabled = state.page >= state.pages - 1;
  placeVideos();
  scheduleSubscribe();
}

function setPage(page) {
  state.page = Math.max(0, Math.min(page, state.pages - 1));
  layout();
}

// ---- Receiving: slots ----------------------------------------------------------------

// What a receiving mid carries now: `slots` once it has named the mid, the SDP's msid before.
function carriedBy(mid) {
  if (state.slots.has(mid)) return state.slots.get(mid);
  return state.msids.get(mid) || null;
}

function tileForTrack(participantId, trackId) {
  const known = state.tracks.get(trackId);
  if (known && known.source === "screen") return state.screenTiles.get(trackId) || null;
  const p = state.participants.get(known ? known.participantId : participantId);
  return p ? p.tile : null;
}

function remoteTiles() {
  return [...state.participants.values()].map((p) => p.tile).concat([...state.screenTiles.values()]);
}

// Each video slot's stream goes to the tile of the track it carries now; a tile whose
// track no slot carries shows nothing.
function placeVideos() {
  const wanted = new Map();
  for (const [mid, rx] of state.receivers) {
    if (rx.kind !== "video") continue;
    const carried = carriedBy(mid);
    if (!carried || !carried.trackId) continue;
    const tile = tileForTrack(carried.participantId, carried.trackId);
    if (tile) wanted.set(tile, mid);
  }
  for (const tile of remoteTiles()) {
    const mid = wanted.has(tile) ? wanted.get(tile) : null;
    if (tile.mid === mid) continue;
    tile.mid = mid;
    tile.video.srcObject = mid === null ? null : state.receivers.get(mid).stream;
    if (mid !== null) tile.video.play().catch(() => {});
  }
}

function onRemoteTrack(ev) {
  const mid = ev.transceiver.mid;
  if (mid === null) return;
  const existing = state.receivers.get(mid);
  if (existing && existing.track === ev.track) { placeVideos(); return; }
  if (existing) dropReceiver(mid);
  const rx = { kind: ev.track.kind, track: ev.track, stream: new MediaStream([ev.track]), audio: null };
  if (rx.kind === "audio") {
    // Every audio slot plays; which speakers they carry is the server's choice.
    rx.audio = document.createElement("audio");
    rx.audio.autoplay = true;
    rx.audio.dataset.mid = mid;
    rx.audio.srcObject = rx.stream;
    $("audio").append(rx.audio);
    play(rx.audio);
  }
  state.receivers.set(mid, rx);
  placeVideos();
}

function dropReceiver(mid) {
  const rx = state.receivers.get(mid);
  if (!rx) return;
  if (rx.audio) { rx.audio.srcObject = null; rx.audio.remove(); }
  state.receivers.delete(mid);
  // A mid that comes back is named again by its msid until the next `slots`.
  state.slots.delete(mid);
}

// After each completed negotiation: forget receivers whose m-line no longer receives.
function pruneReceivers() {
  const live = new Set();
  for (const tr of state.pc.getTransceivers()) {
    const d = tr.currentDirection;
    if (tr.mid !== null && (d === "recvonly" || d === "sendrecv")) live.add(tr.mid);
  }
  for (const mid of [...state.receivers.keys()]) if (!live.has(mid)) dropReceiver(mid);
  placeVideos();
}

function readMsids(sdp) {
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = section.match(/^a=mid:(\S+)/m);
    const msid = section.match(/^a=msid:(\S+) (\S+)/m);
    if (mid && msid && msid[1] !== "-") state.msids.set(mid[1], { participantId: msid[1], trackId: msid[2] });
  }
}

function onSlots(slots) {
  for (const s of slots || []) {
    if (typeof s.mid !== "string") continue;
    state.slots.set(s.mid, s.trackId ? { participantId: s.participantId, trackId: s.trackId } : null);
  }
  placeVideos();
}

// ---- Subscriptions -------------------------------------------------------------------

// The video tracks of the tiles on screen, with their size in device pixels.
function visibleVideoTracks() {
  if (document.visibilityState === "hidden") return [];
  const dpr = window.devicePixelRatio || 1;
  const out = [];
  const shown = [...state.screenTiles.values()].concat(
    [...state.participants.values()].map((p) => p.tile).filter((t) => t.onPage));
  for (const tile of shown) {
    const trackId = tile.screenTrackId || cameraTrackOf(tile.participantId);
    if (!trackId) continue;
    const r = tile.el.getBoundingClientRect();
    const width = Math.round(r.width * dpr), height = Math.round(r.height * dpr);
    if (width === 0 || height === 0) continue;
    out.push({ trackId, width, height });
  }
  return out.sort((a, b) => (a.trackId < b.trackId ? -1 : a.trackId > b.trackId ? 1 : 0));
}

function scheduleSubscribe() {
  if (!state.me || state.subscribeTimer !== null) return;
  state.subscribeTimer = setTimeout(() => {
    state.subscribeTimer = null;
    const tracks = visibleVideoTracks();
    const key = JSON.stringify(tracks);
    if (key === state.lastSubscribe) return;
    if (send({ type: "subscribe", tracks })) state.lastSubscribe = key;
  }, SUBSCRIBE_DEBOUNCE_MS);
}

// ---- Publishing ----------------------------------------------------------------------

function trackLabels() {
  const labels = [];
  for (const tr of state.pc.getTransceivers()) {
    const track = tr.sender.track;
    if (!tr.mid || !track || tr.currentDirection === "stopped") continue;
    const source = track.kind === "audio" ? "microphone" : (state.screen && state.screen.getTracks().includes(track) ? "screen" : "camera");
    labels.push({ mid: tr.mid, source });
  }
  return labels;
}

function ownTransceiver(trackId) {
  for (const tr of state.pc.getTransceivers()) {
    if (tr.mid !== null && state.ownTracks.get(tr.mid) === trackId && tr.sender.track) return tr;
  }
  return null;
}

// `layers`: encode exactly the simulcast layers someone receives.
function applyLayers(trackId, rids) {
  const tr = state.pc && ownTransceiver(trackId);
  if (!tr) { state.pendingLayers.set(trackId, rids); return; }
  state.pendingLayers.delete(trackId);
  // getParameters/setParameters pairs must not interleave (transactionId).
  state.layersQueue = state.layersQueue.then(async () => {
    const p = tr.sender.getParameters();
    if (!p.encodings || p.encodings.length < 2) return;
    let changed = false;
    for (const enc of p.encodings) {
      if (!enc.rid) continue;
      const active = rids.includes(enc.rid);
      if (enc.active !== active) { enc.active = active; changed = true; }
    }
    if (changed) await tr.sender.setParameters(p);
  }).catch((e) => console.warn("layers failed", trackId, e));
}

async function negotiate() {
  try {
    state.makingOffer = true;
    await state.pc.setLocalDescription();
    send({ type: "offer", sdp: state.pc.localDescription.sdp, tracks: trackLabels() });
  } catch (e) {
    console.warn("offer failed", e);
  } finally {
    state.makingOffer = false;
  }
}

async function onServerOffer(sdp) {
  // We are the polite peer: a server offer wins over our own outstanding offer.
  await state.pc.setRemoteDescription({ type: "offer", sdp });
  readMsids(sdp);
  await state.pc.setLocalDescription();
  send({ type: "answer", sdp: state.pc.localDescription.sdp });
  pruneReceivers();
}

async function onServerAnswer(msg) {
  if (state.pc.signalingState !== "have-local-offer") return;
  await state.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
  readMsids(msg.sdp);
  for (const t of msg.tracks || []) {
    state.ownTracks.set(t.mid, t.id);
    if (t.source !== "screen") state.ownKinds.set(t.mid, t.kind);
  }
  for (const [trackId, rids] of [...state.pendingLayers]) if (ownTransceiver(trackId)) applyLayers(trackId, rids);
  pruneReceivers();
}

// The server's TURN servers (with this participant's credentials) are used as any ICE
// candidates are; ?relay=1 uses nothing but them (to check a TURN server works).
function createPeerConnection(iceServers = []) {
  const pc = new RTCPeerConnection({
    bundlePolicy: "max-bundle",
    rtcpMuxPolicy: "require",
    iceServers,
    iceTransportPolicy: params.get("relay") === "1" ? "relay" : "all",
  });
  state.pc = pc;
  pc.onicecandidate = (e) => {
    send({ type: "candidate", candidate: e.candidate ? e.candidate.candidate : null, sdpMid: e.candidate ? e.candidate.sdpMid : null });
  };
  pc.ontrack = onRemoteTrack;
  pc.onconnectionstatechange = () => {
    const s = pc.connectionState;
    setConn(s, s === "connected" ? "connected" : (s === "failed" || s === "closed") ? "failed" : "connecting");
  };
  pc.onnegotiationneeded = negotiate;
  // A network change (Wi-Fi to 4G, a new address): the old candidate pair stops. After two
  // seconds of that, or at once when ICE failed, gather anew and restart ICE (the offer
  // that follows carries new credentials; the server answers with new ones of its own).
  pc.oniceconnectionstatechange = () => {
    const s = pc.iceConnectionState;
    clearTimeout(state.iceRestartTimer);
    if (s === "failed") pc.restartIce();
    else if (s === "disconnected") {
      state.iceRestartTimer = setTimeout(() => { if (pc.iceConnectionState === "disconnected") pc.restartIce(); }, 2000);
    }
  };
  const local = state.local;
  if (local) {
    for (const track of local.getTracks()) {
      const init = { direction: "sendonly", streams: [local] };
      if (track.kind === "video") init.sendEncodings = CAMERA_ENCODINGS.map((e) => ({ ...e }));
      pc.addTransceiver(track, init);
    }
  }
  if (!local || local.getTracks().length === 0) pc.createDataChannel("huiyi");
  return pc;
}

// ---- Signaling -----------------------------------------------------------------------

async function handleMessage(msg) {
  switch (msg.type) {
    case "joined": {
      if (state.pc) {
        // A reconnect: the server kept us (our media went on) or, past its grace, did not:
        // then this connection is a new participant, and the reload takes it over.
        state.resume = msg.resume || null;
        if (!msg.resumed) { location.reload(); return; }
        state.resumeUntil = null;
        state.resumes++;
        clearHands();
        remember();
        for (const m of state.outbox.splice(0)) send(m);
        setConn("connected", "connected");
        break;
      }
      state.resume = msg.resume || null;
      state.rejoined = !!msg.resumed;
      remember();
      state.me = msg.participant;
      state.localTile = makeTile(msg.participant.id, msg.participant.name + " (you)", { local: true });
      if (state.local) state.localTile.video.srcObject = state.local;
      state.localTile.el.classList.toggle("video-off", !state.local || state.local.getVideoTracks().length === 0);
      for (const p of msg.participants) addRemoteParticipant(p);
      resetTalk();
      createPeerConnection(msg.iceServers || []);
      layout();
      break;
    }
    case "answer": await onServerAnswer(msg); break;
    case "offer": await onServerOffer(msg.sdp); break;
    case "slots": onSlots(msg.slots); break;
    case "layers": {
      const active = Array.isArray(msg.active) ? msg.active : [];
      state.layersHistory.push({ at: Math.round(performance.now()), trackId: msg.trackId, active });
      if (state.layersHistory.length > 20) state.layersHistory.shift();
      applyLayers(msg.trackId, active);
      break;
    }
    case "participantJoined": addRemoteParticipant(msg.participant); layout(); renderHands(); break;
    case "participantLeft": state.departures++; removeParticipant(msg.participantId); onHand(msg.participantId, false); layout(); break;
    case "chat": onChat(msg); break;
    case "handRaised": onHand(msg.participantId, msg.raised); break;
    case "reaction": onReaction(msg.participantId, msg.emoji); break;
    case "trackPublished":
      if (!state.participants.has(msg.participantId)) addRemoteParticipant({ id: msg.participantId, name: msg.participantId, tracks: [] });
      noteTrack(msg.participantId, msg.track);
      layout();
      break;
    case "trackUnpublished": forgetTrack(msg.trackId); layout(); break;
    case "trackMuted": {
      const t = state.tracks.get(msg.trackId);
      if (t) t.muted = msg.muted;
      if (t && t.kind === "audio") setMicMuted(msg.participantId, msg.muted);
      showCamera(msg.participantId);
      renderPeople();
      break;
    }
    case "trackPaused": setPaused(msg.trackId, msg.paused, msg.reason); break;
    case "activeSpeaker": state.activeSpeaker = msg.participantId; layout(); break;
    case "error": $("meeting-error").textContent = msg.code + ": " + msg.message; break;
  }
}

// What a reload of this tab needs to come back as the same participant: the token (a dev
// token names a fresh identity each time), the room and the resume token (sessionStorage:
// this tab only). `at` is set when the page goes away.
function remember(at = null) {
  if (!state.resume || state.left) return;
  const room = $("room-title").textContent;
  sessionStorage.setItem("huiyi.rejoin", JSON.stringify({ room, token: state.token, resume: state.resume, at }));
}

// A reload within the server's grace period (10 s) rejoins as the same participant.
function rejoinable(room) {
  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem("huiyi.rejoin") || "null"); } catch { saved = null; }
  sessionStorage.removeItem("huiyi.rejoin");
  if (!saved || saved.room !== room || !saved.at || Date.now() - saved.at > 9000) return null;
  return saved;
}

async function join(room, name, rejoin = null) {
  showLobbyError("");
  let token = rejoin && rejoin.token;
  if (!token) {
    try { token = await fetchToken(room, name); } catch (e) { showLobbyError(e.message); return; }
  }
  // The devices again: a leave or an error stopped them.
  state.local = await ensureLocal();
  keepToken(room, token);
  state.ended = null;
  $("join").textContent = "Join";
  history.replaceState(null, "", "/room/" + encodeURIComponent(room) + "?name=" + encodeURIComponent(name));
  $("room-title").textContent = room;
  $("lobby").hidden = true;
  $("meeting").hidden = false;
  setConn("connecting", "connecting");
  state.left = false;
  state.resizeObserver = new ResizeObserver(scheduleSubscribe);
  state.token = token;
  openSignaling(rejoin && rejoin.resume, !!rejoin);
}

// Close codes with which the server ended the participant on purpose (docs/protocol.md):
// no resume after these.
const FINAL_CLOSE = (code) => (code >= 4000 && code <= 4999) || [1000, 1001, 1008, 1013].includes(code);

function openSignaling(resume, newMedia = false) {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/rtc");
  state.ws = ws;
  let queue = Promise.resolve();
  const join = { type: "join", token: state.token };
  if (resume) Object.assign(join, { resume }, newMedia ? { newMedia: true } : {});
  ws.onopen = () => send(join);
  ws.onmessage = (e) => {
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    queue = queue.then(() => handleMessage(msg)).catch((err) => console.warn("message failed", msg.type, err));
  };
  ws.onclose = (e) => {
    if (state.ws !== ws) return;
    // The connection dropped (a network change, a proxy's timeout): the server keeps us
    // for a while, our media going on; come back with the resume token.
    if (!state.left && state.resume && state.pc && !FINAL_CLOSE(e.code)) {
      if (state.resumeUntil === null) state.resumeUntil = Date.now() + 9000;
      if (Date.now() < state.resumeUntil) {
        setConn("reconnecting", "connecting");
        setTimeout(() => { if (state.ws === ws && !state.left) openSignaling(state.resume); }, 500);
        return;
      }
    }
    if (state.left) { setConn("left", "closed"); return; }
    endMeeting(e.code, e.reason);
  };
  const hb = setInterval(() => ws.readyState === WebSocket.OPEN ? send({ type: "ping" }) : clearInterval(hb), 20000);
}

function ownTrackId(track) {
  for (const tr of state.pc.getTransceivers()) {
    if (tr.sender.track === track && tr.mid) return state.ownTracks.get(tr.mid);
  }
  return undefined;
}

// Mute and camera off stop the device itself (its light goes off) and send nothing in
// its place; turning it on opens the device again and puts the new track on the same
// sender: no renegotiation, and the camera's simulcast layers stay as negotiated.
async function toggle(kind, button, onText, offText) {
  if (!state.pc || !state.local || button.disabled) return;
  const tr = state.pc.getTransceivers().find((t) => state.ownKinds.get(t.mid) === kind);
  if (!tr) return;
  const id = state.ownTracks.get(tr.mid);
  const current = state.local.getTracks().find((t) => t.kind === kind && t.readyState === "live");
  button.disabled = true;
  try {
    if (current) {
      await tr.sender.replaceTrack(null);
      current.stop();
      state.local.removeTrack(current);
    } else {
      // The meeting may end while the device opens: then the track is not kept.
      const pc = state.pc;
      const track = await openDevice(kind);
      if (!track) return;
      if (state.pc !== pc || !state.local) { track.stop(); return; }
      try {
        await tr.sender.replaceTrack(track);
      } catch (e) {
        track.stop();
        return;
      }
      state.local.addTrack(track);
    }
  } finally {
    button.disabled = false;
  }
  const off = !!current;
  button.textContent = off ? offText : onText;
  button.setAttribute("aria-pressed", String(off));
  if (state.localTile) {
    if (kind === "video") state.localTile.el.classList.toggle("video-off", off);
    else state.localTile.name.classList.toggle("muted", off);
  }
  if (id) send({ type: "mute", trackId: id, muted: off });
}

async function shareScreen() {
  if (state.screen) return stopShare();
  try {
    state.screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  } catch (e) {
    $("meeting-error").textContent = "Screen share refused: " + e.message;
    return;
  }
  const track = state.screen.getVideoTracks()[0];
  // One encoding: text on a shared screen needs full resolution, and there is one share to watch.
  state.pc.addTransceiver(track, { direction: "sendonly", streams: [state.screen] });
  track.addEventListener("ended", stopShare);
  $("share").textContent = "Stop sharing";
}

function stopShare() {
  if (!state.screen) return;
  const track = state.screen.getVideoTracks()[0];
  for (const tr of state.pc.getTransceivers()) if (tr.sender.track === track) tr.stop();
  state.screen.getTracks().forEach((t) => t.stop());
  state.screen = null;
  $("share").textContent = "Share screen";
}

function leave() {
  state.left = true;
  sessionStorage.removeItem("huiyi.rejoin");
  forgetToken();
  send({ type: "leave" });
  backToLobby();
}

// The server ended the meeting for us, or we lost it: say why in the lobby, with the
// camera and microphone stopped, and offer to join again where that may work.
function endMeeting(code, reason) {
  const end = closeMessage(code, reason);
  state.left = true;
  state.ended = { kind: end.kind, code, text: end.text };
  sessionStorage.removeItem("huiyi.rejoin");
  if (!end.retry) forgetToken();
  setConn("disconnected", "closed");
  backToLobby();
  showLobbyError(end.text);
  $("join").textContent = end.retry ? "Rejoin" : "Join";
}

function backToLobby() {
  if (state.ws) {
    state.ws.onclose = null;
    state.ws.close(1000, "left");
  }
  state.ws = null;
  state.resume = null;
  state.resumeUntil = null;
  state.outbox = [];
  if (state.pc) state.pc.close();
  state.pc = null;
  stopLocal();
  state.local = null;
  if (state.screen) state.screen.getTracks().forEach((t) => t.stop());
  state.screen = null;
  $("share").textContent = "Share screen";
  $("toggle-mic").textContent = "Mute mic";
  $("toggle-cam").textContent = "Stop camera";
  for (const b of [$("toggle-mic"), $("toggle-cam")]) b.setAttribute("aria-pressed", "false");
  if (state.resizeObserver) state.resizeObserver.disconnect();
  clearTimeout(state.subscribeTimer);
  Object.assign(state, {
    me: null, localTile: null, activeSpeaker: null, page: 0, pages: 1,
    subscribeTimer: null, lastSubscribe: null, resizeObserver: null,
  });
  for (const m of [state.participants, state.tracks, state.screenTiles, state.receivers, state.slots, state.msids, state.ownTracks, state.ownKinds, state.pendingLayers]) m.clear();
  $("grid").replaceChildren();
  $("stage").replaceChildren();
  $("audio").replaceChildren();
  $("meeting").hidden = true;
  $("lobby").hidden = false;
  resetPlayback();
}

// ---- Test and debugging hook ---------------------------------------------------------

function findTile(participantId, source) {
  if (source === "screen") return [...state.screenTiles.values()].find((t) => t.participantId === participantId) || null;
  if (state.me && participantId === state.me.id) return state.localTile;
  const p = state.participants.get(participantId);
  return p ? p.tile : null;
}

async function statsByMid(kind, type) {
  const out = new Map();
  if (!state.pc) return out;
  (await state.pc.getStats()).forEach((s) => {
    if (s.type === type && s.kind === kind && s.mid !== undefined) out.set(s.mid, s);
  });
  return out;
}

// What a participant's tile shows: the slot, what it carries, and the decoder's view of it.
async function tileVideo(participantId, source = "camera") {
  const tile = findTile(participantId, source);
  if (!tile) return null;
  const inbound = tile.mid !== null ? (await statsByMid("video", "inbound-rtp")).get(tile.mid) : undefined;
  const r = tile.el.getBoundingClientRect();
  const carried = tile.mid !== null ? carriedBy(tile.mid) : null;
  return {
    mid: tile.mid,
    trackId: carried ? carried.trackId : null,
    framesDecoded: inbound ? inbound.framesDecoded || 0 : 0,
    frameWidth: inbound ? inbound.frameWidth || 0 : 0,
    frameHeight: inbound ? inbound.frameHeight || 0 : 0,
    bytesReceived: inbound ? inbound.bytesReceived || 0 : 0,
    packetsReceived: inbound ? inbound.packetsReceived || 0 : 0,
    framesReceived: inbound ? inbound.framesReceived || 0 : 0,
    keyFramesDecoded: inbound ? inbound.keyFramesDecoded || 0 : 0,
    pliCount: inbound ? inbound.pliCount || 0 : 0,
    videoWidth: tile.video.videoWidth,
    currentTime: tile.video.currentTime,
    tileWidth: r.width,
    tileHeight: r.height,
    onPage: source === "screen" || tile.onPage !== false,
  };
}

window.huiyi = {
  state,
  // Drop the signaling connection without leaving, as a network change would (tests).
  dropSignaling: () => state.ws && state.ws.close(3000, "dropped"),
  // Restart ICE as after a network change (tests); the local ICE username, to see it change.
  restartIce: () => state.pc && state.pc.restartIce(),
  iceUfrag: () => {
    const sdp = state.pc && state.pc.localDescription ? state.pc.localDescription.sdp : "";
    const m = sdp.match(/a=ice-ufrag:(\S+)/);
    return m ? m[1] : null;
  },
  stats: () => state.pc ? state.pc.getStats() : Promise.resolve(new Map()),
  soundBlocked,
  liveDevices,
  talk: talkState,
  // Say something in the chat, raise or lower the hand (tests; the page's controls do the same).
  chat: (text) => send({ type: "chat", text }),
  tileVideo,
  // Every remote tile's video, keyed "participantId" or "participantId/screen".
  videos: async () => {
    const out = {};
    for (const t of remoteTiles()) {
      const key = t.participantId + (t.screenTrackId ? "/screen" : "");
      out[key] = await tileVideo(t.participantId, t.screenTrackId ? "screen" : "camera");
    }
    return out;
  },
  page: () => ({ page: state.page + 1, pages: state.pages }),
  setPage: (n) => setPage(n - 1),
  // Fix a tile's size in CSS pixels (null restores the grid's size), as a person resizing a window would.
  forceTileSize: (participantId, width, height, source = "camera") => {
    const tile = findTile(participantId, source);
    if (!tile) return false;
    tile.el.classList.toggle("forced", width != null);
    tile.el.style.width = width != null ? width + "px" : "";
    tile.el.style.height = height != null ? height + "px" : "";
    return true;
  },
  subscribed: () => state.lastSubscribe === null ? null : JSON.parse(state.lastSubscribe),
  // The own simulcast layers: what the encoder sends and what it is allowed to.
  publishing: async () => {
    const out = [];
    if (!state.pc) return out;
    const active = new Map();
    for (const tr of state.pc.getTransceivers()) {
      if (!tr.sender.track || tr.sender.track.kind !== "video" || tr.mid === null) continue;
      for (const e of tr.sender.getParameters().encodings || []) active.set(tr.mid + "/" + (e.rid || ""), e.active);
    }
    (await state.pc.getStats()).forEach((s) => {
      if (s.type !== "outbound-rtp" || s.kind !== "video") return;
      out.push({
        mid: s.mid, rid: s.rid || null, active: active.get(s.mid + "/" + (s.rid || "")),
        bytesSent: s.bytesSent, framesEncoded: s.framesEncoded, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
        qualityLimitationReason: s.qualityLimitationReason, targetBitrate: s.targetBitrate,
        keyFramesEncoded: s.keyFramesEncoded, pliCount: s.pliCount, firCount: s.firCount, ssrc: s.ssrc,
      });
    });
    return out;
  },
};

// ---- Page wiring ---------------------------------------------------------------------

$("room").value = roomFromPath || params.get("room") || "";
$("name").value = params.get("name") || "";
// ?mic=0 / ?cam=0 join without them (links for listeners, and tests).
if (params.get("mic") === "0") $("with-mic").checked = false;
if (params.get("cam") === "0") $("with-cam").checked = false;
$("with-mic").onchange = $("with-cam").onchange = startPreview;
$("join-form").onsubmit = (e) => { e.preventDefault(); join($("room").value.trim(), $("name").value.trim()); };
$("toggle-mic").onclick = (e) => toggle("audio", e.target, "Mute mic", "Unmute mic");
$("toggle-cam").onclick = (e) => toggle("video", e.target, "Stop camera", "Start camera");
$("share").onclick = shareScreen;
$("enable-sound").onclick = playBlocked;
// Where the browser cannot share a screen (phones), it is not offered.
$("share").hidden = !(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
PHONE.addEventListener("change", () => { if (state.me) layout(); });
initTalk({
  send,
  me: () => state.me && state.me.id,
  tileOf: (id) => findTile(id, "camera"),
  people: () => [
    ...(state.me ? [{ id: state.me.id, name: state.me.name, me: true }] : []),
    ...[...state.participants.entries()].map(([id, p]) => ({ id, name: p.info.name || id, micOff: micOff(id) })),
  ],
});
$("leave").onclick = leave;
$("prev-page").onclick = () => setPage(state.page - 1);
$("next-page").onclick = () => setPage(state.page + 1);
// A hidden tab shows nothing: it subscribes to no video until it is shown again.
document.addEventListener("visibilitychange", scheduleSubscribe);
// Zooming changes devicePixelRatio without resizing any tile in CSS pixels.
window.addEventListener("resize", scheduleSubscribe);

// Going away (a reload, a closed tab): no leave is sent, so a reload can come back as the
// same participant; a closed tab leaves when the server's grace period ends.
window.addEventListener("pagehide", () => remember(Date.now()));

(async () => {
  await startPreview();
  const rejoin = $("room").value && rejoinable($("room").value);
  if (rejoin) {
    join($("room").value, $("name").value, rejoin);
  } else if (params.get("autojoin") === "1" && $("room").value && $("name").value) {
    join($("room").value, $("name").value);
  }
})();
