// The lobby's part of the Huiyi web client: the camera and microphone (the preview,
// acquiring them again for every join, which of them), the token a tab keeps for reloads,
// what each way a meeting can end means in plain words, and playback the browser blocked
// until a click.

const $ = (id) => document.getElementById(id);
const CAMERA_CONSTRAINTS = { width: { ideal: 1280 }, height: { ideal: 720 } };

// The devices this page holds (camera and microphone), or null; and every track it ever
// opened, to tell whether any is still live (a camera light on).
let local = null;
const opened = [];

export function localStream() {
  return local;
}

// Stop the camera and microphone: their lights go off, and the next join asks anew.
export function stopLocal() {
  if (local) local.getTracks().forEach((t) => t.stop());
  local = null;
  $("preview").srcObject = null;
  $("preview").hidden = true;
}

// The camera and microphone the lobby's boxes ask for, opened now unless open and live.
// A device that cannot be had is said in the lobby; the join goes on without it.
export async function ensureLocal() {
  const wantMic = $("with-mic").checked, wantCam = $("with-cam").checked;
  const live = local && local.getTracks().length > 0 && local.getTracks().every((t) => t.readyState === "live");
  const matches = live && local.getAudioTracks().length === Number(wantMic) && local.getVideoTracks().length === Number(wantCam) &&
    local.getTracks().every((t) => !chosen(t.kind) || t.getSettings().deviceId === chosen(t.kind));
  if (matches) return local;
  stopLocal();
  if (!wantMic && !wantCam) return null;
  try {
    local = await navigator.mediaDevices.getUserMedia({ audio: wantMic && constraints("audio"), video: wantCam && constraints("video") });
    opened.push(...local.getTracks());
    $("preview").srcObject = local;
    $("preview").hidden = local.getVideoTracks().length === 0;
  } catch (e) {
    showLobbyError("Camera or microphone unavailable: " + e.message);
  }
  await listDevices();
  return local;
}

// ---- Which devices -------------------------------------------------------------------

// The camera, microphone and speaker chosen (device ids), kept for the next visit.
const SELECTS = { video: "cam-device", audio: "mic-device", speaker: "speaker-device" };
const choice = (() => {
  try { return JSON.parse(localStorage.getItem("huiyi.devices") || "{}"); } catch { return {}; }
})();

function chosen(kind) {
  return choice[kind] || undefined;
}

function constraints(kind) {
  const id = chosen(kind);
  const base = kind === "video" ? { ...CAMERA_CONSTRAINTS } : {};
  if (id) base.deviceId = { exact: id };
  return Object.keys(base).length ? base : true;
}

// Fill the device lists (their names show once the page may use a device). A chosen
// device that is gone falls back to the default.
export async function listDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
  const kinds = { video: "videoinput", audio: "audioinput", speaker: "audiooutput" };
  for (const [kind, id] of Object.entries(SELECTS)) {
    const select = $(id);
    const found = devices.filter((d) => d.kind === kinds[kind] && d.deviceId);
    select.replaceChildren(...found.map((d, i) => {
      const option = document.createElement("option");
      option.value = d.deviceId;
      option.textContent = d.label || `${kind === "video" ? "Camera" : kind === "audio" ? "Microphone" : "Speaker"} ${i + 1}`;
      return option;
    }));
    if (found.some((d) => d.deviceId === choice[kind])) select.value = choice[kind];
    // A speaker can be chosen only where the browser lets a page route its sound.
    select.closest("label").hidden = found.length === 0 || (kind === "speaker" && !("setSinkId" in HTMLMediaElement.prototype));
  }
}

// Wire the device lists: `onChange(kind)` runs after a choice was kept.
export function initDevices(onChange) {
  for (const [kind, id] of Object.entries(SELECTS)) {
    $(id).onchange = () => {
      choice[kind] = $(id).value;
      localStorage.setItem("huiyi.devices", JSON.stringify(choice));
      onChange(kind);
    };
  }
  if (navigator.mediaDevices) navigator.mediaDevices.addEventListener("devicechange", listDevices);
}

// Play an element's sound on the chosen speaker.
export function routeSound(el) {
  if (choice.speaker && el.setSinkId) el.setSinkId(choice.speaker).catch(() => {});
}

// Open one device again (a microphone unmuted, a camera started, another one chosen):
// its track, or null.
export async function openDevice(kind) {
  try {
    const stream = await navigator.mediaDevices.getUserMedia(kind === "audio" ? { audio: constraints("audio") } : { video: constraints("video") });
    const track = stream.getTracks()[0];
    opened.push(track);
    return track;
  } catch (e) {
    document.getElementById("meeting-error").textContent = (kind === "audio" ? "Microphone" : "Camera") + " unavailable: " + e.message;
    return null;
  }
}

// How many of the tracks this page opened are still live, by kind.
export function liveDevices() {
  const live = opened.filter((t) => t.readyState === "live");
  return { audio: live.filter((t) => t.kind === "audio").length, video: live.filter((t) => t.kind === "video").length };
}

export function showLobbyError(text) {
  $("lobby-error").textContent = text;
}

// The token of this tab's meeting, kept for a reload (this tab only: sessionStorage).
export function keepToken(room, token) {
  sessionStorage.setItem("huiyi.token", JSON.stringify({ room, token }));
}

export function keptToken(room) {
  try {
    const kept = JSON.parse(sessionStorage.getItem("huiyi.token") || "null");
    return kept && kept.room === room ? kept.token : null;
  } catch {
    return null;
  }
}

export function forgetToken() {
  sessionStorage.removeItem("huiyi.token");
}

// What a close of the signaling connection says to the person (docs/protocol.md, Close
// codes), and whether joining again may work as it is (a rejoin button) or needs
// something else first (a new link).
export function closeMessage(code, reason) {
  switch (code) {
    case 4001:
      return { text: /expired/.test(reason)
        ? "Your link has expired. Ask for a new one."
        : "This link is not valid for the meeting (" + (reason || "unauthorized") + "). Ask for a new one.", retry: false, kind: "token" };
    case 4007: return { text: "This meeting is full.", retry: true, kind: "room_full" };
    case 1013: return { text: "The server is full right now. Try again in a minute.", retry: true, kind: "node_full" };
    case 1001: return { text: "The server is shutting down. Rejoin in a moment.", retry: true, kind: "shutting_down" };
    case 4003: return { text: "You were removed from the meeting.", retry: false, kind: "removed" };
    case 4004: return { text: "The meeting was ended.", retry: false, kind: "ended" };
    case 4005: return { text: "You joined this meeting from another tab or device.", retry: true, kind: "replaced" };
    case 4006: return { text: "Your media could not get through to the server (a firewall?).", retry: true, kind: "media" };
    case 4008: return { text: "Your media session failed on the server.", retry: true, kind: "media" };
    case 1008: return { text: "The server refused to let you join" + (reason ? " (" + reason + ")" : "") + ".", retry: true, kind: "refused" };
    default: return { text: "The connection to the server was lost.", retry: true, kind: "lost" };
  }
}

// Media the browser would not start without a gesture (autoplay policy): one prompt, and
// a click plays everything held back.
const blocked = new Set();

export function play(el) {
  el.play().then(() => blocked.delete(el)).catch((e) => {
    if (e && e.name === "NotAllowedError") {
      blocked.add(el);
      $("enable-sound").hidden = false;
    }
  });
}

export function playBlocked() {
  for (const el of blocked) el.play().catch(() => {});
  blocked.clear();
  $("enable-sound").hidden = true;
}

// A meeting ended: nothing of it is waiting to play.
export function resetPlayback() {
  blocked.clear();
  $("enable-sound").hidden = true;
}

export function soundBlocked() {
  return blocked.size > 0;
}
