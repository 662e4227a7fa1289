// The meeting's tiles: one per participant in a paginated grid (or, in speaker view, one
// large tile, the pinned participant or the one speaking, over a strip of the others)
// and one per screen share on the stage; the videos the receiving slots carry put on
// them, and the subscription that follows what is on screen (docs/protocol.md, Slots
// and Subscribing): a large tile asks for more than a small one.

import { $, PHONE, pageSize, send, state } from "./state.js";
import { play, routeSound } from "./lobby.js";

// Resizes and page flips come in bursts; one `subscribe` per burst.
const SUBSCRIBE_DEBOUNCE_MS = 200;
// Tiles in the strip under the large one, in speaker view.
const stripSize = () => (PHONE.matches ? 3 : 6);

export function makeTile(participantId, label, opts = {}) {
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
  let pin = null;
  if (!opts.local && !opts.screen) {
    pin = document.createElement("button");
    pin.className = "pin";
    pin.textContent = "Pin";
    pin.setAttribute("aria-label", "pin " + label);
    pin.onclick = () => togglePin(participantId);
    el.append(pin);
  }
  (opts.screen ? $("stage") : $("grid")).append(el);
  const tile = { el, video, name, pin, participantId, screenTrackId: opts.trackId || null, mid: null };
  if (!opts.local && state.resizeObserver) state.resizeObserver.observe(el);
  return tile;
}

function dropTile(tile) {
  if (state.resizeObserver) state.resizeObserver.unobserve(tile.el);
  tile.video.srcObject = null;
  tile.el.remove();
}

export function addRemoteParticipant(info) {
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

export function noteTrack(participantId, track) {
  state.tracks.set(track.id, { participantId, kind: track.kind, source: track.source, muted: track.muted });
  if (track.kind === "audio") setMicMuted(participantId, track.muted);
  showCamera(participantId);
  if (track.kind === "video" && track.source === "screen" && !state.screenTiles.has(track.id)) {
    const p = state.participants.get(participantId);
    const name = p ? p.info.name || participantId : participantId;
    state.screenTiles.set(track.id, makeTile(participantId, name + " (screen)", { screen: true, trackId: track.id }));
  }
}

export function forgetTrack(trackId) {
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
export function setPaused(trackId, paused, reason) {
  const tile = tileOfTrack(trackId);
  if (!tile) return;
  tile.el.classList.toggle("paused", paused);
  if (paused) tile.el.dataset.paused = reason === "load" ? "server busy" : "low bandwidth";
  else delete tile.el.dataset.paused;
}

export function setMicMuted(participantId, muted) {
  const p = state.participants.get(participantId);
  if (p) p.tile.name.classList.toggle("muted", muted);
}

// A participant's tile shows initials while it publishes no camera or has it off.
export function showCamera(participantId) {
  const p = state.participants.get(participantId);
  if (!p) return;
  const on = [...state.tracks.values()].some((t) => t.participantId === participantId && t.kind === "video" && t.source === "camera" && !t.muted);
  p.tile.el.classList.toggle("video-off", !on);
}

// Whether a participant's microphone is muted (or it has none published).
export function micOff(participantId) {
  const mics = [...state.tracks.values()].filter((t) => t.participantId === participantId && t.kind === "audio");
  return mics.length > 0 && mics.every((t) => t.muted);
}

export function removeParticipant(id) {
  const p = state.participants.get(id);
  if (!p) return;
  dropTile(p.tile);
  for (const [trackId, t] of [...state.tracks]) if (t.participantId === id) forgetTrack(trackId);
  state.participants.delete(id);
  if (state.activeSpeaker === id) state.activeSpeaker = null;
  if (state.pinned === id) state.pinned = null;
}

// Pin a participant: speaker view, with its tile the large one; again: unpinned.
export function togglePin(participantId) {
  state.pinned = state.pinned === participantId ? null : participantId;
  if (state.pinned) state.view = "speaker";
  layout();
}

// "grid" or "speaker".
export function setView(view) {
  state.view = view;
  if (view === "grid") state.pinned = null;
  layout();
}

// The large tile of speaker view: the pinned participant, else the one speaking, else
// the first other participant, else oneself.
function mainTile(tiles) {
  const pinned = state.participants.get(state.pinned);
  if (pinned) return pinned.tile;
  const speaker = state.participants.get(state.activeSpeaker);
  if (speaker) return speaker.tile;
  return tiles.find((t) => t !== state.localTile) || tiles[0] || null;
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
export function layout() {
  document.body.classList.toggle("phone", PHONE.matches);
  const speakerView = state.view === "speaker";
  const all = orderedGridTiles();
  const main = speakerView ? mainTile(all) : null;
  const tiles = all.filter((t) => t !== main);
  const size = speakerView ? stripSize() : pageSize();
  state.pages = Math.max(1, Math.ceil(tiles.length / size));
  state.page = Math.min(state.page, state.pages - 1);
  const first = state.page * size;
  const onPage = tiles.slice(first, first + size);
  tiles.forEach((tile, i) => {
    // CSS order instead of moving DOM nodes: a <video> removed from the document pauses.
    tile.el.style.order = String(i);
    tile.el.hidden = i < first || i >= first + size;
    tile.onPage = !tile.el.hidden;
  });
  if (main) {
    main.el.style.order = "-1";
    main.el.hidden = false;
    main.onPage = true;
  }
  for (const tile of all) {
    tile.el.classList.toggle("speaking", tile.participantId === state.activeSpeaker && state.activeSpeaker !== null);
    tile.el.classList.toggle("main", tile === main);
    tile.el.classList.toggle("pinned", tile.participantId === state.pinned);
    if (tile.pin) tile.pin.textContent = tile.participantId === state.pinned ? "Unpin" : "Pin";
  }
  const grid = $("grid");
  grid.classList.toggle("speaker", speakerView);
  const cols = speakerView ? Math.max(1, onPage.length)
    : PHONE.matches && onPage.length <= 2 ? 1 : Math.max(1, Math.ceil(Math.sqrt(onPage.length)));
  grid.style.setProperty("--cols", String(cols));
  grid.style.setProperty("--rows", String(Math.max(1, Math.ceil(onPage.length / cols))));
  $("toggle-view").textContent = speakerView ? "Grid view" : "Speaker view";
  $("toggle-view").setAttribute("aria-pressed", String(speakerView));
  $("stage").hidden = state.screenTiles.size === 0;
  $("pager").hidden = state.pages <= 1;
  $("page-label").textContent = `page ${state.page + 1} of ${state.pages}`;
  $("prev-page").disabled = state.page === 0;
  $("next-page").disabled = state.page >= state.pages - 1;
  placeVideos();
  scheduleSubscribe();
}

export function setPage(page) {
  state.page = Math.max(0, Math.min(page, state.pages - 1));
  layout();
}

// ---- Receiving: slots ----------------------------------------------------------------

// What a receiving mid carries now: `slots` once it has named the mid, the SDP's msid before.
export function carriedBy(mid) {
  if (state.slots.has(mid)) return state.slots.get(mid);
  return state.msids.get(mid) || null;
}

function tileForTrack(participantId, trackId) {
  const known = state.tracks.get(trackId);
  if (known && known.source === "screen") return state.screenTiles.get(trackId) || null;
  const p = state.participants.get(known ? known.participantId : participantId);
  return p ? p.tile : null;
}

export function remoteTiles() {
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

export function onRemoteTrack(ev) {
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
    routeSound(rx.audio);
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
export function pruneReceivers() {
  const live = new Set();
  for (const tr of state.pc.getTransceivers()) {
    const d = tr.currentDirection;
    if (tr.mid !== null && (d === "recvonly" || d === "sendrecv")) live.add(tr.mid);
  }
  for (const mid of [...state.receivers.keys()]) if (!live.has(mid)) dropReceiver(mid);
  placeVideos();
}

export function readMsids(sdp) {
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = section.match(/^a=mid:(\S+)/m);
    const msid = section.match(/^a=msid:(\S+) (\S+)/m);
    if (mid && msid && msid[1] !== "-") state.msids.set(mid[1], { participantId: msid[1], trackId: msid[2] });
  }
}

export function onSlots(slots) {
  for (const s of slots || []) {
    if (typeof s.mid !== "string") continue;
    state.slots.set(s.mid, s.trackId ? { participantId: s.participantId, trackId: s.trackId } : null);
  }
  placeVideos();
}

// ---- Subscriptions -------------------------------------------------------------------

// The video tracks of the tiles on screen, with their size in device pixels, most
// important first (the server pauses the end of the list first when the bandwidth is
// short): the pinned participant, then larger tiles before smaller ones.
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
    const pinned = !tile.screenTrackId && tile.participantId === state.pinned;
    out.push({ trackId, width, height, pinned });
  }
  const rank = (t) => [t.pinned ? 0 : 1, -t.width * t.height, t.trackId];
  out.sort((a, b) => {
    const [x, y] = [rank(a), rank(b)];
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
    return 0;
  });
  return out.map(({ trackId, width, height }) => ({ trackId, width, height }));
}

export function scheduleSubscribe() {
  if (!state.me || state.subscribeTimer !== null) return;
  state.subscribeTimer = setTimeout(() => {
    state.subscribeTimer = null;
    const tracks = visibleVideoTracks();
    const key = JSON.stringify(tracks);
    if (key === state.lastSubscribe) return;
    if (send({ type: "subscribe", tracks })) state.lastSubscribe = key;
  }, SUBSCRIBE_DEBOUNCE_MS);
}

export function findTile(participantId, source) {
  if (source === "screen") return [...state.screenTiles.values()].find((t) => t.participantId === participantId) || null;
  if (state.me && participantId === state.me.id) return state.localTile;
  const p = state.participants.get(participantId);
  return p ? p.tile : null;
}
