/**
 * Worker threads (`workers: N`): what a user observes stays what one worker gives — one
 * rotation, limits and in-flight counts over every worker, totals in the metrics — and a
 * worker that crashes is logged and restarted while the others serve. (The rest of the suite
 * runs again with `SLUICE_TEST_WORKERS=2`, which starts every balancer with two workers.)
 */
import assert from "node:assert/strict";
import { ROOT, spawn } from "./process_helpers.ts";
import { adminUrl, configDir, PATIENCE, startSluice } from "./ops_helpers.ts";
import { startTestBackends, stopAll } from "./resilience_helpers.ts";
import { waitFor } from "./helpers.ts";

/** A new connection per request: which worker takes it is up to the kernel. */
async function fresh(url: string, init?: RequestInit): Promise<{ status: number; body: string }> {
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
  try {
    const res = await fetch(url, { ...init, client });
    return { status: res.status, body: await res.text() };
  } finally {
    client.close();
  }
}

async function scrape(admin: string): Promise<string> {
  return await (await fetch(`${admin}/metrics`)).text();
}

function metric(text: string, name: string, labels = ""): number[] {
  return text.split("\n").filter((l) => l.startsWith(name + (labels ? `{${labels}` : "")))
    .map((l) => Number(l.slice(l.lastIndexOf(" ") + 1)));
}

Deno.test("workers: 2: one rotation over new connections, totals and per-worker figures in /metrics", async () => {
  const backends = await startTestBackends(["a", "b", "c"]);
  try {
    await using cfg = await configDir({
      workers: 2,
      listen: { host: "127.0.0.1", port: 0 },
      admin: { host: "127.0.0.1", port: 0 },
      backends: backends.map((b) => ({ url: b.url, name: b.name })),
    });
    await using sluice = await startSluice(cfg.file);
    assert.ok(sluice.stderr.matching(/sluice listening .* workers=2/).length === 1);
    const admin = await adminUrl(sluice);
    const seen: string[] = [];
    for (let i = 0; i < 30; i++) seen.push((await fresh(sluice.url)).body);
    // Whichever worker takes each connection, the rotation is one: a b c a b c ...
    for (let i = 3; i < seen.length; i++) assert.equal(seen[i], seen[i - 3], seen.join(" "));
    assert.deepEqual(new Set(seen), new Set(["a", "b", "c"]));
    const text = await scrape(admin);
    const total = metric(text, "sluice_requests_total").reduce((x, y) => x + y, 0);
    assert.equal(total, 30, "every worker's requests");
    assert.equal(metric(text, "sluice_worker_client_connections").length, 2);
    assert.deepEqual(metric(text, "sluice_worker_crashes_total"), [0, 0]);
  } finally {
    await stopAll(backends);
  }
});

Deno.test("workers: 2: maxConnections and in-flight counts hold across workers", async () => {
  const [slow] = await startTestBackends(["slow"]);
  try {
    await using cfg = await configDir({
      workers: 2,
      listen: { host: "127.0.0.1", port: 0 },
      admin: { host: "127.0.0.1", port: 0 },
      backends: [{ url: slow.url, name: "slow", maxConnections: 3 }],
    });
    await using sluice = await startSluice(cfg.file);
    const admin = await adminUrl(sluice);
    // Six held requests on six connections land on both workers; only three may go upstream.
    const held = Array.from({ length: 6 }, () => fresh(`${sluice.url}/hold`));
    await waitFor(() => slow.held === 3, "three held requests", PATIENCE);
    const status = await (await fetch(`${admin}/api/status`)).json();
    assert.equal(status.backends[0].inflight, 3);
    // With all three slots taken, the others were refused (503) rather than queued upstream.
    slow.release();
    const statuses = (await Promise.all(held)).map((r) => r.status).sort();
    assert.deepEqual(statuses, [200, 200, 200, 503, 503, 503]);
    const after = await (await fetch(`${admin}/api/status`)).json();
    assert.equal(after.backends[0].inflight, 0);
  } finally {
    await stopAll([slow]);
  }
});

Deno.test("workers: a worker that crashes is logged and restarted; the others keep serving", async () => {
  const backends = await startTestBackends(["a", "b"]);
  try {
    await using cfg = await configDir({
      workers: 2,
      listen: { host: "127.0.0.1", port: 0 },
      admin: { host: "127.0.0.1", port: 0 },
      hooks: "./hooks.ts",
      backends: backends.map((b) => ({ url: b.url, name: b.name })),
    });
    // A hook with a bug outside the request: its timer throws where no request can catch it.
    await Deno.writeTextFile(
      `${cfg.dir}/hooks.ts`,
      `export default {
        onRequest(req) {
          if (req.path === "/crash") setTimeout(() => { throw new Error("hook bug"); }, 0);
        },
      };\n`,
    );
    await using sluice = await startSluice(cfg.file);
    const admin = await adminUrl(sluice);
    // Requests in flight on both workers while one of them dies.
    // (Those on the worker that dies lose their connection.)
    const held = Promise.allSettled(
      Array.from({ length: 6 }, () => fresh(`${sluice.url}/hold`)),
    );
    await waitFor(() => backends.reduce((n, b) => n + b.held, 0) === 6, "held", PATIENCE);
    // The timer may fire before this response is out (a busy machine): then it is lost with
    // the worker, like the held requests on it.
    await fresh(`${sluice.url}/crash`).catch(() => {});
    const [crash] = await sluice.stderr.waitFor(/worker \d crashed: .*hook bug/);
    const index = /worker (\d) crashed/.exec(crash)![1];
    await sluice.stderr.waitFor(new RegExp(`worker ${index} restarted`));
    for (const b of backends) b.release();
    await held;
    // The other worker kept serving, and the restarted one serves again.
    for (let i = 0; i < 20; i++) assert.equal((await fresh(sluice.url)).status, 200);
    // What the dead worker held in flight was taken back: nothing is left counted.
    await waitFor(
      async () => {
        const status = await (await fetch(`${admin}/api/status`)).json();
        return status.backends.every((b: { inflight: number }) => b.inflight === 0);
      },
      "in-flight counts back to zero",
      PATIENCE,
    );
    const text = await scrape(admin);
    assert.equal(metric(text, "sluice_worker_crashes_total", `worker="${index}"`)[0], 1);
  } finally {
    await stopAll(backends);
  }
});

Deno.test("workers: auto is one per core; more than one needs --unstable-net, said plainly", async () => {
  const backends = await startTestBackends(["a"]);
  try {
    await using cfg = await configDir({
      workers: "auto",
      listen: { host: "127.0.0.1", port: 0 },
      backends: [{ url: backends[0].url }],
    });
    const cores = navigator.hardwareConcurrency;
    await using sluice = await startSluice(cfg.file);
    if (cores > 1) assert.equal(sluice.stderr.matching(new RegExp(`workers=${cores}`)).length, 1);

    // A deno.json without `"unstable": ["net"]`: the same imports, no shared ports.
    const denoJson = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
    delete denoJson.unstable;
    await Deno.writeTextFile(`${cfg.dir}/deno.json`, JSON.stringify(denoJson));
    await using proc = spawn([
      "run",
      "--config",
      `${cfg.dir}/deno.json`,
      "--lock=deno.lock",
      "--allow-net",
      "--allow-read",
      "--allow-env",
      "main.ts",
      "-c",
      cfg.file,
      "--workers",
      "2",
    ]);
    const { code } = await proc.status;
    await proc.stderr.done;
    assert.equal(code, 1);
    assert.match(
      proc.stderr.lines.join("\n"),
      /cannot start: workers: 2 needs Deno's --unstable-net/,
    );
  } finally {
    await stopAll(backends);
  }
});
