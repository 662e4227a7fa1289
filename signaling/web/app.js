// Huiyi web client: a lobby with a preview, then the meeting: a paginated grid of
// participants and a stage for screen shares. Talks the signaling protocol of
// docs/protocol.md over one WebSocket and one RTCPeerConnection. This module joins,
// handles the server's messages, leaves and wires the page; the rest is in
//   state.js    the shared state and the socket's send
//   lobby.js    devices, tokens kept for reloads, what each way of ending means
//   tiles.js    tiles, layout, the videos the slots carry, the subscription
//   publish.js  the peer connection, negotiation, simulcast layers, mute, screen share
//   talk.js     chat, hands, reactions, the people list
//   hook.js     window.huiyi, for tests and debugging

import {
  closeMessage, ensureLocal, forgetToken, initDevices, keepToken, keptToken, playBlocked, resetPlayback,
  routeSound, showLobbyError, stopLocal,
} from "./lobby.js";
import { $, PHONE, params, send, setConn, state } from "./state.js";
import {
  clearHands, initTalk, onChat, onHand, onHostAction, onReaction, renderHands, renderPeople, resetTalk,
} from "./talk.js";
import {
  addRemoteParticipant, findTile, forgetTrack, layout, makeTile, micOff, noteTrack, onSlots, removeParticipant,
  scheduleSubscribe, setMicMuted, setPage, setPaused, setView, showCamera,
} from "./tiles.js";
import {
  applyLayers, createPeerConnection, mutedByHost, onServerAnswer, onServerOffer, shareScreen, switchDevice, toggle,
} from "./publish.js";
import "./hook.js";

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
  // ?host=1: a dev token with the host controls (a server with a secret gives them in the link's token).
  if (params.get("host") === "1") q.set("host", "1");
  const res = await fetch("/v1/dev/token?" + q);
  if (!res.ok) throw new Error("no token: this server needs one in the link (#token=...)");
  return (await res.json()).token;
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
      state.host = !!msg.host;
      // The device lists go to the side panel while in the meeting.
      $("devices-here").append($("devices"));
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
    case "hostAction": onHostAction(msg); break;
    case "trackPublished":
      if (!state.participants.has(msg.participantId)) addRemoteParticipant({ id: msg.participantId, name: msg.participantId, tracks: [] });
      noteTrack(msg.participantId, msg.track);
      layout();
      renderPeople();
      break;
    case "trackUnpublished": forgetTrack(msg.trackId); layout(); renderPeople(); break;
    case "trackMuted": {
      // One's own track muted by the server: a host muted this participant.
      if (state.me && msg.participantId === state.me.id) {
        if (msg.muted && [...state.ownTracks.values()].includes(msg.trackId)) mutedByHost();
        break;
      }
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
  $("copy-link").hidden = false;
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
  $("join").before($("devices"));
  Object.assign(state, {
    me: null, localTile: null, activeSpeaker: null, page: 0, pages: 1, view: "grid", pinned: null, host: false,
    subscribeTimer: null, lastSubscribe: null, resizeObserver: null,
  });
  for (const m of [state.participants, state.tracks, state.screenTiles, state.receivers, state.slots, state.msids, state.ownTracks, state.ownKinds, state.pendingLayers]) m.clear();
  $("grid").replaceChildren();
  $("stage").replaceChildren();
  $("audio").replaceChildren();
  $("meeting").hidden = true;
  $("copy-link").hidden = true;
  $("lobby").hidden = false;
  resetPlayback();
}

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
  host: () => state.host,
  tileOf: (id) => findTile(id, "camera"),
  people: () => [
    ...(state.me ? [{ id: state.me.id, name: state.me.name, me: true }] : []),
    ...[...state.participants.entries()].map(([id, p]) => ({ id, name: p.info.name || id, micOff: micOff(id) })),
  ],
});
$("leave").onclick = leave;
// The meeting's address, without anyone's token: on a server with a secret, each invitee
// needs a link with a token of their own.
$("copy-link").onclick = async () => {
  const link = location.origin + "/room/" + encodeURIComponent($("room-title").textContent);
  try {
    await navigator.clipboard.writeText(link);
    $("copy-link").textContent = "Link copied";
    setTimeout(() => { $("copy-link").textContent = "Copy invite link"; }, 2000);
  } catch {
    window.prompt("Copy this link", link);
  }
};
$("toggle-view").onclick = () => setView(state.view === "speaker" ? "grid" : "speaker");
// Another device chosen: in the lobby the preview opens it; in a meeting it replaces the
// one being sent; a speaker applies to every sound playing.
initDevices((kind) => {
  if (kind === "speaker") for (const el of $("audio").children) routeSound(el);
  else if (state.pc) switchDevice(kind);
  else startPreview();
});
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