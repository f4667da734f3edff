/** Graceful shutdown of main.ts on SIGTERM: drain in-flight requests, refuse new ones, exit 0. */
import assert from "node:assert/strict";
import { waitFor } from "./helpers.ts";
import { spawnBalancer, within } from "./proxy_helpers.ts";

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
