// Simulcast as a person sees it: page A publishes its fake camera at 1280x720 in three
// layers (q, h, f); page B (no camera, no mic) shows A's tile large, then small, then
// large again. After each switch B must keep decoding frames, and the decoded width must
// follow the tile: smaller after going small, larger again after going large.
// Usage: node simulcast.mjs <base-url> <room> [phase-timeout-seconds=15]
// Prints one line "RESULT {json}"; every phase reports the widths and frame counts it saw,
// what B subscribed to, and A's per-layer send stats (for when a layer never appears).
import { launch } from "./chromium.mjs";

const [base, room, phaseArg = "15"] = process.argv.slice(2);
const phaseMs = Number(phaseArg) * 1000;
const LARGE = [1280, 720];
const SMALL = [200, 112];
// The quarter layer of a 1280-wide camera; anything wider is a higher layer.
const QUARTER_WIDTH = 320;

const browser = await launch();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const logs = [];

async function open(name, query, viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "warning" || m.type() === "error") logs.push(`${name}: ${m.text()}`); });
  page.on("pageerror", (e) => logs.push(`${name} error: ${e.message}`));
  await page.goto(`${base}/room/${encodeURIComponent(room)}?name=${name}&autojoin=1${query}`);
  return page;
}

// Samples B's view of A's tile every 500 ms until `done(sample, previous)` holds, or the
// phase deadline passes. Frames count as rising when they grew over the last sample.
async function watch(b, aId, done) {
  const start = Date.now();
  const samples = [];
  let previous = null;
  while (Date.now() - start < phaseMs) {
    await sleep(500);
    const v = await b.evaluate((id) => window.huiyi.tileVideo(id), aId);
    // Everything B's transport receives (video, audio, RTCP): tells "the server stopped
    // sending" from "the browser dropped what arrived".
    const transportBytes = await b.evaluate(async () => {
      let bytes = 0;
      (await window.huiyi.stats()).forEach((s) => { if (s.type === "transport") bytes += s.bytesReceived || 0; });
      return bytes;
    });
    const sample = {
      transportBytes,
      t: (Date.now() - start) / 1000, frames: v ? v.framesDecoded : 0, width: v ? v.frameWidth : 0, mid: v ? v.mid : null,
      packets: v ? v.packetsReceived : 0, framesReceived: v ? v.framesReceived : 0, keyFrames: v ? v.keyFramesDecoded : 0, plis: v ? v.pliCount : 0,
    };
    samples.push(sample);
    if (previous && sample.frames > previous.frames && done(sample)) return { seconds: sample.t, sample, samples };
    previous = sample;
  }
  return { seconds: null, sample: previous, samples };
}

// After a phase's condition holds, decoding must go on: more frames a second later.
async function stillDecoding(b, aId, frames) {
  await sleep(1000);
  const v = await b.evaluate((id) => window.huiyi.tileVideo(id), aId);
  return { frames: v ? v.framesDecoded : 0, width: v ? v.frameWidth : 0, ok: !!v && v.framesDecoded > frames };
}

// The server's counters that explain a layer switch (or its absence).
async function serverCounters() {
  try {
    const text = await (await fetch(`${base}/metrics`)).text();
    return Object.fromEntries(text.split("\n")
      .filter((l) => /^huiyi_(keyframe_requests|layer_|rtp_forwarded|nacks)/.test(l))
      .map((l) => { const i = l.lastIndexOf(" "); return [l.slice(0, i), Number(l.slice(i + 1))]; }));
  } catch (e) {
    return { error: String(e) };
  }
}

// Widths seen in a phase, in order, without repeats: "320 -> 640 -> 1280".
const widthsSeen = (samples) => samples.map((s) => s.width).filter((w, i, all) => i === 0 || w !== all[i - 1]).join(" -> ");

let result = { ok: false, phases: [] };
try {
  const a = await open("alice", "", { width: 1280, height: 720 });
  const b = await open("bob", "&cam=0&mic=0", { width: 1600, height: 1000 });
  await a.waitForFunction(() => window.huiyi.state.me, null, { timeout: phaseMs });
  const aId = await a.evaluate(() => window.huiyi.state.me.id);
  result.camera = await a.evaluate(() => {
    const t = window.huiyi.state.local && window.huiyi.state.local.getVideoTracks()[0];
    return t ? t.getSettings() : null;
  });

  const phases = [
    { name: "connected", size: null, done: (s) => s.width > 0 },
    { name: "large", size: LARGE, done: (s) => s.width > QUARTER_WIDTH },
    { name: "small", size: SMALL, done: (s, p) => s.width < p.large },
    { name: "large again", size: LARGE, done: (s, p) => s.width > p.small },
  ];
  const widths = {};
  result.ok = true;
  for (const phase of phases) {
    if (phase.size) await b.evaluate(([id, w, h]) => window.huiyi.forceTileSize(id, w, h), [aId, ...phase.size]);
    const seen = await watch(b, aId, (s) => phase.done(s, widths));
    const report = {
      name: phase.name,
      tile: phase.size,
      seconds: seen.seconds,
      width: seen.sample ? seen.sample.width : 0,
      frames: seen.sample ? seen.sample.frames : 0,
      widths_seen: widthsSeen(seen.samples),
    };
    if (seen.seconds !== null) {
      const after = await stillDecoding(b, aId, seen.sample.frames);
      report.still_decoding = after;
    }
    report.subscribed = await b.evaluate(() => window.huiyi.subscribed());
    report.publisher_layers = await a.evaluate(() => window.huiyi.publishing());
    report.layers_told = await a.evaluate(() => window.huiyi.state.layersHistory.slice(-4));
    report.server = await serverCounters();
    result.phases.push(report);
    console.error(`phase ${phase.name}: ${report.seconds === null ? "TIMED OUT" : report.seconds + " s"}, ` +
      `widths ${report.widths_seen}, frames ${report.frames}, layers ` +
      report.publisher_layers.map((l) => `${l.rid}:${l.active ? "on" : "off"}/${l.frameWidth || 0}w/${l.bytesSent}B/` +
        `${l.keyFramesEncoded}kf/${l.pliCount}pli/${l.qualityLimitationReason}`).join(" "));
    if (seen.seconds === null) {
      report.last_samples = seen.samples.slice(-6);
      result.ok = false;
      result.reason = `phase "${phase.name}": no decoded frames at the expected width within ${phaseArg} s`;
      break;
    }
    if (!report.still_decoding.ok) {
      result.ok = false;
      result.reason = `phase "${phase.name}": frames stopped after the switch`;
      break;
    }
    widths[phase.name === "large again" ? "large_again" : phase.name] = report.width;
  }
  result.widths = widths;
} catch (e) {
  result = { ...result, ok: false, reason: String(e && e.stack || e) };
} finally {
  result.logs = logs.slice(-20);
  await browser.close();
}
console.log("RESULT " + JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
