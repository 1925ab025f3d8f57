// What the console journeys (console.mjs, dead-letters.mjs) share: headless Chromium with a
// page that records console errors, and `check(label)`, which fails on any such error or on a
// serious or critical axe-core violation, then writes `console-<label>.png` to `shotsDir`.
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

export function expect(condition, message) {
  if (!condition) throw new Error(message);
}

/** Launches Chromium (CHROMIUM, default /usr/bin/chromium) and opens one page. */
export async function open(shotsDir) {
  mkdirSync(shotsDir, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
  });
  const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  async function check(label) {
    expect(errors.length === 0, `${label}: console errors: ${errors.join(" | ")}`);
    await page.addScriptTag({ content: AXE });
    const result = await page.evaluate(async () =>
      // eslint-disable-next-line no-undef
      await axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }));
    const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
    expect(bad.length === 0, `${label}: axe: ${bad.map((v) => `${v.id} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`).join("; ")}`);
    await page.screenshot({ path: join(shotsDir, `console-${label}.png`), fullPage: true });
  }
  return { browser, page, check };
}
