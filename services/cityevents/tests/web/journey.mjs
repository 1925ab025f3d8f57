// City Events' web front end, driven in headless Chromium by Playwright (run by
// services/cityevents/tests/web.rs against an all-in-one it started).
//
// The journey: a visitor uses the site from the keyboard (skip link, search; focus visible); an
// organizer signs up, confirms the address through the mail the development
// transport wrote, logs in, creates a one-seat event and publishes it; people find it by
// category, by a city typed in part, and on a phone's first screen; the organizer uploads a cover
// (a file that is not a picture is refused first), shown in the list and on the event page at
// both widths; a second person joins
// (with JavaScript off: every page and form works without it) while the organizer's open page
// shows the seat count change without a reload; a third joins the waitlist; the second leaves,
// the third's open page shows them going and an unread count, live (server-sent events), they
// see the notification, and subscribe to their calendar feed (read without cookies, parsed by ical.js); the organizer edits the event, and
// writes a bio and uploads a picture, which the second person sees on the event page and the
// organizer page before following them; the
// organizer cuts another event's seats below those taken (warned first; nobody loses a seat),
// whose publication the follower hears of; an admin makes a fourth person, signed in meanwhile, a moderator, who cancels the event with a reason,
// which the third sees on the event, in a notification and in their calendar feed, which they
// then turn off. The organizer publishes an event a little over five hours away; the second
// person joins it and is reminded five hours before, in the app and by mail. The second person reports the organizer; the moderator dismisses the report
// from the queue with a reason, and the reporter is told. A new person logs in with the company's identity provider (an account is made),
// and the organizer links it to her account with her password. The event page shows times on the venue's clock, a map link, OpenGraph tags and
// an .ics file that ical.js parses to the right instants. The third changes their password
// and mail settings, and logs a second device out from the account page; the second logs out
// everywhere. Every page is checked with axe-core (no
// serious or critical violation), logs no console error (a CSP violation is one), and is kept
// as a screenshot at phone and desktop width.
//
// Env: BASE_URL, MAIL_DIR (the all-in-one's data/mail), SHOTS_DIR (where screenshots go),
// ADMIN_EMAIL (an admin made with `cityevents auth admin create`, whose password is the
// journey's), IDP_URL (the OpenID provider of tests/oidc, the site's provider `corp`), CHROMIUM
// (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { readFileSync, readdirSync, mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { deflateSync } from "node:zlib";
import { createRequire } from "node:module";
import ICAL from "ical.js";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const BASE = process.env.BASE_URL;
const MAIL_DIR = process.env.MAIL_DIR;
const SHOTS = process.env.SHOTS_DIR;
const ADMIN_EMAIL = process.env.ADMIN_EMAIL;
const IDP_URL = process.env.IDP_URL;
const PASSWORD = "correct horse battery staple";
const WIDTHS = { phone: { width: 360, height: 740 }, desktop: { width: 1280, height: 800 } };
const run = Date.now().toString(36);

if (!BASE || !MAIL_DIR || !SHOTS || !ADMIN_EMAIL || !IDP_URL) {
  throw new Error("BASE_URL, MAIL_DIR, SHOTS_DIR, ADMIN_EMAIL and IDP_URL must be set");
}
mkdirSync(SHOTS, { recursive: true });

const failures = [];
const people = [];
const checked = new Set();

function fail(message) {
  failures.push(message);
  console.error(`FAIL ${message}`);
}

function expect(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

/** A person with their own browser context. */
async function person(name, { javascript = true } = {}) {
  // axe is injected as a script: the site's CSP (rightly) refuses inline script, so the test
  // context bypasses it for axe alone; CSP violations of the site's own files still show in
  // the console, which fails the run.
  const context = await browser.newContext({ javaScriptEnabled: javascript, bypassCSP: true, viewport: WIDTHS.desktop });
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  const p = { name, email: `${name.toLowerCase()}-${run}@example.com`, context, page, errors, javascript };
  people.push(p);
  return p;
}

/** Checks the page: axe (serious and critical fail), console errors, no sideways scrolling,
 *  screenshots at both widths. */
async function check(p, label) {
  const page = p.page;
  if (p.errors.length) {
    fail(`${label}: console errors: ${p.errors.join(" | ")}`);
    p.errors.length = 0;
  }
  if (p.javascript) {
    await page.addScriptTag({ content: AXE });
    const result = await page.evaluate(async () =>
      // eslint-disable-next-line no-undef
      await axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] } }));
    for (const v of result.violations.filter((v) => v.impact === "serious" || v.impact === "critical")) {
      fail(`${label}: axe ${v.impact} ${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
    }
  }
  if (!checked.has(label)) {
    checked.add(label);
    for (const [width, size] of Object.entries(WIDTHS)) {
      await page.setViewportSize(size);
      const wide = await page.evaluate(() => document.documentElement.scrollWidth);
      if (wide > size.width) fail(`${label}: ${wide} px wide at ${width} width (${size.width} px): it scrolls sideways`);
      await page.screenshot({ path: join(SHOTS, `${label}-${width}.png`), fullPage: true });
    }
    await page.setViewportSize(WIDTHS.desktop);
  }
}

/** A PNG of `w`×`h`: a gradient, with a transparent band (made here: no file to ship). */
function png(w, h) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, "ascii");
    data.copy(out, 8);
    out.writeUInt32BE(crc(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(w, 0);
  header.writeUInt32BE(h, 4);
  header[8] = 8; // bit depth
  header[9] = 6; // RGBA
  const rows = Buffer.alloc((w * 4 + 1) * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const at = y * (w * 4 + 1) + 1 + x * 4;
      rows[at] = (x * 255) / w;
      rows[at + 1] = 90;
      rows[at + 2] = (y * 255) / h;
      rows[at + 3] = y < h / 10 ? 0 : 255;
    }
  }
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([signature, chunk("IHDR", header), chunk("IDAT", deflateSync(rows)), chunk("IEND", Buffer.alloc(0))]);
}

/** A mail to `to` whose decoded text has `needle` and (case-insensitively) `kind`, decoded;
 *  waits up to 15 s. */
async function mailTo(to, needle, kind) {
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    let files = [];
    try { files = readdirSync(MAIL_DIR).filter((f) => f.endsWith(".eml")); } catch { /* not yet */ }
    for (const f of files) {
      const raw = readFileSync(join(MAIL_DIR, f), "utf8");
      const text = raw.replace(/=\r?\n/g, "").replace(/=([0-9A-F]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16)));
      if (text.includes(`To: ${to}`) && text.includes(needle) && text.toLowerCase().includes(kind)) return text;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no ${kind} mail to ${to} about ${needle}`);
}

/** The latest mail to `to` that has a link to `path`, decoded; waits up to 15 s. */
async function link(to, path, atLeast = 1) {
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    let files = [];
    try { files = readdirSync(MAIL_DIR).filter((f) => f.endsWith(".eml")); } catch { /* not yet */ }
    // Newest first (the transport names files at random).
    const found = [];
    for (const f of files) {
      const raw = readFileSync(join(MAIL_DIR, f), "utf8");
      const text = raw.replace(/=\r?\n/g, "").replace(/=([0-9A-F]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16)));
      if (!text.includes(`To: ${to}`)) continue;
      const m = text.match(new RegExp(`https?://[^\\s"<>]+${path}\\?token=[A-Za-z0-9_-]+`));
      if (m) found.push([statSync(join(MAIL_DIR, f)).mtimeMs, new URL(m[0]).pathname + new URL(m[0]).search]);
    }
    if (found.length >= atLeast) return found.sort((a, b) => b[0] - a[0])[0][1];
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no ${atLeast} mail(s) to ${to} with a ${path} link`);
}

/** Parses an iCalendar text with ical.js after checking RFC 5545's line rules; registers its
 *  time zones so times convert with them. */
function parseCalendar(text, label) {
  expect(text.startsWith("BEGIN:VCALENDAR\r\n") && text.endsWith("END:VCALENDAR\r\n"), `${label}: not a calendar`);
  for (const line of text.split("\r\n")) {
    expect(Buffer.byteLength(line, "utf8") <= 75, `${label}: a line of ${Buffer.byteLength(line, "utf8")} octets`);
    expect(!line.includes("\n"), `${label}: a bare LF`);
  }
  const cal = new ICAL.Component(ICAL.parse(text));
  for (const tz of cal.getAllSubcomponents("vtimezone")) {
    ICAL.TimezoneService.register(tz);
  }
  return cal;
}

/** The calendar at `url` (absolute) read without the browser's cookies. */
async function fetchCalendar(url, label) {
  const res = await fetch(url);
  expect(res.status === 200, `${label}: ${url} answered ${res.status}`);
  expect((res.headers.get("content-type") || "").startsWith("text/calendar"), `${label}: content type ${res.headers.get("content-type")}`);
  return parseCalendar(await res.text(), label);
}

async function signUpAndLogIn(p, shots) {
  const page = p.page;
  await page.goto(`${BASE}/signup`);
  if (shots) await check(p, "signup");
  await page.getByLabel("Your name").fill(p.name);
  await page.getByLabel("E-mail address").fill(p.email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Create my account" }).click();
  // Signed in at once, asked to confirm the address.
  await page.waitForURL(/\/\?notice=registered/);
  expect(await signedInAs(p), `${p.name} is signed in after signing up`);
  const banner = page.locator(".confirm-banner");
  expect((await banner.textContent()).includes(p.email), "the banner names the address to confirm");
  let mails = 1;
  if (shots) {
    await check(p, "unconfirmed");
    // The create form waits for a confirmed address; a new link replaces the first.
    expect(await page.getByRole("link", { name: "Create an event" }).count() === 0, "no create link yet");
    await page.goto(`${BASE}/my/events/new`);
    await page.waitForURL(/\/verify-email\?notice=confirm_first/);
    await page.getByRole("button", { name: "Send me a new link" }).click();
    await page.getByText("A new link is on its way").waitFor();
    mails = 2;
  }
  await page.goto(`${BASE}${await link(p.email, "/verify-email", mails)}`);
  if (shots) await check(p, "verify-email");
  await page.getByRole("button", { name: "Confirm my address" }).click();
  await page.waitForURL(/\/\?notice=verified/);
  expect(await banner.count() === 0, "no banner once the address is confirmed");
  expect(await signedInAs(p), `${p.name} stays signed in`);
  if (shots) {
    await page.getByRole("button", { name: "Log out" }).click();
    await page.waitForURL(/notice=signed_out/);
    await page.goto(`${BASE}/login`);
    await check(p, "login");
    await logIn(p);
  }
}

async function logIn(p, password = PASSWORD) {
  const page = p.page;
  if (!page.url().includes("/login")) await page.goto(`${BASE}/login`);
  await page.getByLabel("E-mail address").fill(p.email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(/notice=signed_in/);
  expect(await signedInAs(p), `${p.name} is shown signed in`);
}

async function signedInAs(p) {
  return ((await p.page.locator(".who").textContent()) || "").startsWith(p.name);
}

async function step(name, body) {
  try {
    await body();
    console.log(`ok   ${name}`);
  } catch (e) {
    fail(`${name}: ${e.message}`);
    for (const p of people) {
      await p.page.screenshot({ path: join(SHOTS, `failed-${p.name}.png`), fullPage: true }).catch(() => {});
    }
    throw e;
  }
}

let eventUrl;
try {
  const olive = await person("Olive");
  const bea = await person("Bea", { javascript: false });
  const cal = await person("Cal");
  const mo = await person("Mo");
  const ada = await person("Ada");
  ada.email = ADMIN_EMAIL;

  await step("an anonymous visitor sees the events list and a 404 page", async () => {
    await olive.page.goto(`${BASE}/`);
    await olive.page.getByRole("heading", { name: "Events", level: 1 }).waitFor();
    await check(olive, "events-empty");
    const missing = await olive.page.goto(`${BASE}/no-such-page`);
    expect(missing.status() === 404, `404 page answers 404, got ${missing.status()}`);
    olive.errors.length = 0; // the browser logs the page's own 404
    await check(olive, "not-found");
  });

  await step("the site works from the keyboard, with focus always visible", async () => {
    const page = olive.page;
    await page.goto(`${BASE}/`);
    const focused = () => page.evaluate(() => {
      const e = document.activeElement;
      const style = getComputedStyle(e);
      return { id: e.id, text: (e.textContent || "").trim(), outline: style.outlineStyle, width: style.outlineWidth };
    });
    await page.keyboard.press("Tab");
    let f = await focused();
    expect(f.text === "Skip to content", `the first Tab reaches the skip link, got "${f.text}"`);
    expect(f.outline !== "none" && f.width !== "0px", `focus on the skip link is visible (${f.outline} ${f.width})`);
    await page.keyboard.press("Enter");
    await page.keyboard.press("Tab");
    f = await focused();
    expect(f.text === "Upcoming", `after the skip link, Tab reaches the feed tabs, got "${f.id || f.text}"`);
    expect(f.outline !== "none" && f.width !== "0px", "focus on a tab is visible");
    // Latest and Trending (For you is for a signed-in viewer), then the search.
    for (let i = 0; i < 3; i++) await page.keyboard.press("Tab");
    f = await focused();
    expect(f.id === "q", `after the tabs, Tab reaches the search field, got "${f.id || f.text}"`);
    expect(f.outline !== "none" && f.width !== "0px", "focus on the search field is visible");
    await page.keyboard.type("jazz");
    await page.keyboard.press("Enter");
    await page.waitForURL(/\?q=jazz/);
  });

  await step("the organizer signs up, confirms the address and logs in", () => signUpAndLogIn(olive, true));

  await step("the organizer creates a one-seat event and publishes it", async () => {
    const page = olive.page;
    await page.goto(`${BASE}/my/events`);
    await check(olive, "my-events-empty");
    await page.getByRole("link", { name: "Create an event" }).click();
    await check(olive, "event-new");
    await page.getByLabel("Title").fill(`Rooftop jazz ${run}`);
    await page.getByLabel("City").fill("Lisbon");
    await page.getByLabel("Category").selectOption("music");
    await page.getByLabel("Venue").fill("Terraço 7");
    await page.getByLabel(/Time zone/).fill("Europe/Lisbon");
    await page.getByLabel(/Starts/).fill("2031-06-20T21:00");
    await page.getByLabel("Ends").fill("2031-06-20T23:30");
    await page.getByLabel(/Seats/).fill("1");
    await page.getByLabel("Description").fill("Live trio on the roof.\n\nBring a jacket.");
    await page.getByRole("button", { name: "Save as draft" }).click();
    await page.waitForURL(/\/my\/events\/[0-9a-f-]+\?notice=created/);
    await check(olive, "manage-draft");
    await page.getByRole("button", { name: "Publish" }).click();
    await page.waitForURL(/notice=published/);
    await check(olive, "manage-published");
    await page.getByRole("link", { name: "View the public page" }).click();
    eventUrl = page.url();
    await page.getByText("1 of 1 seats free").waitFor();
    await check(olive, "event-organizer");
  });

  await step("the event page shows the venue's clock, a map, share tags and a calendar file", async () => {
    const page = olive.page;
    await page.goto(eventUrl);
    await page.getByText("Fri 20 Jun 2031, 21:00–23:30 (Europe/Lisbon)").waitFor();
    const map = await page.getByRole("link", { name: /^Map/ }).getAttribute("href");
    expect(map === "https://www.openstreetmap.org/search?query=Terra%C3%A7o+7%2C+Lisbon", `map link ${map}`);
    const og = await page.locator('meta[property="og:title"]').getAttribute("content");
    expect(og === `Rooftop jazz ${run}`, `og:title ${og}`);
    const ogUrl = await page.locator('meta[property="og:url"]').getAttribute("content");
    expect(ogUrl === eventUrl, `og:url ${ogUrl} is the page ${eventUrl}`);
    expect(await page.locator('meta[name="twitter:card"]').getAttribute("content") === "summary", "twitter card");
    const google = await page.getByRole("link", { name: "Google Calendar" }).getAttribute("href");
    expect(google.includes("dates=20310620T200000Z%2F20310620T223000Z"), `Google link ${google}`);
    expect(await page.locator("a[data-copy]").getAttribute("href") === eventUrl, "the share link is the page");
    const download = page.waitForEvent("download");
    await page.getByRole("link", { name: "Add to your calendar (.ics)" }).click();
    const file = await (await download).path();
    const cal = parseCalendar(readFileSync(file, "utf8"), "event .ics");
    expect(cal.getFirstPropertyValue("method") === "PUBLISH", "METHOD:PUBLISH");
    const ev = new ICAL.Event(cal.getFirstSubcomponent("vevent"));
    expect(ev.summary === `Rooftop jazz ${run}`, `SUMMARY ${ev.summary}`);
    expect(ev.startDate.zone.tzid === "Europe/Lisbon", `DTSTART in ${ev.startDate.zone.tzid}`);
    expect(ev.startDate.toJSDate().toISOString() === "2031-06-20T20:00:00.000Z", `start ${ev.startDate.toJSDate().toISOString()}`);
    expect(ev.endDate.toJSDate().toISOString() === "2031-06-20T22:30:00.000Z", `end ${ev.endDate.toJSDate().toISOString()}`);
    expect(ev.location === "Terraço 7, Lisbon", `LOCATION ${ev.location}`);
    expect(ev.uid === `${eventUrl.split("/").pop()}@cityevents`, `UID ${ev.uid}`);
  });

  await step("people find events by category, by a city typed in part, and on a phone's first screen", async () => {
    const page = olive.page;
    await page.goto(`${BASE}/`);
    await page.getByRole("link", { name: "Browse by category" }).click();
    await check(olive, "categories");
    await page.getByRole("link", { name: "Music", exact: true }).click();
    await page.getByRole("heading", { name: "Music", level: 1 }).waitFor();
    await page.getByRole("link", { name: `Rooftop jazz ${run}` }).waitFor();
    await page.goto(`${BASE}/categories/sport`);
    expect(await page.getByRole("link", { name: `Rooftop jazz ${run}` }).count() === 0, "not in another category");
    // "lisb": the only city it starts, whatever the case.
    await page.goto(`${BASE}/?city=lisb`);
    expect(await page.locator("#city").inputValue() === "Lisbon", `the city read as ${await page.locator("#city").inputValue()}`);
    await page.getByRole("link", { name: `Rooftop jazz ${run}` }).waitFor();
    // At phone width the first event shows without scrolling.
    await page.setViewportSize(WIDTHS.phone);
    await page.goto(`${BASE}/`);
    const top = await page.locator(".card").first().evaluate((e) => e.getBoundingClientRect().top);
    expect(top < WIDTHS.phone.height - 100, `the first event starts ${top} px down a ${WIDTHS.phone.height} px screen`);
    await page.setViewportSize(WIDTHS.desktop);
  });

  await step("the organizer uploads a cover; it shows in the list and on the event page, phone and desktop", async () => {
    const page = olive.page;
    const manage = eventUrl.replace("/events/", "/my/events/");
    await page.goto(manage);
    // Not a picture, whatever its name says: refused with a message on the page.
    await page.getByLabel(/^Picture/).setInputFiles({ name: "cover.jpg", mimeType: "image/jpeg", buffer: Buffer.from("not a picture") });
    await page.getByRole("button", { name: "Upload" }).click();
    await page.getByRole("alert").filter({ hasText: /not a JPEG, PNG or WebP/ }).waitFor();
    olive.errors.length = 0; // the browser logs the page's own 400
    await page.getByLabel(/^Picture/).setInputFiles({ name: "roof.png", mimeType: "image/png", buffer: png(1200, 900) });
    await page.getByRole("button", { name: "Upload" }).click();
    await page.waitForURL(/notice=cover_saved/);
    await page.getByRole("img", { name: "The current cover picture" }).waitFor();
    await check(olive, "manage-cover");
    for (const [width, size] of Object.entries(WIDTHS)) {
      await page.setViewportSize(size);
      await page.goto(`${BASE}/?city=Lisbon`);
      const card = page.locator(".card", { has: page.getByRole("link", { name: `Rooftop jazz ${run}` }) });
      const img = card.locator("img.cover");
      await img.waitFor();
      const shown = await img.evaluate(async (i) => { await i.decode(); return { natural: i.naturalWidth, w: i.getBoundingClientRect().width, h: i.getBoundingClientRect().height }; });
      expect(shown.natural === 640, `${width}: the list's picture is the 640 px card (${shown.natural})`);
      expect(shown.w <= size.width && Math.abs(shown.w / shown.h - 16 / 9) < 0.02, `${width}: the card's picture fits at 16:9 (${shown.w}×${shown.h})`);
      await page.goto(eventUrl);
      const wide = page.locator("article.event img.cover");
      const big = await wide.evaluate(async (i) => { await i.decode(); return { natural: i.naturalWidth, w: i.getBoundingClientRect().width }; });
      expect(big.natural === 1280 && big.w <= size.width, `${width}: the event's picture is the 1280 px one and fits (${big.w} px)`);
      const cache = (await page.request.get(`${BASE}${await wide.getAttribute("src")}`)).headers()["cache-control"];
      expect(cache === "public, max-age=31536000, immutable", `the picture is cached for good: ${cache}`);
    }
    await page.setViewportSize(WIDTHS.desktop);
    const ogImage = await page.locator('meta[property="og:image"]').getAttribute("content");
    expect(ogImage && ogImage.startsWith(BASE) && ogImage.endsWith("/wide.jpg"), `og:image ${ogImage}`);
    expect(await page.locator('meta[name="twitter:card"]').getAttribute("content") === "summary_large_image", "large card with a picture");
    await check(olive, "event-cover");
  });

  await step("a second person, without JavaScript, signs up, finds the event and joins", async () => {
    await signUpAndLogIn(bea, false);
    // The organizer keeps the event's page open: its seat count changes live.
    await olive.page.goto(eventUrl);
    await olive.page.getByText("1 of 1 seats free").waitFor();
    const page = bea.page;
    await page.goto(`${BASE}/?q=${encodeURIComponent(`jazz`)}&city=Lisbon`);
    await page.getByRole("link", { name: `Rooftop jazz ${run}` }).click();
    await page.getByRole("button", { name: "Join", exact: true }).click();
    await page.waitForURL(/notice=joined/);
    await page.getByText("You are going.").waitFor();
    await olive.page.getByText("Full · join the waitlist").waitFor({ timeout: 10000 });
    expect(!olive.page.url().includes("notice="), "the organizer's page was not reloaded");
  });

  await step("a third person joins the waitlist", async () => {
    await signUpAndLogIn(cal, false);
    const page = cal.page;
    await page.goto(`${BASE}/?q=jazz`);
    await check(cal, "events");
    await page.goto(eventUrl);
    await page.getByText("Full · join the waitlist").waitFor();
    await check(cal, "event-full");
    await page.getByRole("button", { name: "Join the waitlist" }).click();
    await page.waitForURL(/notice=waitlisted/);
    await page.getByText("You are on the waitlist, number 1.").waitFor();
    await check(cal, "event-waitlisted");
    await page.goto(`${BASE}/my/joins`);
    await page.getByText("On the waitlist").waitFor();
    await check(cal, "my-joins");
  });

  await step("the second person leaves; the third is promoted and notified", async () => {
    // The waitlisted person keeps the page open: their place and unread count change live.
    const page = cal.page;
    await page.goto(eventUrl);
    await page.getByText("You are on the waitlist, number 1.").waitFor();
    await bea.page.goto(eventUrl);
    await bea.page.getByRole("button", { name: "Leave this event" }).click();
    await bea.page.waitForURL(/notice=left/);
    await page.locator("[data-live-place]").getByText("You are going.").waitFor({ timeout: 20000 });
    await page.locator("[data-live-unread]:not([hidden])").waitFor({ timeout: 20000 });
    const deadline = Date.now() + 20000;
    await check(cal, "event-going");
    for (;;) {
      await page.goto(`${BASE}/notifications`);
      if (await page.locator(".note.unread").count() > 0) break;
      expect(Date.now() < deadline, "no notification within 20 s");
      await page.waitForTimeout(300);
    }
    expect(await page.locator(".badge").isVisible(), "the unread badge shows");
    await check(cal, "notifications");
    await page.getByRole("button", { name: "Mark all as read" }).click();
    await page.waitForURL(/notice=read/);
    expect(await page.locator(".note.unread").count() === 0, "all read");
  });

  let feedUrl;
  await step("the promoted person subscribes to their calendar feed", async () => {
    const page = cal.page;
    await page.goto(`${BASE}/my/joins`);
    await page.getByRole("link", { name: /in your calendar application/ }).click();
    await page.getByText("You have no calendar address.").waitFor();
    await page.getByRole("button", { name: "Make my calendar address" }).click();
    feedUrl = await page.locator("a[data-copy]").getAttribute("href");
    expect(/^http:\/\/[^/]+\/api\/v1\/calendars\/[A-Za-z0-9_-]{43}\/events\.ics$/.test(feedUrl), `feed address ${feedUrl}`);
    await check(cal, "calendar-feed");
    const feed = await fetchCalendar(feedUrl, "feed");
    expect(feed.getFirstPropertyValue("method") === null, "a feed has no METHOD");
    const events = feed.getAllSubcomponents("vevent").map((v) => new ICAL.Event(v));
    expect(events.length === 1, `one event in the feed, got ${events.length}`);
    expect(events[0].summary === `Rooftop jazz ${run}`, `feed SUMMARY ${events[0].summary}`);
    expect(events[0].component.getFirstPropertyValue("status") === "CONFIRMED", "the seat is CONFIRMED");
    // The address is shown once: the page does not give it again.
    await page.goto(`${BASE}/account/calendar`);
    expect(await page.locator("a[data-copy]").count() === 0, "the address is shown only once");
  });

  await step("the organizer sees the participant and edits the event", async () => {
    const page = olive.page;
    await page.goto(eventUrl.replace("/events/", "/my/events/"));
    await page.getByRole("cell", { name: "Cal", exact: true }).waitFor();
    await check(olive, "manage-participants");
    await page.getByRole("link", { name: "Edit" }).click();
    await check(olive, "event-edit");
    await page.getByLabel("Venue").fill("Terraço 9");
    await page.getByLabel(/Online join link/).fill("https://meet.example.com/rooftop");
    await page.getByRole("button", { name: "Save changes" }).click();
    await page.waitForURL(/notice=saved/);
    await page.goto(eventUrl);
    await page.getByText("Terraço 9, Lisbon · also online").first().waitFor();
    // The seat holder sees the join link; the person who left is told where it will be.
    await cal.page.goto(eventUrl);
    const join = cal.page.getByRole("link", { name: /^https:\/\/meet\.example\.com\/rooftop/ });
    await join.waitFor();
    expect((await join.getAttribute("rel")).includes("noopener"), "the join link opens no window handle");
    await bea.page.goto(eventUrl);
    await bea.page.getByText("the join link shows here once you hold a seat").waitFor();
    expect(await bea.page.getByText("meet.example.com").count() === 0, "no link without a seat");
  });

  await step("the organizer writes a bio; a person follows them from the event page", async () => {
    const page = olive.page;
    await page.goto(`${BASE}/account`);
    await page.getByLabel("About you").fill("Jazz on rooftops since 2019.");
    await page.getByLabel("Your city").fill("Lisbon");
    await page.getByRole("button", { name: "Save my profile" }).click();
    await page.waitForURL(/notice=profile_saved/);
    await page.getByLabel(/^Your picture/).setInputFiles({ name: "me.png", mimeType: "image/png", buffer: png(600, 800) });
    await page.getByRole("button", { name: "Upload the picture" }).click();
    await page.waitForURL(/notice=avatar_saved/);
    await page.getByRole("img", { name: "Your picture" }).waitFor();
    await check(olive, "account-avatar");
    await page.goto(`${BASE}/`);
    await page.getByRole("link", { name: "Near me (Lisbon)" }).click();
    await page.waitForURL(/city=Lisbon/);
    await page.getByRole("link", { name: `Rooftop jazz ${run}` }).waitFor();
    const b = bea.page;
    await b.goto(eventUrl);
    expect(await b.locator("dd.host img.avatar").count() === 1, "the event page shows its organizer's picture");
    await b.getByRole("link", { name: "Olive", exact: true }).click();
    await b.getByRole("heading", { name: "Olive", level: 1 }).waitFor();
    await b.getByText("Jazz on rooftops since 2019.").waitFor();
    const avatar = await b.locator("article.organizer img.avatar").evaluate(async (i) => { await i.decode(); return { natural: i.naturalWidth, w: i.getBoundingClientRect().width, h: i.getBoundingClientRect().height }; });
    expect(avatar.natural === 400 && avatar.w === avatar.h, `the organizer's picture: the 400 px square, shown square (${JSON.stringify(avatar)})`);
    expect((await b.locator('meta[property="og:image"]').getAttribute("content")).endsWith("/large.jpg"), "og:image of the organizer page");
    await b.getByRole("button", { name: /^Follow/ }).click();
    await b.waitForURL(/notice=followed/);
    await b.getByText("1 follower").waitFor();
    expect(await b.getByRole("button", { name: /^Unfollow/ }).isVisible(), "the page offers to unfollow");
    await cal.page.goto(b.url().split("?")[0]);
    await check(cal, "organizer");
  });

  await step("the feed tabs: latest, trending (the event was viewed), and the person's own", async () => {
    const b = bea.page;
    await b.goto(`${BASE}/`);
    await b.getByRole("navigation", { name: "Feeds" }).getByRole("link", { name: "Latest" }).click();
    await b.waitForURL(/\/feed\/latest$/);
    await b.getByRole("link", { name: `Rooftop jazz ${run}` }).waitFor();
    expect((await b.getByRole("link", { name: "Latest" }).getAttribute("aria-current")) === "page", "the tab is marked");
    // Views reach the events service in batches every 5 s.
    const deadline = Date.now() + 20000;
    for (;;) {
      await b.goto(`${BASE}/feed/trending`);
      if ((await b.getByRole("link", { name: `Rooftop jazz ${run}` }).count()) > 0) break;
      expect(Date.now() < deadline, "the viewed event never trended");
      await b.waitForTimeout(1000);
    }
    await check(bea, "feed-trending");
    await b.getByRole("link", { name: "For you" }).click();
    await b.getByRole("heading", { name: "For you", level: 1 }).waitFor();
    await b.getByText("From organizers you follow").waitFor();
  });

  await step("cutting seats below those taken warns first and bumps nobody", async () => {
    const page = olive.page;
    await page.goto(`${BASE}/my/events/new`);
    await page.getByLabel("Title").fill(`Sunset yoga ${run}`);
    await page.getByLabel("City").fill("Lisbon");
    await page.getByLabel("Category").selectOption("sport");
    await page.getByLabel(/Time zone/).fill("Europe/Lisbon");
    await page.getByLabel(/Starts/).fill("2031-07-01T19:00");
    await page.getByLabel("Ends").fill("2031-07-01T20:00");
    await page.getByLabel(/Seats/).fill("3");
    await page.getByRole("button", { name: "Save as draft" }).click();
    await page.waitForURL(/notice=created/);
    const manage = page.url().split("?")[0];
    await page.getByRole("button", { name: "Publish" }).click();
    await page.waitForURL(/notice=published/);
    const yoga = manage.replace("/my/events/", "/events/");
    for (const p of [bea, cal]) {
      await p.page.goto(yoga);
      await p.page.getByRole("button", { name: "Join", exact: true }).click();
      await p.page.waitForURL(/notice=joined/);
    }
    await page.goto(`${manage}/edit`);
    await page.getByLabel(/Seats/).fill("1");
    await page.getByRole("button", { name: "Save changes" }).click();
    await page.locator("#capacity-cut").waitFor();
    const warning = await page.locator("#capacity-cut").textContent();
    expect(warning.includes("2 people already hold a seat, 1 person more than the 1 seat you set"), `warning: ${warning}`);
    olive.errors.length = 0; // the browser logs the warning page's own 409
    await check(olive, "capacity-cut");
    await page.getByRole("button", { name: "Save with fewer seats" }).click();
    await page.waitForURL(/notice=seats_cut/);
    await page.getByText("everyone keeps their seat").waitFor();
    for (const p of [bea, cal]) {
      await p.page.goto(yoga);
      await p.page.getByText("You are going.").waitFor();
    }
    // The follower heard of the new event.
    const deadline = Date.now() + 20000;
    for (;;) {
      await bea.page.goto(`${BASE}/notifications`);
      if (await bea.page.getByText(`New from Olive: Sunset yoga ${run}, 2031-07-01 19:00 (Europe/Lisbon)`).count() > 0) break;
      expect(Date.now() < deadline, "the follower got no notice of the new event within 20 s");
      await bea.page.waitForTimeout(300);
    }
  });

  await step("an admin finds an account and makes it a moderator", async () => {
    await signUpAndLogIn(mo, false);
    // Mo is signed in and browsing when the role changes.
    await mo.page.goto(eventUrl);
    await mo.page.getByRole("button", { name: "Log out" }).waitFor();
    const page = ada.page;
    await logIn(ada);
    await page.getByRole("link", { name: "Accounts" }).click();
    await check(ada, "admin-users");
    await page.getByLabel("Name or exact e-mail address").fill(mo.email);
    await page.getByRole("button", { name: "Find" }).click();
    await page.getByLabel("Role of Mo").selectOption("moderator");
    await page.getByRole("button", { name: "Change role" }).click();
    await page.waitForURL(/notice=role_changed/);
    expect(await page.getByLabel("Role of Mo").inputValue() === "moderator", "Mo is a moderator");
    const notAdmin = await cal.page.goto(`${BASE}/admin/users`);
    expect(notAdmin.status() === 403, `a member sees the accounts page: ${notAdmin.status()}`);
    cal.errors.length = 0; // the browser logs the page's own 403
  });

  await step("the moderator cancels the event with a reason; the participant is told", async () => {
    const page = mo.page;
    // The role applies to the session Mo has open: once the services refuse its old access
    // token, the next page refreshes it (never a redirect loop) and shows the moderator's link.
    const promoted = Date.now() + 20000;
    for (;;) {
      const shown = await page.goto(eventUrl);
      expect(shown.status() === 200 && page.url() === eventUrl, `the event page after the role change: ${shown.status()} ${page.url()}`);
      if (await page.getByRole("link", { name: "Moderate this event" }).count() > 0) break;
      expect(Date.now() < promoted, "the signed-in member did not get the moderator's powers within 20 s");
      await page.waitForTimeout(300);
    }
    await page.getByRole("button", { name: "Log out" }).waitFor();
    await page.getByRole("link", { name: "Moderate this event" }).click();
    await page.getByRole("heading", { name: /^Moderate/ }).waitFor();
    await check(mo, "moderate-event");
    await page.locator("#reason").fill("Breaks the venue's safety rules");
    await page.getByRole("button", { name: "Cancel the event" }).click();
    // A second page says what canceling does before anything happens.
    await page.getByRole("heading", { name: /^Cancel “Rooftop jazz/ }).waitFor();
    await page.getByText("Canceling is final").waitFor();
    await check(mo, "confirm-cancel");
    await page.getByRole("button", { name: "Yes, cancel the event" }).click();
    await page.waitForURL(/notice=canceled/);
    await cal.page.goto(eventUrl);
    await cal.page.getByText("Reason: Breaks the venue's safety rules").waitFor();
    await cal.page.getByText("This event is canceled: there is nothing to join.").waitFor();
    expect(await cal.page.getByRole("button", { name: /^(Join|Leave)/ }).count() === 0, "nothing to join or leave");
    await check(cal, "event-canceled");
    const ics = parseCalendar(await (await cal.page.request.get(`${eventUrl}/calendar.ics`)).text(), "canceled .ics");
    expect(ics.getFirstPropertyValue("method") === "CANCEL", "a canceled event's file is METHOD:CANCEL");
    expect(ics.getFirstSubcomponent("vevent").getFirstPropertyValue("status") === "CANCELLED", "STATUS:CANCELLED");
    await olive.page.goto(eventUrl.replace("/events/", "/my/events/"));
    await olive.page.getByText("Reason: Breaks the venue's safety rules").waitFor();
    const deadline = Date.now() + 20000;
    for (;;) {
      await cal.page.goto(`${BASE}/notifications`);
      if (await cal.page.getByText(`Rooftop jazz ${run} was canceled`).count() > 0) break;
      expect(Date.now() < deadline, "no cancellation notification within 20 s");
      await cal.page.waitForTimeout(300);
    }
  });

  await step("a person reports the organizer; a moderator dismisses it from the queue; the reporter is told", async () => {
    const b = bea.page;
    await b.goto(eventUrl);
    await b.getByRole("link", { name: "Olive", exact: true }).click();
    await b.getByRole("link", { name: "Report Olive" }).click();
    await b.getByRole("heading", { name: "Report to the moderators" }).waitFor();
    await check(bea, "report");
    await b.getByLabel("Spam or advertising").check();
    await b.getByLabel("What should the moderators know?").fill("Posts the same event every day.");
    await b.getByRole("button", { name: "Send the report" }).click();
    await b.waitForURL(/notice=reported/);
    const m = mo.page;
    await m.goto(`${BASE}/`);
    await m.getByRole("link", { name: "Reports" }).click();
    await m.getByRole("heading", { name: "Reports", level: 1 }).waitFor();
    const item = m.locator("section.report", { hasText: "Posts the same event every day." });
    await item.getByRole("link", { name: "Olive" }).waitFor();
    await check(mo, "reports-queue");
    await item.getByLabel("Reason").fill("Not against the rules: one event a week");
    await item.getByRole("button", { name: "Dismiss" }).click();
    await m.waitForURL(/notice=report_resolved/);
    expect(await m.locator("section.report", { hasText: "Posts the same event every day." }).count() === 0, "the report left the queue");
    const deadline = Date.now() + 20000;
    for (;;) {
      await b.goto(`${BASE}/notifications`);
      if (await b.getByText("Your report about an account was reviewed").count() > 0) break;
      expect(Date.now() < deadline, "the reporter was not told within 20 s");
      await b.waitForTimeout(300);
    }
  });

  await step("an admin logs a member out everywhere without a ban, and bans only after confirming", async () => {
    const page = ada.page;
    await page.goto(`${BASE}/admin/users?q=${encodeURIComponent(mo.email)}`);
    await page.getByRole("button", { name: "Log Mo out everywhere" }).click();
    await page.waitForURL(/notice=account_signed_out/);
    // Mo's next page is signed out (the refresh token is revoked); Mo may log in again.
    const deadline = Date.now() + 20000;
    for (;;) {
      await mo.page.goto(`${BASE}/`);
      if (await mo.page.getByRole("link", { name: "Log in" }).count() > 0) break;
      expect(Date.now() < deadline, "Mo was still signed in 20 s after the admin ended the sessions");
      await mo.page.waitForTimeout(300);
    }
    await logIn(mo);
    // A ban asks first, then is lifted.
    await page.getByLabel("Reason to ban Mo").fill("Testing the confirmation");
    await page.getByRole("button", { name: "Ban", exact: true }).click();
    await page.getByRole("heading", { name: "Ban Mo?" }).waitFor();
    await check(ada, "confirm-ban");
    await page.getByRole("link", { name: "No, go back" }).click();
    await page.waitForURL(/\/admin\/users/);
    expect(await page.getByRole("button", { name: "Lift the ban on Mo" }).count() === 0, "going back bans nobody");
  });

  await step("the calendar feed shows the cancellation, then is turned off", async () => {
    const feed = await fetchCalendar(feedUrl, "feed after the cancellation");
    const vevent = feed.getFirstSubcomponent("vevent");
    expect(vevent && vevent.getFirstPropertyValue("status") === "CANCELLED", "the feed marks the event CANCELLED");
    expect(vevent.getFirstPropertyValue("sequence") > 1, "SEQUENCE grew with the changes");
    const page = cal.page;
    await page.goto(`${BASE}/account/calendar`);
    await page.getByRole("button", { name: "Turn the feed off" }).click();
    await page.waitForURL(/notice=feed_revoked/);
    const gone = await fetch(feedUrl);
    expect(gone.status === 404, `a revoked feed answers ${gone.status}`);
  });

  await step("a person changes their password and mail settings", async () => {
    const page = cal.page;
    await page.getByRole("link", { name: /^Cal/ }).click();
    await page.getByRole("heading", { name: "Your account", level: 1 }).waitFor();
    await check(cal, "account");
    await page.getByLabel("Current password").fill("not my password at all");
    await page.getByLabel("New password").fill(`${PASSWORD} again`);
    await page.getByRole("button", { name: "Change my password" }).click();
    await page.locator("#current_password-error").waitFor();
    cal.errors.length = 0; // the browser logs the form page's own 400
    await page.getByLabel("Current password").fill(PASSWORD);
    await page.getByLabel("New password").fill(`${PASSWORD} again`);
    await page.getByRole("button", { name: "Change my password" }).click();
    await page.waitForURL(/notice=password_changed/);
    expect(await signedInAs(cal), "still signed in after changing the password");
    await page.getByRole("link", { name: "Choose which mails you get" }).click();
    await check(cal, "mail-settings");
    await page.getByLabel("An event I joined is canceled").uncheck();
    await page.getByRole("button", { name: "Save" }).click();
    await page.waitForURL(/notice=saved/);
    expect(!(await page.getByLabel("An event I joined is canceled").isChecked()), "the choice is kept");
    expect(await page.getByLabel("I get a seat from the waitlist").isChecked(), "the others stay on");
  });

  await step("a session logged out from the account page ends on that device only", async () => {
    const phone = await person("Cal");
    phone.email = cal.email;
    await logIn(phone, `${PASSWORD} again`);
    const page = cal.page;
    await page.goto(`${BASE}/account`);
    const rows = page.locator("tbody tr");
    expect(await rows.count() === 2, `two sessions listed, got ${await rows.count()}`);
    // Most recently used first: the phone's sign-in.
    await rows.first().getByRole("button", { name: /^Log out/ }).click();
    await page.waitForURL(/notice=session_ended/);
    await page.getByText("That session is logged out.").waitFor();
    expect(await signedInAs(cal), "this browser stays signed in");
    const deadline = Date.now() + 10000;
    for (;;) {
      await phone.page.goto(`${BASE}/my/joins`);
      if (phone.page.url().includes("/login")) break;
      expect(Date.now() < deadline, "the ended session still shows pages after 10 s");
      await phone.page.waitForTimeout(300);
    }
    await page.goto(`${BASE}/account`);
    expect(await page.locator("tbody tr").count() === 1, "one session left");
  });

  await step("logging out everywhere, without JavaScript, ends every session", async () => {
    const page = bea.page;
    await page.goto(`${BASE}/account`);
    await page.getByRole("button", { name: "Log out everywhere" }).click();
    await page.waitForURL(/notice=signed_out_everywhere/);
    expect(await page.getByRole("link", { name: "Log in" }).isVisible(), "signed out");
  });

  await step("a forgotten password: the link is checked before its form, and works once", async () => {
    const page = bea.page;
    await page.goto(`${BASE}/login`);
    await page.getByRole("link", { name: "Forgot your password?" }).click();
    await page.getByLabel("E-mail address").fill(bea.email);
    await page.getByRole("button", { name: "Send me a link" }).click();
    await page.getByText("a link to choose a new password is on its way").waitFor();
    const url = await link(bea.email, "/reset-password");
    await page.goto(`${BASE}${url}`);
    await page.getByLabel("New password").fill(`${PASSWORD} anew`);
    await page.getByRole("button", { name: "Set my new password" }).click();
    await page.waitForURL(/notice=password_reset/);
    await logIn(bea, `${PASSWORD} anew`);
    // The spent link says so at once: no password form to fill in for nothing.
    const again = await page.goto(`${BASE}${url}`);
    expect(again.status() === 400, `a spent link's page answered ${again.status()}`);
    bea.errors.length = 0; // the browser logs the page's own 400
    await page.getByText("This link has expired or was already used").waitFor();
    expect(await page.getByLabel("New password").count() === 0, "no password form for a spent link");
    await check(bea, "reset-spent");
  });

  await step("a person who holds a seat is reminded before the event, in the app and by mail", async () => {
    // An event a little over five hours from now (UTC, to the minute): its person joins before
    // the 5-hour reminder (web.rs sets that lead) is due, and gets it when it is.
    const page = olive.page;
    const local = (t) => new Date(t).toISOString().slice(0, 16);
    const start = Math.ceil((Date.now() + 5 * 3600 * 1000 + 30000) / 60000) * 60000;
    await page.goto(`${BASE}/my/events/new`);
    await page.getByLabel("Title").fill(`Evening fado ${run}`);
    await page.getByLabel("City").fill("Lisbon");
    await page.getByLabel("Category").selectOption("music");
    await page.getByLabel(/Time zone/).fill("UTC");
    await page.getByLabel(/Starts/).fill(local(start));
    await page.getByLabel("Ends").fill(local(start + 2 * 3600 * 1000));
    await page.getByLabel(/Seats/).fill("10");
    await page.getByRole("button", { name: "Save as draft" }).click();
    await page.waitForURL(/notice=created/);
    await page.getByRole("button", { name: "Publish" }).click();
    await page.waitForURL(/notice=published/);
    await page.getByRole("link", { name: "View the public page" }).click();
    const fado = page.url();
    const b = bea.page;
    await b.goto(fado);
    await b.getByRole("button", { name: "Join" }).click();
    await b.waitForURL(/notice=joined/);
    const deadline = start - 5 * 3600 * 1000 + 20000;
    for (;;) {
      await b.goto(`${BASE}/notifications`);
      if (await b.getByText(`Soon: Evening fado ${run} starts in 5 hours`).count() > 0) break;
      expect(Date.now() < deadline, "no reminder within 20 s of its time");
      await b.waitForTimeout(500);
    }
    const mail = await mailTo(bea.email, `Evening fado ${run}`, "starts in");
    expect(mail.includes("When:") && mail.includes(fado.replace(BASE, "")), "the reminder says when and links to the event");
  });

  await step("a person logs in with the company's identity provider; an account with that address is linked with its password", async () => {
    // A new person: the provider's log-in makes the account.
    const dana = await person(`dana${run}`);
    const page = dana.page;
    await page.goto(`${BASE}/login`);
    await page.getByRole("link", { name: "Continue with Corp" }).click();
    await page.getByLabel("Account").fill(`dana${run}`);
    await page.getByRole("button", { name: "Sign in to the test IdP" }).click();
    await page.waitForURL(/\/\?notice=welcome/);
    expect(await signedInAs(dana), "signed in by the provider");
    await page.goto(`${BASE}/account`);
    await check(dana, "account-identities");
    const ways = page.locator("section", { has: page.getByRole("heading", { name: "Ways to log in" }) });
    expect((await ways.textContent()).includes("Corp"), "the provider is listed");
    expect((await ways.textContent()).includes("No password yet"), "no password yet");
    // The organizer already has an account with the address the provider gives: linked only
    // once she types its password.
    const res = await fetch(`${IDP_URL}/__test/accounts`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ login: `olive${run}`, email: olive.email, email_verified: true, name: olive.name }),
    });
    expect(res.status === 204, `the provider took the account: ${res.status}`);
    const again = await person(olive.name);
    again.email = olive.email;
    await again.page.goto(`${BASE}/login`);
    await again.page.getByRole("link", { name: "Continue with Corp" }).click();
    await again.page.getByLabel("Account").fill(`olive${run}`);
    await again.page.getByRole("button", { name: "Sign in to the test IdP" }).click();
    await again.page.getByRole("heading", { name: "Link your Corp log-in" }).waitFor();
    await check(again, "oidc-link");
    await again.page.getByLabel("The account's password").fill(PASSWORD);
    await again.page.getByRole("button", { name: "Link and log in" }).click();
    await again.page.waitForURL(/notice=signed_in/);
    expect(await signedInAs(again), "the organizer is signed in through the provider");
    await again.page.goto(`${BASE}/account`);
    const linked = again.page.locator("section", { has: again.page.getByRole("heading", { name: "Ways to log in" }) });
    expect(await linked.getByRole("button", { name: /^Unlink/ }).count() === 1, "Corp linked, and unlinkable (she has a password)");
  });

  await step("a form without its CSRF token is refused", async () => {
    const res = await cal.page.request.post(`${BASE}/logout`, { form: { csrf: "forged" }, maxRedirects: 0 });
    expect(res.status() === 403, `forged logout answered ${res.status()}`);
    await cal.page.goto(`${BASE}/`);
    expect(await signedInAs(cal), "still signed in");
  });

  await step("logging out ends the session", async () => {
    await olive.page.getByRole("button", { name: "Log out" }).click();
    await olive.page.waitForURL(/notice=signed_out/);
    expect(await olive.page.getByRole("link", { name: "Log in" }).isVisible(), "signed out");
    await check(olive, "signed-out");
  });
} catch (e) {
  if (!failures.length) fail(String(e && e.stack || e));
} finally {
  await browser.close();
}

if (failures.length) {
  console.error(`${failures.length} failure(s)`);
  process.exit(1);
}
console.log(`all journeys passed; screenshots in ${SHOTS}`);
