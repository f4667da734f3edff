/**
 * The dashboard in headless Chromium: live state changes, the drain button, the token prompt.
 * `SLUICE_SCREENSHOT=1` also runs the (slow) step that regenerates docs/dashboard.png.
 */
import assert from "node:assert/strict";
import type { Browser, Page } from "playwright-core";
import { startBackend } from "../backend.ts";
import { type AdminFixture, startAdminFixture, TOKEN } from "./admin_fixture.ts";
import { waitFor } from "./helpers.ts";

const CHROMIUM = "/usr/bin/chromium";
const hasChromium = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();
if (!hasChromium) console.log(`dashboard tests skipped: ${CHROMIUM} is missing`);

// Playwright reads the home directory when imported (the test task grants --allow-sys=homedir)
// and probes /proc/sys/fs/binfmt_misc for WSL, which Deno allows only with --allow-all; its test
// hook variable defers that probe to the `open` helper, which is never used here.
Deno.env.set("__IS_WSL_TEST__", "1");
const { chromium } = hasChromium
  ? await import("playwright-core")
  : { chromium: undefined as never };

async function launch(): Promise<Browser & AsyncDisposable> {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return Object.assign(browser, { [Symbol.asyncDispose]: () => browser.close() });
}

/** Collects page errors so a broken script fails the test instead of timing it out. */
function watchErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  page.on("console", (msg) => {
    if (msg.type() === "error") errors.push(msg.text());
  });
  return errors;
}

/** Polls an element's text until `ok` accepts it (the page updates once a second). */
async function waitForText(page: Page, selector: string, ok: (text: string) => boolean) {
  await waitFor(async () => ok((await page.textContent(selector)) ?? ""), `text of ${selector}`);
}

const row = (id: string, state?: string) =>
  `li.row[data-backend="${id}"]${state ? `[data-state="${state}"]` : ""}`;

async function apiState(f: AdminFixture, id: string) {
  const res = await f.call("GET", `/api/backends/${id}`);
  return res.body as { state: string; drained?: boolean };
}

Deno.test({
  name: "dashboard follows a backend going down and back, and drains one with its button",
  ignore: !hasChromium,
  async fn() {
    await using f = await startAdminFixture({
      token: TOKEN,
      backends: 2,
      config: {
        health: { path: "/health", interval: "200ms", healthyThreshold: 1, unhealthyThreshold: 1 },
      },
    });
    await using browser = await launch();
    const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
    const errors = watchErrors(page);
    await page.goto(`${f.base}/#token=${TOKEN}`);
    await page.waitForSelector(row("a", "up"));
    await page.waitForSelector(row("b", "up"));
    assert.doesNotMatch(page.url(), /token/, "the token leaves the address bar");
    assert.equal(await page.textContent("#conn"), "live");

    // Traffic shows up as requests per second. It keeps coming until the page shows it: on a
    // busy machine the page can catch up later than a single burst stays in the 5 s average.
    await waitFor(async () => {
      await (await fetch(f.tb.url + "/")).text();
      const text = (await page.textContent(`${row("a")} .rps`)) ?? "";
      return text !== "0" && text !== "–";
    }, "requests per second on the page");
    assert.notEqual(await page.textContent("#total-p50"), "–");

    // Stop a: the page shows it down with the reason; restart it on the same port: up again.
    const a = f.backends[0];
    const port = a.port;
    await a.shutdown();
    await page.waitForSelector(row("a", "down"), { timeout: 15_000 });
    assert.notEqual((await page.textContent(`${row("a")} .reason`))?.trim(), "");
    assert.equal(await page.textContent(`${row("a")} .pill`), "Down");
    const revived = await startBackend({ port });
    try {
      await page.waitForSelector(row("a", "up"), { timeout: 15_000 });

      // Drain b with its button: the page and the API agree it is draining, then drained.
      await page.click(`${row("b")} button[data-action="drain"]`);
      await page.waitForSelector(row("b", "draining"));
      await page.waitForSelector(`${row("b")}[data-drained="true"]`);
      assert.match((await page.textContent(`${row("b")} .reason`)) ?? "", /drained/);
      const drained = await apiState(f, "b");
      assert.equal(drained.state, "draining");
      assert.equal(drained.drained, true);
      assert.equal(await page.isVisible(`${row("b")} button[data-action="drain"]`), false);

      // And back: Enable puts it in rotation.
      await page.click(`${row("b")} button[data-action="enable"]`);
      await page.waitForSelector(row("b", "up"));
      assert.equal((await apiState(f, "b")).state, "up");
    } finally {
      await revived.shutdown();
    }
    assert.deepEqual(errors, []);
  },
});

Deno.test({
  name: "dashboard without a configured token is read-only and says so",
  ignore: !hasChromium,
  async fn() {
    await using f = await startAdminFixture({ backends: 1 });
    await using browser = await launch();
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await page.goto(f.base + "/");
    await page.waitForSelector(row("a", "up"));
    assert.equal(await page.isVisible("#readonly"), true);
    assert.equal(await page.isDisabled(`${row("a")} button[data-action="drain"]`), true);
    assert.equal((await apiState(f, "a")).state, "up");
    assert.deepEqual(errors, []);
  },
});

Deno.test({
  name: "dashboard asks for the token when the admin listener requires it for reads",
  ignore: !hasChromium,
  async fn() {
    await using f = await startAdminFixture({ host: "0.0.0.0", token: TOKEN, backends: 1 });
    await using browser = await launch();
    const page = await browser.newPage();
    await page.goto(f.base + "/");
    await page.waitForSelector("#token-form:not([hidden])");
    assert.equal(await page.textContent("#conn"), "token needed");
    await page.fill("#token-input", TOKEN);
    await page.click('#token-form button[type="submit"]');
    await page.waitForSelector(row("a", "up"));
    await page.click(`${row("a")} button[data-action="disable"]`);
    await page.waitForSelector(row("a", "disabled"));
    assert.equal((await f.call("GET", "/api/backends/a")).status, 401, "reads need the token");
    const res = await f.call("GET", "/api/backends/a", { token: true });
    assert.equal(res.body.state, "disabled");
  },
});

Deno.test({
  name: "dashboard screenshot for docs/dashboard.png (SLUICE_SCREENSHOT=1)",
  ignore: !hasChromium || !Deno.env.get("SLUICE_SCREENSHOT"),
  async fn() {
    const seconds = Number(Deno.env.get("SLUICE_SCREENSHOT_SECONDS") ?? 150);
    await using f = await startAdminFixture({
      token: TOKEN,
      backends: [{ delay: 4 }, { delay: 9, failRate: 0.01 }, { delay: 6 }, { delay: 30 }],
      named: false,
      config: {
        strategy: "least-connections",
        health: { path: "/health", interval: "500ms", healthyThreshold: 1, unhealthyThreshold: 1 },
      },
    });
    const started = Date.now();
    let stop = false;
    // Bounded load: a few sequential clients, with one slow phase and an error burst.
    const clients = Array.from({ length: 6 }, async () => {
      while (!stop) {
        const res = await fetch(f.tb.url + "/");
        await res.body?.cancel();
        await new Promise((r) => setTimeout(r, 20 + Math.random() * 40));
      }
    });
    const [a, b, c, d] = f.backends;
    const at = (s: number) => waitFor(() => Date.now() - started > s * 1000, `${s}s`, 600_000);
    await at(seconds * 0.35);
    b.failRate = 0.25;
    await at(seconds * 0.45);
    b.failRate = 0.01;
    a.delay = 40;
    // Open the page well before the shot, so starting Chromium is not the latest latency spike.
    await using browser = await launch();
    const page = await browser.newPage({
      viewport: { width: 1440, height: 820 },
      colorScheme: "dark",
      deviceScaleFactor: 1,
    });
    await page.goto(`${f.base}/#token=${TOKEN}`);
    await at(seconds * 0.6);
    a.delay = 4;
    await at(seconds * 0.8);
    await d.shutdown();
    await at(seconds * 0.88);
    await page.click(`${row(`127.0.0.1:${c.port}`)} button[data-action="drain"]`);
    await at(seconds);
    await page.waitForSelector(row(`127.0.0.1:${d.port}`, "down"));
    await page.waitForSelector(row(`127.0.0.1:${c.port}`, "draining"));
    await waitForText(page, "#conn", (text) => text === "live");
    // Let the "Draining …" notice fade so the shot shows the steady state.
    await page.waitForSelector(".toast", { state: "detached" });
    await page.screenshot({ path: new URL("../docs/dashboard.png", import.meta.url).pathname });
    stop = true;
    await Promise.all(clients);
    assert.ok(b.requests > 0);
  },
});
