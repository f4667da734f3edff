/** Graceful shutdown of main.ts on SIGTERM: drain in-flight requests, refuse new ones, exit 0. */
import assert from "node:assert/strict";
import { waitFor } from "./helpers.ts";
import { spawnBalancer, within } from "./proxy_helpers.ts";
import { adminUrl, configDir, PATIENCE, startSluice } from "./ops_helpers.ts";

/** A backend whose /slow requests wait until the test releases them. */
function slowBackend() {
  const arrived = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (req) => {
      if (new URL(req.url).pathname !== "/slow") return new Response("ok");
      arrived.resolve();
      await release.promise;
      return new Response("slow done");
    },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    arrived: arrived.promise,
    release: () => release.resolve(),
    async close() {
      release.resolve();
      await server.shutdown();
    },
  };
}

/** Whether a new TCP connection to `port` is refused. */
async function refused(port: number): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.close();
    return false;
  } catch (err) {
    if (err instanceof Deno.errors.ConnectionRefused) return true;
    throw err;
  }
}

Deno.test("SIGTERM: the in-flight request completes, new connections are refused, exit code 0", async () => {
  const backend = slowBackend();
  try {
    await using lb = await spawnBalancer([
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--backend",
      backend.url,
    ]);
    let settled = false;
    const pending = fetch(`${lb.url}/slow`).then(async (res) => ({
      status: res.status,
      text: await res.text(),
    })).finally(() => settled = true);
    await backend.arrived;

    lb.child.kill("SIGTERM");
    await lb.waitForLine(/shutting down/);
    await waitFor(() => refused(lb.port), "new connections to be refused");
    let exited = false;
    lb.status.then(() => exited = true);
    assert.equal(settled, false, "the in-flight request ended before its backend answered");
    assert.equal(exited, false, "the balancer exited with a request in flight");

    backend.release(); // the slow backend answers now
    assert.deepEqual(await pending, { status: 200, text: "slow done" });
    const status = await within(lb.status, 15_000, "the balancer to exit");
    assert.equal(status.code, 0, lb.lines.join("\n"));
    assert.ok(lb.lines.some((l) => l.includes("stopped")), lb.lines.join("\n"));
  } finally {
    await backend.close();
  }
});

Deno.test({
  name: "SIGTERM with a short timeouts.drain cuts a longer request and still exits 0",
}, async () => {
  const backend = slowBackend();
  const dir = await Deno.makeTempDir({ prefix: "sluice-shutdown-" });
  try {
    const config = `${dir}/sluice.yaml`;
    await Deno.writeTextFile(
      config,
      [
        "listen: { host: 127.0.0.1, port: 0 }",
        "backends:",
        `  - url: ${backend.url}`,
        "timeouts: { drain: 300ms }",
      ].join("\n") + "\n",
    );
    await using lb = await spawnBalancer(["--config", config]);
    const pending = fetch(`${lb.url}/slow`).then(async (res) => ({
      status: res.status,
      text: await res.text(),
    }));
    pending.catch(() => {}); // it is expected to fail; asserted below
    await backend.arrived;

    const started = Date.now();
    lb.child.kill("SIGTERM");
    // The backend never answers before the process is gone.
    const status = await within(lb.status, 15_000, "the balancer to exit after the drain timeout");
    const elapsed = Date.now() - started;
    assert.equal(status.code, 0, lb.lines.join("\n"));
    assert.ok(elapsed >= 250, `exited after ${elapsed}ms, before the 300ms drain`);
    assert.ok(lb.lines.some((l) => l.includes("drain timeout reached")), lb.lines.join("\n"));
    await assert.rejects(pending, "the cut request must not look complete");
  } finally {
    await backend.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("/live and /ready: ready once a backend is up, 503 while SIGTERM drains, no token needed", async () => {
  const backend = slowBackend();
  try {
    await using cfg = await configDir({
      listen: { host: "127.0.0.1", port: 0 },
      admin: { host: "127.0.0.1", port: 0, token: "a-long-admin-token-0123" },
      backends: [{ url: backend.url }, { url: "http://127.0.0.1:1" }],
      health: { path: "/", interval: "200ms", timeout: "150ms" },
      timeouts: { drain: "30s" },
    });
    const sluice = await startSluice(cfg.file);
    const admin = await adminUrl(sluice);
    const status = async (path: string) => {
      const res = await fetch(`${admin}${path}`);
      await res.body?.cancel();
      return res.status;
    };
    assert.equal(await status("/live"), 200);
    await waitFor(async () => await status("/ready") === 200, "/ready to answer 200");

    const pending = fetch(`${sluice.url}/slow`).then(async (res) => [res.status, await res.text()]);
    await backend.arrived;
    sluice.kill("SIGTERM");
    await waitFor(
      async () => await status("/ready") === 503,
      "/ready to answer 503 while draining",
    );
    assert.equal(await status("/live"), 200, "the process is alive while it drains");
    backend.release();
    assert.deepEqual(await pending, [200, "slow done"]);
    // It exits by itself once drained (a second SIGTERM could find its handlers gone).
    assert.equal((await sluice.process.status).code, 0);
    await sluice.stop();
  } finally {
    await backend.close();
  }
});

Deno.test("/ready answers 503 while every backend is down and /live stays 200", async () => {
  await using cfg = await configDir({
    listen: { host: "127.0.0.1", port: 0 },
    admin: { host: "127.0.0.1", port: 0 },
    backends: [{ url: "http://127.0.0.1:1" }],
    health: { path: "/", interval: "200ms", timeout: "150ms" },
  });
  await using sluice = await startSluice(cfg.file);
  const admin = await adminUrl(sluice);
  await sluice.stderr.waitFor(/-> down|is down|marked down/i, 1, PATIENCE);
  const [live, ready] = await Promise.all(["/live", "/ready"].map((p) => fetch(`${admin}${p}`)));
  assert.deepEqual([live.status, ready.status], [200, 503]);
  assert.deepEqual(await ready.json(), { ready: false });
  await live.body?.cancel();
});
