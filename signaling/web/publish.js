// Publishing: the peer connection, its negotiation with the server (the server's offers
// win: this page is the polite peer), the camera's simulcast layers, muting and the
// screen share.

import { $, params, send, setConn, state } from "./state.js";
import { openDevice } from "./lobby.js";
import { onRemoteTrack, pruneReceivers, readMsids } from "./tiles.js";

// Quarter, half and full resolution; the server ranks q < h < f (docs/protocol.md, Simulcast).
const CAMERA_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", maxBitrate: 1_700_000 },
];

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
export function applyLayers(trackId, rids) {
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

export async function onServerOffer(sdp) {
  // We are the polite peer: a server offer wins over our own outstanding offer.
  await state.pc.setRemoteDescription({ type: "offer", sdp });
  readMsids(sdp);
  await state.pc.setLocalDescription();
  send({ type: "answer", sdp: state.pc.localDescription.sdp });
  pruneReceivers();
}

export async function onServerAnswer(msg) {
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
export function createPeerConnection(iceServers = []) {
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

// Mute and camera off stop the device itself (its light goes off) and send nothing in
// its place; turning it on opens the device again and puts the new track on the same
// sender: no renegotiation, and the camera's simulcast layers stay as negotiated.
export async function toggle(kind, button, onText, offText) {
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
      } catch {
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

// Another camera or microphone chosen in the meeting: the new device's track takes the
// old one's place on the same sender (no renegotiation) and the old device is stopped.
// A device that is off now is opened from the new choice when it is turned on.
export async function switchDevice(kind) {
  if (!state.pc || !state.local) return;
  // One change of a device at a time: its mute or camera button waits meanwhile.
  const button = $(kind === "audio" ? "toggle-mic" : "toggle-cam");
  if (button.disabled) return;
  const tr = state.pc.getTransceivers().find((t) => state.ownKinds.get(t.mid) === kind);
  const current = state.local.getTracks().find((t) => t.kind === kind && t.readyState === "live");
  if (!tr || !current) return;
  const pc = state.pc;
  button.disabled = true;
  try {
    const track = await openDevice(kind);
    if (!track) return;
    if (state.pc !== pc || !state.local || !state.local.getTracks().includes(current)) { track.stop(); return; }
    try {
      await tr.sender.replaceTrack(track);
    } catch (e) {
      track.stop();
      $("meeting-error").textContent = "Could not switch devices: " + e.message;
      return;
    }
    current.stop();
    state.local.removeTrack(current);
    state.local.addTrack(track);
  } finally {
    button.disabled = false;
  }
}

// The host muted this participant: its microphone goes off as if it had muted itself.
export function mutedByHost() {
  const pc = state.pc;
  // The microphone is being switched or toggled: once that is done.
  if ($("toggle-mic").disabled) { setTimeout(() => { if (state.pc === pc) mutedByHost(); }, 200); return; }
  const mic = state.local && state.local.getAudioTracks().find((t) => t.readyState === "live");
  if (mic) toggle("audio", $("toggle-mic"), "Mute mic", "Unmute mic");
}

export async function shareScreen() {
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

export function stopShare() {
  if (!state.screen) return;
  const track = state.screen.getVideoTracks()[0];
  for (const tr of state.pc.getTransceivers()) if (tr.sender.track === track) tr.stop();
  state.screen.getTracks().forEach((t) => t.stop());
  state.screen = null;
  $("share").textContent = "Share screen";
}
