// Headless Chromium as every browser test runs it: Debian's build (or $CHROMIUM), fake
// camera and microphone, loopback ICE candidates allowed, autoplay without a gesture, and
// nothing in the background; $CHROMIUM_EXTRA_ARGS (a JSON array) adds flags of a test's own.
import { chromium } from "playwright-core";

export function launch(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/lib/chromium/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
      "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
      "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
      ...extraArgs,
      ...JSON.parse(process.env.CHROMIUM_EXTRA_ARGS || "[]"),
    ],
  });
}

// Ends a script: runs its checks, prints RESULT (with the pages' last logged problems),
// closes the browser and exits 0 when ok. A check that throws is a failed result.
export async function finish(browser, logs, checks) {
  let result;
  try {
    result = await checks();
  } catch (e) {
    result = { ok: false, reason: String(e && e.stack || e) };
  }
  result.logs = logs.slice(-20);
  await browser.close();
  console.log("RESULT " + JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
}
