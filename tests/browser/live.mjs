// A live class in headless Chromium: one page goes live on /live/<room>/go (the fake
// camera and microphone, published over WHIP), N pages watch on /live/<room> (WHEP) and
// must decode the teacher's video. A viewer opened before the class starts waits (409)
// and plays once it does.
// Usage: node live.mjs <base-url> <room> [viewers=3] [timeout-seconds=60]
import { launch } from "./chromium.mjs";

const [base, room, viewersArg = "3", timeoutArg = "60"] = process.argv.slice(2);
const viewers = Number(viewersArg);
const deadline = Date.now() + Number(timeoutArg) * 1000;
const browser = await launch();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const result = { ok: false, viewers: [] };

async function waitFor(what, check) {
  while (Date.now() < deadline) {
    const value = await check();
    if (value) return value;
    await sleep(100);
  }
  throw new Error("timed out waiting for " + what);
}

// What a viewer's video element shows.
const playing = (page) =>
  page.evaluate(() => {
    const v = document.getElementById("video");
    return { width: v.videoWidth, height: v.videoHeight, time: v.currentTime, state: window.huiyiLive.state };
  });

try {
  const context = await browser.newContext();
  // One viewer is there before the class starts.
  const early = await context.newPage();
  await early.goto(`${base}/live/${room}`);
  await waitFor("the early viewer to wait", async () => (await playing(early)).state === "waiting");

  const teacher = await context.newPage();
  await teacher.goto(`${base}/live/${room}/go?autostart=1`);
  await waitFor("the teacher to go live", () => teacher.evaluate(() => window.huiyiLive.state === "live"));

  const pages = [early];
  for (let i = 1; i < viewers; i++) {
    const page = await context.newPage();
    await page.goto(`${base}/live/${room}`);
    pages.push(page);
  }
  for (const [i, page] of pages.entries()) {
    const opened = Date.now();
    const first = await waitFor(`viewer ${i} to decode video`, async () => {
      const p = await playing(page);
      return p.width > 0 && p.time > 0 ? p : null;
    });
    const t0 = first.time;
    // Frames keep coming: the playback clock moves on.
    const later = await waitFor(`viewer ${i} to keep playing`, async () => {
      const p = await playing(page);
      return p.time > t0 + 1 ? p : null;
    });
    result.viewers.push({ width: later.width, height: later.height, state: later.state, waited_ms: Date.now() - opened });
  }
  result.teacherErrors = await teacher.evaluate(() => window.huiyiLive.errors);
  result.ok = result.viewers.length === viewers && result.viewers.every((v) => v.width > 0);
} catch (e) {
  result.error = String(e);
}
console.log("RESULT " + JSON.stringify(result));
await browser.close();
