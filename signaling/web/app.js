// Huiyi web client: lobby with preview, then a grid of participants. Talks the
// signaling protocol in docs/protocol.md over one WebSocket and one RTCPeerConnection.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const roomFromPath = decodeURIComponent((location.pathname.match(/^\/room\/([^/]+)/) || [])[1] || "");

const state = {
  ws: null,
  pc: null,
  me: null,
  local: null,          // MediaStream from camera and mic
  screen: null,         // MediaStream from getDisplayMedia
  participants: new Map(), // id -> {info, tile, screenTile}
  trackSources: new Map(), // remote track id -> source
  ownTracks: new Map(), // mid -> track id
  makingOffer: false,
  left: false,
};

function setConn(text, cls) {
  const el = $("conn");
  el.textContent = text;
  el.className = "conn " + cls;
}

function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

async function startPreview() {
  const wantMic = $("with-mic").checked, wantCam = $("with-cam").checked;
  if (state.local) state.local.getTracks().forEach((t) => t.stop());
  state.local = null;
  if (!wantMic && !wantCam) { $("preview").srcObject = null; return; }
  try {
    state.local = await navigator.mediaDevices.getUserMedia({
      audio: wantMic,
      video: wantCam ? { width: 640, height: 480 } : false,
    });
    $("preview").srcObject = state.local;
  } catch (e) {
    $("lobby-error").textContent = "Camera or microphone unavailable: " + e.message;
  }
}

async function fetchToken(room, name) {
  if (params.get("token")) return params.get("token");
  const identity = name.toLowerCase().replace(/[^a-z0-9]+/g, "-").slice(0, 32) + "-" +
    Math.random().toString(36).slice(2, 7);
  const q = new URLSearchParams({ room, identity, name });
  const res = await fetch("/v1/dev/token?" + q);
  if (!res.ok) throw new Error("no token: this server needs one in the link (?token=...)");
  return (await res.json()).token;
}

function tile(id, label, opts = {}) {
  const el = document.createElement("div");
  el.className = "tile" + (opts.local ? " local" : "") + (opts.screen ? " screen" : "");
  el.dataset.participant = id;
  const video = document.createElement("video");
  video.autoplay = true; video.playsInline = true; video.muted = true;
  const audio = document.createElement("audio");
  audio.autoplay = true;
  const name = document.createElement("span");
  name.className = "label";
  name.textContent = label;
  el.append(video, audio, name);
  $("grid").append(el);
  return { el, video, audio, name, stream: new MediaStream() };
}

function addRemoteParticipant(info) {
  if (state.participants.has(info.id)) return state.participants.get(info.id);
  const p = { info, tile: tile(info.id, info.name), screenTile: null };
  state.participants.set(info.id, p);
  for (const t of info.tracks || []) noteTrack(info.id, t);
  return p;
}

function noteTrack(participantId, track) {
  state.trackSources.set(track.id, track.source);
  if (track.kind === "audio") setMuted(participantId, track.muted);
}

function setMuted(participantId, muted) {
  const p = state.participants.get(participantId);
  if (p) p.tile.name.classList.toggle("muted", muted);
}

function removeParticipant(id) {
  const p = state.participants.get(id);
  if (!p) return;
  p.tile.el.remove();
  if (p.screenTile) p.screenTile.el.remove();
  state.participants.delete(id);
}

function onRemoteTrack(ev) {
  const participantId = ev.streams[0] ? ev.streams[0].id : "unknown";
  const p = state.participants.get(participantId) ||
    addRemoteParticipant({ id: participantId, name: participantId, tracks: [] });
  const track = ev.track;
  const source = state.trackSources.get(track.id) || (track.kind === "audio" ? "microphone" : "camera");
  let t = p.tile;
  if (source === "screen") {
    if (!p.screenTile) p.screenTile = tile(participantId, p.info.name + " (screen)", { screen: true });
    t = p.screenTile;
  }
  t.stream.addTrack(track);
  const el = track.kind === "audio" ? t.audio : t.video;
  el.srcObject = t.stream;
  el.play().catch(() => {});
  track.addEventListener("ended", () => t.stream.removeTrack(track));
  ev.transceiver.receiver.track.onmute = null;
}

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
  await state.pc.setLocalDescription();
  send({ type: "answer", sdp: state.pc.localDescription.sdp });
}

async function onServerAnswer(msg) {
  if (state.pc.signalingState !== "have-local-offer") return;
  await state.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
  for (const t of msg.tracks || []) state.ownTracks.set(t.mid, t.id);
}

function createPeerConnection() {
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
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
  const local = state.local;
  if (local) {
    for (const track of local.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [local] });
  }
  if (!local || local.getTracks().length === 0) pc.createDataChannel("huiyi");
  return pc;
}

async function handleMessage(msg) {
  switch (msg.type) {
    case "joined": {
      state.me = msg.participant;
      for (const p of msg.participants) addRemoteParticipant(p);
      const me = tile(msg.participant.id, msg.participant.name + " (you)", { local: true });
      if (state.local) { me.video.srcObject = state.local; }
      createPeerConnection();
      break;
    }
    case "answer": await onServerAnswer(msg); break;
    case "offer": await onServerOffer(msg.sdp); break;
    case "participantJoined": addRemoteParticipant(msg.participant); break;
    case "participantLeft": removeParticipant(msg.participantId); break;
    case "trackPublished": addRemoteParticipant({ id: msg.participantId, name: msg.participantId, tracks: [] }); noteTrack(msg.participantId, msg.track); break;
    case "trackUnpublished": {
      const p = state.participants.get(msg.participantId);
      if (p && p.screenTile && state.trackSources.get(msg.trackId) === "screen") { p.screenTile.el.remove(); p.screenTile = null; }
      break;
    }
    case "trackMuted": if (state.trackSources.get(msg.trackId) === "microphone") setMuted(msg.participantId, msg.muted); break;
    case "activeSpeaker":
      for (const el of document.querySelectorAll(".tile")) {
        el.classList.toggle("speaking", el.dataset.participant === msg.participantId && !el.classList.contains("screen"));
      }
      break;
    case "error": $("meeting-error").textContent = msg.code + ": " + msg.message; break;
  }
}

async function join(room, name) {
  $("lobby-error").textContent = "";
  let token;
  try { token = await fetchToken(room, name); } catch (e) { $("lobby-error").textContent = e.message; return; }
  history.replaceState(null, "", "/room/" + encodeURIComponent(room) + "?name=" + encodeURIComponent(name));
  $("room-title").textContent = room;
  $("lobby").hidden = true;
  $("meeting").hidden = false;
  setConn("connecting", "connecting");
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/rtc");
  state.ws = ws;
  let queue = Promise.resolve();
  ws.onopen = () => send({ type: "join", token });
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    queue = queue.then(() => handleMessage(msg)).catch((err) => console.warn("message failed", msg.type, err));
  };
  ws.onclose = (e) => {
    setConn(state.left ? "left" : "disconnected" + (e.reason ? ": " + e.reason : ""), "closed");
    if (state.pc) state.pc.close();
  };
  const hb = setInterval(() => ws.readyState === WebSocket.OPEN ? send({ type: "ping" }) : clearInterval(hb), 20000);
}

function ownTrackId(track) {
  for (const tr of state.pc.getTransceivers()) {
    if (tr.sender.track === track && tr.mid) return state.ownTracks.get(tr.mid);
  }
  return undefined;
}

function toggle(kind, button, onText, offText) {
  const track = state.local && state.local.getTracks().find((t) => t.kind === kind);
  if (!track) return;
  track.enabled = !track.enabled;
  button.textContent = track.enabled ? onText : offText;
  button.setAttribute("aria-pressed", String(!track.enabled));
  const id = ownTrackId(track);
  if (id) send({ type: "mute", trackId: id, muted: !track.enabled });
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
  send({ type: "leave" });
  if (state.pc) state.pc.close();
  if (state.local) state.local.getTracks().forEach((t) => t.stop());
  $("grid").replaceChildren();
  $("meeting").hidden = true;
  $("lobby").hidden = false;
}

// Exposed for tests and debugging: the peer connection and its stats.
window.huiyi = { state, stats: () => state.pc ? state.pc.getStats() : Promise.resolve(new Map()) };

$("room").value = roomFromPath || params.get("room") || "";
$("name").value = params.get("name") || "";
$("with-mic").onchange = $("with-cam").onchange = startPreview;
$("join-form").onsubmit = (e) => { e.preventDefault(); join($("room").value.trim(), $("name").value.trim()); };
$("toggle-mic").onclick = (e) => toggle("audio", e.target, "Mute mic", "Unmute mic");
$("toggle-cam").onclick = (e) => toggle("video", e.target, "Stop camera", "Start camera");
$("share").onclick = shareScreen;
$("leave").onclick = leave;

(async () => {
  await startPreview();
  if (params.get("autojoin") === "1" && $("room").value && $("name").value) {
    join($("room").value, $("name").value);
  }
})();
