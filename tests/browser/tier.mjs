// A live class through the broadcast tier in headless Chromium: the teacher's page goes
// live on the origin (/live/<room>/go, WHIP), viewer pages open the origin's /live/<room>
// and are sent on to its edges (WHEP, 307). When every viewer plays, the script prints
// PLAYING with the edge each viewer is on and waits for a line `KILLED <edge url>` on
// stdin (the harness kills that edge); then every viewer must play again, from another
// edge, and the script says how long each took.
// Usage: node tier.mjs <origin-url> <room> [viewers=4] [timeout-seconds=90]
import { launch } from "./chromium.mjs";
import { createInterface } from "node:readline";

const [base, room, viewersArg = "4", timeoutArg = "90"] = process.argv.slice(2);
const viewers = Number(viewersArg);
const deadline = Date.now() + Number(timeoutArg) * 1000;
const browser = await launch();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const result = { ok: false, viewers: [] };
const stdin = createInterface({ input: process.stdin });
const killed = new Promise((resolve) => stdin.on("line", (line) => line.startsWith("KILLED ") && resolve(line.slice(7).trim())));

async function waitFor(what, check) {
  while (Date.now() < deadline) {
    const value = await check();
    if (value) return value;
    await sleep(100);
  }
  throw new Error("timed out waiting for " + what);
}

const look = (page) =>
  page.evaluate(() => {
    const v = document.getElementById("video");
    const l = window.huiyiLive;
    return {
      width: v.videoWidth, time: v.currentTime, state: l.state,
      edge: l.session ? new URL(l.session).origin : null, viewers: l.viewers, errors: l.errors,
    };
  });

// Playing: decoded video whose clock moves on.
async function plays(page, what, from) {
  const first = await waitFor(what, async () => {
    const p = await look(page);
    return p.width > 0 && p.time > 0 && (!from || p.edge !== from) ? p : null;
  });
  return waitFor(what + " (frames keep coming)", async () => {
    const p = await look(page);
    return p.time > first.time + 0.5 ? p : null;
  });
}

try {
  const context = await browser.newContext();
  const teacher = await context.newPage();
  await teacher.goto(`${base}/live/${room}/go?autostart=1`);
  await waitFor("the teacher to go live", () => teacher.evaluate(() => window.huiyiLive.state === "live"));
  const pages = [];
  for (let i = 0; i < viewers; i++) {
    const page = await context.newPage();
    await page.goto(`${base}/live/${room}`);
    pages.push(page);
  }
  const before = [];
  for (const [i, page] of pages.entries()) before.push(await plays(page, `viewer ${i} to play`));
  result.before = before.map((p) => p.edge);
  result.viewerCount = await waitFor("the viewer count to reach every viewer", async () => {
    const n = (await look(pages[0])).viewers;
    return n >= viewers ? n : null;
  });
  console.log("PLAYING " + JSON.stringify(result.before));
  const dead = await killed;
  const killedAt = Date.now();
  for (const [i, page] of pages.entries()) {
    if (before[i].edge !== dead) continue;
    const after = await plays(page, `viewer ${i} to play again after its edge died`, dead);
    result.viewers.push({ from: dead, to: after.edge, recovered_ms: Date.now() - killedAt, errors: after.errors.length });
  }
  result.ok = result.viewers.length > 0 && result.viewers.every((v) => v.to && v.to !== dead);
} catch (e) {
  result.error = String(e);
}
console.log("RESULT " + JSON.stringify(result));
stdin.close();
await browser.close();
