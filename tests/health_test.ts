/** Active health checks against real backends: failover, recovery, thresholds, logging. */
import assert from "node:assert/strict";
import { type DemoBackend, startBackend } from "../backend.ts";
import type { Backend } from "../lib/pool.ts";
import { backendUrl, startBackends, startTestBalancer, waitFor } from "./helpers.ts";

/** The port a demo backend names in its greeting, through the balancer. */
async function servedBy(url: string): Promise<number> {
  const res = await fetch(url);
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return Number(/on port: (\d+)/.exec(text)![1]);
}

/** Resolves after `n` more probes of `backend` have finished. */
async function probes(backend: Backend, n: number): Promise<void> {
  let last = backend.lastProbe;
  let seen = 0;
  await waitFor(() => {
    if (backend.lastProbe !== last) {
      last = backend.lastProbe;
      seen++;
    }
    return seen >= n;
  }, `${n} more health probes of ${backend.url}`);
}

/**
 * Stops `demo` the moment a probe of `backend` has finished, so no probe is in flight
 * while it goes away and the next one finds the port closed.
 */
function stopBetweenProbes(
  lb: Awaited<ReturnType<typeof startTestBalancer>>,
  backend: Backend,
  demo: DemoBackend,
): Promise<void> {
  const { promise, resolve, reject } = Promise.withResolvers<void>();
  const health = lb.balancer.health;
  const previous = health.onProbe;
  health.onProbe = (b) => {
    previous?.(b);
    if (b !== backend) return;
    health.onProbe = previous;
    demo.shutdown().then(resolve, reject);
  };
  return promise;
}

/** A port nothing listens on. */
function deadPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

function count(logs: string[], text: string): number {
  return logs.filter((l) => l.includes(text)).length;
}

// Short enough to be quick, long enough that a busy machine does not time healthy probes out.
const FAST = {
  path: "/health",
  interval: "200ms",
  timeout: "200ms",
  unhealthyThreshold: 2,
  healthyThreshold: 2,
};

Deno.test("traffic fails over when a backend stops and returns when it restarts on the same port", async () => {
  const [a, first] = await startBackends(2);
  let b: DemoBackend = first;
  const urlB = backendUrl(b);
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: backendUrl(a) }, { url: urlB }],
      health: FAST,
    });
    const backendB = lb.balancer.pool.backends[1];
    await stopBetweenProbes(lb, backendB, b);
    const down = `backend ${urlB} is down: connection refused`;
    await waitFor(() => count(lb.logs, down) > 0, "the down transition");
    assert.equal(backendB.state, "down");
    for (let i = 0; i < 6; i++) assert.equal(await servedBy(lb.url), a.port);
    await probes(backendB, 3); // more failed probes: still one log line
    assert.equal(count(lb.logs, down), 1, lb.logs.join("\n"));

    b = await startBackend({ port: b.port });
    const up = `backend ${urlB} is back up`;
    await waitFor(() => count(lb.logs, up) > 0, "the up transition");
    assert.equal(backendB.state, "up");
    const seen = new Set<number>();
    for (let i = 0; i < 4; i++) seen.add(await servedBy(lb.url));
    assert.deepEqual([...seen].sort(), [a.port, b.port].sort());
    await probes(backendB, 3);
    assert.equal(count(lb.logs, up), 1, lb.logs.join("\n"));
    assert.equal(count(lb.logs, down), 1, lb.logs.join("\n"));
    assert.equal(count(lb.logs, `backend ${backendUrl(a)} is`), 0, "the healthy backend flapped");
  } finally {
    await Promise.all([a.shutdown(), b.shutdown()]);
  }
});

Deno.test("a backend that is dead at start-up is marked down by the first probe", async () => {
  const [live] = await startBackends(1);
  const dead = `http://127.0.0.1:${deadPort()}`;
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: dead }, { url: backendUrl(live) }],
      // A minute between probes and the default thresholds: only the start-up probe can act.
      health: { path: "/health", interval: "1m", unhealthyThreshold: 3, healthyThreshold: 2 },
      retries: 0,
    });
    await waitFor(
      () => count(lb.logs, `backend ${dead} is down: connection refused`) === 1,
      "the start-up probe to mark the dead backend down",
    );
    for (let i = 0; i < 4; i++) assert.equal(await servedBy(lb.url), live.port);
    assert.equal(count(lb.logs, `upstream ${dead} failed`), 0, "a request was sent to it");
  } finally {
    await live.shutdown();
  }
});

Deno.test("thresholds: 2 failed probes of 3 keep a backend up, 1 good probe of 2 keeps it down", async () => {
  const [demo] = await startBackends(1);
  const url = backendUrl(demo);
  try {
    await using lb = await startTestBalancer({
      backends: [{ url }],
      health: { path: "/health", interval: "1m", unhealthyThreshold: 3, healthyThreshold: 2 },
    });
    const backend = lb.balancer.pool.backends[0];
    const health = lb.balancer.health;
    await waitFor(() => backend.lastProbe !== undefined, "the start-up probe");

    assert.equal(await (await fetch(`${url}/health/off`)).text(), "health switched off\n");
    await health.check(backend);
    await health.check(backend);
    assert.equal(backend.lastProbe?.ok, false);
    assert.equal(backend.state, "up");
    assert.equal((await fetch(lb.url)).status, 200);
    assert.equal(count(lb.logs, "is down"), 0);

    await health.check(backend);
    assert.equal(backend.state, "down");
    assert.equal(count(lb.logs, `backend ${url} is down: health check returned status 503`), 1);

    await (await fetch(`${url}/health/on`)).text();
    await health.check(backend);
    assert.equal(backend.lastProbe?.ok, true);
    assert.equal(backend.state, "down");
    assert.equal(count(lb.logs, "is back up"), 0);
    await health.check(backend);
    assert.equal(backend.state, "up");
    assert.equal(count(lb.logs, `backend ${url} is back up`), 1);
    assert.equal((await fetch(lb.url)).status, 200);
  } finally {
    await demo.shutdown();
  }
});

Deno.test("/health/off on a demo backend takes it out by status; /health/on brings it back", async () => {
  const [a, b] = await startBackends(2);
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: backendUrl(a) }, { url: backendUrl(b) }],
      health: FAST,
    });
    await fetch(`${backendUrl(b)}/health/off`).then((r) => r.text());
    const down = `backend ${backendUrl(b)} is down: health check returned status 503`;
    await waitFor(() => count(lb.logs, down) === 1, "the down transition");
    for (let i = 0; i < 4; i++) assert.equal(await servedBy(lb.url), a.port);

    await fetch(`${backendUrl(b)}/health/on`).then((r) => r.text());
    await waitFor(
      () => count(lb.logs, `backend ${backendUrl(b)} is back up`) === 1,
      "the up transition",
    );
    const seen = new Set<number>();
    for (let i = 0; i < 4; i++) seen.add(await servedBy(lb.url));
    assert.ok(seen.has(b.port), "the recovered backend got no traffic");
  } finally {
    await Promise.all([a.shutdown(), b.shutdown()]);
  }
});

Deno.test("503 'Service not available' when every backend is down, 200 once one recovers", async () => {
  const backends = await startBackends(2);
  try {
    await using lb = await startTestBalancer({
      backends: backends.map((b) => ({ url: backendUrl(b) })),
      health: FAST,
    });
    for (const b of backends) await fetch(`${backendUrl(b)}/health/off`).then((r) => r.text());
    await waitFor(
      () => lb.balancer.pool.backends.every((b) => b.state === "down"),
      "every backend to be down",
    );
    for (let i = 0; i < 3; i++) {
      const res = await fetch(lb.url);
      assert.equal(res.status, 503);
      assert.equal(await res.text(), "Service not available");
    }
    // Nothing but health probes reached the backends meanwhile.
    assert.ok(lb.logs.every((l) => !l.includes("upstream")), lb.logs.join("\n"));

    await fetch(`${backendUrl(backends[0])}/health/on`).then((r) => r.text());
    await waitFor(() => lb.balancer.pool.backends[0].state === "up", "the recovery");
    assert.equal(await servedBy(lb.url), backends[0].port);
  } finally {
    await Promise.all(backends.map((b) => b.shutdown()));
  }
});
