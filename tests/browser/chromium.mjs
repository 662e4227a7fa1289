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
