/**
 * Failover under load: a backend dies in the middle of steady traffic and comes back on
 * the same port. Clients must see no failure, and the returning backend must get traffic
 * again once the active health check has seen it.
 */
import assert from "node:assert/strict";
import { waitFor } from "./helpers.ts";
import {
  entries,
  runLoad,
  startBalancer,
  startTestBackends,
  stopAll,
  type TestBackend,
} from "./resilience_helpers.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Restarts a stopped backend on its old port, retrying briefly if the port is still held. */
async function restartOnSamePort(backend: TestBackend): Promise<void> {
  let lastError: unknown;
  const deadline = Date.now() + 5_000;
  while (Date.now() < deadline) {
    try {
      await backend.restart();
      return;
    } catch (err) {
      if (!(err instanceof Deno.errors.AddrInUse)) throw err;
      lastError = err;
      await sleep(50);
    }
  }
  throw lastError;
}

Deno.test("failover under load: a backend killed and restarted costs no client request", async () => {
  const backends = await startTestBackends(["a", "b", "c"]);
  const victim = backends[1];
  try {
    await using t = await startBalancer({
      strategy: "round-robin",
      health: {
        interval: "200ms",
        timeout: "200ms",
        unhealthyThreshold: 2,
        healthyThreshold: 2,
      },
      backends: entries(backends),
    });
    const state = t.balancer.pool.get("b")!;
    const started = Date.now();
    const phases: Record<string, number> = {};
    let victimAnswersAfterRestart = 0;
    let restarted = false;
    const afterUp = { total: 0, b: 0 };

    // Four clients, gently paced, for 12 s (and never more than 40,000 requests).
    const load = runLoad(t.url, {
      clients: 4,
      maxMs: 12_000,
      maxRequests: 40_000,
      pauseMs: 2,
      onAnswer: (name) => {
        if (restarted && name === "b") victimAnswersAfterRestart++;
        if (phases.up !== undefined) {
          afterUp.total++;
          if (name === "b") afterUp.b++;
        }
      },
    });

    // Traffic reaches every backend, then b is shut down in the middle of it.
    await waitFor(() => backends.every((b) => b.hits >= 20), "traffic on every backend");
    await sleep(Math.max(0, 3_000 - (Date.now() - started)));
    await victim.stop();
    phases.killed = Date.now() - started;
    const hitsAtKill = victim.hits;

    // The balancer takes it out of rotation (passively or by the health check).
    await waitFor(() => !state.available, "b out of rotation", 5_000);
    phases.detected = Date.now() - started;
    assert.match(state.state, /^(down|ejected)$/);
    // The active health check marks it down, saying why.
    await waitFor(() => state.state === "down", "b down", 5_000);
    assert.equal(state.reason, "connection refused");

    // Some seconds later b is back on the same port.
    await sleep(Math.max(0, 6_000 - (Date.now() - started)));
    const port = victim.port;
    await restartOnSamePort(victim);
    assert.equal(victim.port, port);
    restarted = true;
    phases.restarted = Date.now() - started;

    // The health check brings it back, and it gets its share of traffic again.
    await waitFor(() => state.state === "up", "b up again", 5_000);
    phases.up = Date.now() - started;
    assert.equal(state.reason, "health check passed");
    await waitFor(() => victimAnswersAfterRestart >= 50, "traffic on b again", 5_000);
    phases.serving = Date.now() - started;

    const result = await load;
    assert.deepEqual(
      result.failures,
      [],
      `failed client requests (phases ${JSON.stringify(phases)})`,
    );
    assert.ok(Date.now() - started >= 10_000, "the load ran for at least 10 s");
    assert.ok(victim.hits > hitsAtKill, "b received requests after its restart");
    // Once back up, b serves its third of the load again (round robin over 3).
    const share = afterUp.b / afterUp.total;
    assert.ok(
      share > 0.25 && share < 0.4,
      `b answered ${afterUp.b} of ${afterUp.total} after its return ${JSON.stringify(phases)}`,
    );
  } finally {
    await stopAll(backends);
  }
});
