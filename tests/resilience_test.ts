/**
 * Failure handling: retries and what is never retried, the retry budget, the replay
 * buffer, outlier ejection, circuit breaking with the wait queue, and backend states.
 * Every backend is a real server on 127.0.0.1; raw ones keep their own record of what
 * reached them.
 */
import assert from "node:assert/strict";
import { waitFor } from "./helpers.ts";
import {
  dropServer,
  entries,
  hit,
  sequence,
  startBalancer,
  startTestBackend,
  startTestBackends,
  stopAll,
  tally,
} from "./resilience_helpers.ts";
import { RetryBudget } from "../lib/retry_budget.ts";
import { SharedCounters } from "../lib/shared.ts";
import type { Backend } from "../lib/pool.ts";

/** The current state (a call, so TypeScript does not narrow it across awaits). */
function stateOf(b: Backend): string {
  return b.state;
}

/** Probes `backend` now until its state is `state` (each probe applied as the health loop would). */
async function probeUntil(
  t: { balancer: { health: { check(b: Backend): Promise<void> } } },
  backend: Backend,
  state: string,
): Promise<void> {
  for (let i = 0; i < 10 && backend.state !== state; i++) await t.balancer.health.check(backend);
  assert.equal(backend.state, state, `state of ${backend.id} (${backend.reason})`);
}

// ---------------------------------------------------------------- what is (never) retried

Deno.test("a POST whose body reached a backend that then dropped the connection is not sent again: 502", async () => {
  const drops = [dropServer(), dropServer()];
  try {
    await using t = await startBalancer({
      retries: 2,
      retryOn: [502, 503],
      backends: drops.map((d, i) => ({ url: d.url, name: `drop${i}` })),
    });
    const res = await hit(`${t.url}/orders`, { method: "POST", body: "x".repeat(5_000) });
    assert.equal(res.status, 502);
    const all = drops.flatMap((d) => d.received);
    assert.deepEqual(all, [{ method: "POST", target: "/orders", bodyLength: 5_000 }]);
    // An idempotent request in the same situation is retried on the other backend.
    const put = await hit(`${t.url}/orders/1`, { method: "PUT", body: "y".repeat(100) });
    assert.equal(put.status, 502);
    assert.equal(drops.flatMap((d) => d.received).filter((r) => r.method === "PUT").length, 2);
  } finally {
    for (const d of drops) d.close();
  }
});

Deno.test("a POST refused at connect is retried on another backend and succeeds", async () => {
  const dead = await startTestBackend("dead");
  await using good = await startTestBackend("good");
  await using t = await startBalancer({
    backends: entries([dead, good]),
  });
  // The health check has seen "dead" up; then it goes away without the balancer noticing.
  await waitFor(() => t.balancer.pool.get("dead")!.lastProbe !== undefined, "first probe");
  await dead.stop();
  const res = await hit(`${t.url}/orders`, { method: "POST", body: "order-1" });
  assert.equal(res.status, 200);
  assert.equal(res.body, "good order-1");
  assert.deepEqual(good.seen, ["POST /orders"]);
  assert.ok(
    t.logs.some((l) => l.includes(`upstream ${dead.url} failed: connection refused`)),
    "the POST was first tried on the dead backend",
  );
});

Deno.test("a GET reset after it was sent is retried on a different backend", async () => {
  const drop = dropServer();
  try {
    await using good = await startTestBackend("good");
    await using t = await startBalancer({
      backends: [{ url: drop.url, name: "drop" }, { url: good.url, name: "good" }],
    });
    const res = await hit(`${t.url}/page`);
    assert.equal(res.status, 200);
    assert.equal(res.backend, "good");
    assert.deepEqual(drop.received, [{ method: "GET", target: "/page", bodyLength: 0 }]);
    assert.deepEqual(good.seen, ["GET /page"]);
  } finally {
    drop.close();
  }
});

Deno.test("retryOn [503]: a 503 is retried on another backend; with none left the last 503 is returned", async () => {
  const backends = await startTestBackends(["a", "b", "c"]);
  const [a, b, c] = backends;
  try {
    await using t = await startBalancer({
      retries: 5,
      retryOn: [503],
      outlier: { consecutiveFailures: 0 },
      backends: entries(backends),
    });
    a.status = 503;
    const ok = await hit(t.url); // round robin starts at a
    assert.deepEqual([ok.status, ok.backend], [200, "b"]);
    assert.deepEqual([a.hits, b.hits, c.hits], [1, 1, 0]);
    // Every backend answers 503: each is tried once, and the last answer is returned.
    b.status = 503;
    c.status = 503;
    const last = await hit(t.url);
    assert.equal(last.status, 503);
    assert.deepEqual([a.hits, b.hits, c.hits], [2, 2, 1]);
    assert.equal(last.backend, "a", "b, then c, then a: a answered last");
    // A POST is never retried on a 503.
    const post = await hit(t.url, { method: "POST", body: "p" });
    assert.equal(post.status, 503);
    assert.equal(a.hits + b.hits + c.hits, 6);
  } finally {
    await stopAll(backends);
  }
});

Deno.test("retries stop at `retries`; without retryOn a 503 is passed through", async () => {
  const backends = await startTestBackends(["a", "b", "c"], { status: 503 });
  try {
    await using limited = await startBalancer({
      retries: 1,
      retryOn: [503],
      outlier: { consecutiveFailures: 0 },
      backends: entries(backends),
    });
    const r = await hit(limited.url);
    assert.deepEqual([r.status, r.backend], [503, "b"]);
    assert.deepEqual(backends.map((b) => b.hits), [1, 1, 0]);
    await using plain = await startBalancer({ backends: entries(backends) });
    const p = await hit(plain.url);
    assert.deepEqual([p.status, p.backend], [503, "a"]);
    assert.deepEqual(backends.map((b) => b.hits), [2, 1, 0]);
  } finally {
    await stopAll(backends);
  }
});

Deno.test("replay buffer: a PUT with a body larger than retryBuffer is not retried after it was sent", async () => {
  const drop = dropServer();
  try {
    await using good = await startTestBackend("good");
    await using t = await startBalancer({
      retryBuffer: 1024,
      backends: [{ url: drop.url, name: "drop" }, { url: good.url, name: "good" }],
    });
    // Round robin: the first request goes to "drop", which reads all 4 KB and hangs up.
    const big = await hit(`${t.url}/big`, { method: "PUT", body: "b".repeat(4_096) });
    assert.equal(big.status, 502);
    assert.deepEqual(drop.received, [{ method: "PUT", target: "/big", bodyLength: 4_096 }]);
    assert.deepEqual(good.seen, []);
    // A body within the buffer is replayed on the other backend.
    await sequence(t.url, 1); // to "good": the next PUT goes to "drop" first
    const small = await hit(`${t.url}/small`, { method: "PUT", body: "s".repeat(1_000) });
    assert.equal(small.status, 200);
    assert.equal(small.body, `good ${"s".repeat(1_000)}`);
    assert.deepEqual(drop.received.map((r) => r.target), ["/big", "/small"]);
  } finally {
    drop.close();
  }
});

Deno.test("a streamed PUT retried while the client is still sending reaches the next backend whole", async () => {
  const drop = dropServer({ readBody: false }); // hangs up right after the request head
  try {
    await using good = await startTestBackend("good");
    await using t = await startBalancer({
      backends: [{ url: drop.url, name: "drop" }, { url: good.url, name: "good" }],
    });
    const encoder = new TextEncoder();
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) });
    controller.enqueue(encoder.encode("aaaa"));
    const put = hit(`${t.url}/doc`, { method: "PUT", body });
    // The first backend hangs up; the retry reaches "good" while the client is still sending.
    await waitFor(() => drop.received.length === 1 && good.hits === 1, "retry on good");
    controller.enqueue(encoder.encode("bbbb"));
    controller.enqueue(encoder.encode("cccc"));
    controller.close();
    const res = await put;
    assert.equal(res.status, 200);
    assert.equal(res.body, "good aaaabbbbcccc");
  } finally {
    drop.close();
  }
});

// ---------------------------------------------------------------- retry budget

Deno.test("retry budget: retries in flight are at most percent of requests in flight, at least minConcurrent", () => {
  const counters = new SharedCounters();
  const budget = new RetryBudget(
    { percent: 20, minConcurrent: 3 },
    counters,
    counters.allocatePool(),
  );
  // 5 requests in flight: 20% is 1, the floor of 3 wins.
  for (let i = 0; i < 5; i++) budget.begin();
  assert.deepEqual([1, 2, 3, 4].map(() => budget.tryRetry()), [true, true, true, false]);
  // A retry that is over frees its place.
  budget.endRetry();
  assert.equal(budget.tryRetry(), true);
  for (let i = 0; i < 3; i++) budget.endRetry();
  // 100 requests in flight: 20 retries at once.
  for (let i = 0; i < 95; i++) budget.begin();
  let granted = 0;
  for (let i = 0; i < 50; i++) if (budget.tryRetry()) granted++;
  assert.equal(granted, 20);
  assert.deepEqual(budget.inFlight, { requests: 100, retries: 20 });
});

Deno.test("retry budget: with every backend failing under concurrent load, retries stay within the budget", async () => {
  const backends = await startTestBackends(["a", "b", "c"], { status: 503, delay: 50 });
  try {
    await using t = await startBalancer({
      retries: 2,
      retryOn: [503],
      retryBudget: { percent: 10, minConcurrent: 2 },
      outlier: { consecutiveFailures: 0 },
      backends: entries(backends),
    });
    const clients = 40;
    const each = 5;
    const n = clients * each;
    await Promise.all(
      Array.from({ length: clients }, async () => {
        for (let i = 0; i < each; i++) assert.equal((await hit(t.url)).status, 503);
      }),
    );
    const retries = backends.reduce((sum, b) => sum + b.hits, 0) - n;
    // Without a budget every request would be tried three times (400 retries).
    assert.ok(retries < n / 2, `${retries} retries for ${n} requests: the budget did not bind`);
    assert.ok(retries >= 2, "the floor allows some retries");
    await t.balancer.collect();
    assert.equal(t.balancer.stats.retries.dump().reduce((x, [, v]) => x + v, 0), retries);
    const refused = t.balancer.stats.retriesRefused.get(["default"]);
    assert.ok(refused > 0, "refusals are counted in sluice_retries_refused_total");
    assert.ok(t.logs.some((l) => l.includes("retry refused by the retry budget")));
  } finally {
    await stopAll(backends);
  }
});

Deno.test("retry budget: a dead backend costs no request at low traffic, even when it is the first choice many times in a row", async () => {
  const [live, dead] = await startTestBackends(["live", "dead"]);
  await dead.stop();
  try {
    // Weighted so the dead backend is the first choice of most requests in a row.
    await using t = await startBalancer({
      strategy: "weighted-round-robin",
      outlier: { consecutiveFailures: 0 },
      backends: [
        { url: live.url, name: "live", weight: 1 },
        { url: dead.url, name: "dead", weight: 9 },
      ],
    });
    const statuses: number[] = [];
    const until = Date.now() + 1_500;
    while (Date.now() < until) {
      statuses.push((await hit(t.url)).status);
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(statuses.length >= 20, `only ${statuses.length} requests`);
    assert.deepEqual(
      statuses.filter((s) => s !== 200),
      [],
      "every request was retried and answered",
    );
    await t.balancer.collect();
    assert.equal(t.balancer.stats.retriesRefused.get(["default"]), 0);
  } finally {
    await live.stop();
  }
});

// ---------------------------------------------------------------- outlier ejection

/** A `waitFor` check that sends one request while `b` is up and is true once it is ejected. */
function ejectedAfterTraffic(b: Backend, url: string): () => Promise<boolean> {
  return async () => {
    if (stateOf(b) === "up") await hit(url);
    return stateOf(b) === "ejected";
  };
}

Deno.test("outlier: consecutive 5xx eject a backend at once, for baseEjection × times ejected", async () => {
  const backends = await startTestBackends(["bad", "b", "c"]);
  const [bad] = backends;
  bad.status = 500;
  try {
    await using t = await startBalancer({
      outlier: { consecutiveFailures: 3, baseEjection: "1s", maxEjectionPercent: 50 },
      // Probes every minute: the ejection is all passive.
      backends: entries(backends),
    });
    const b = t.balancer.pool.get("bad")!;
    const statuses = [];
    for (let i = 0; i < 9; i++) statuses.push((await hit(t.url)).status);
    assert.deepEqual(tally(statuses.map(String)), { 200: 6, 500: 3 });
    // With workers the ejection is decided on the main thread, a message later.
    await waitFor(() => stateOf(b) === "ejected", "the ejection", 5_000);
    assert.equal(b.reason, "ejected for 1000ms after 3 consecutive failures: status 500");
    assert.equal(b.available, false);
    // While ejected it gets nothing.
    const hits = bad.hits;
    assert.deepEqual(tally(await sequence(t.url, 6)), { b: 3, c: 3 });
    assert.ok(b.ejectedUntil > Date.now(), "still inside the ejection");
    assert.equal(bad.hits, hits);
    // The ejection ends on time, then a second ejection lasts twice as long.
    await waitFor(() => stateOf(b) === "up", "ejection over", 5_000);
    assert.equal(b.reason, "ejection time over");
    // Traffic until it fails again: with workers, a worker may see "up" a message after this
    // thread does, so a fixed number of requests could miss it.
    await waitFor(ejectedAfterTraffic(b, t.url), "the second ejection", 5_000);
    assert.match(b.reason, /^ejected for 2000ms after 3 consecutive failures/);
    assert.ok(Math.abs(b.ejectedUntil - b.since - 2_000) < 50);
    assert.equal(b.ejections, 2);
  } finally {
    await stopAll(backends);
  }
});

Deno.test("outlier: connect failures eject a backend while retries keep clients whole", async () => {
  const dead = await startTestBackend("dead");
  const live = await startTestBackends(["b", "c"]);
  try {
    await using t = await startBalancer({
      outlier: { consecutiveFailures: 2, baseEjection: "1m" },
      backends: entries([dead, ...live]),
    });
    const b = t.balancer.pool.get("dead")!;
    await waitFor(() => b.lastProbe !== undefined, "first probe");
    await dead.stop();
    const answers = await sequence(t.url, 12); // throws on any non-200
    assert.ok(!answers.includes("dead"));
    assert.equal(b.state, "ejected");
    assert.equal(
      b.reason,
      "ejected for 60000ms after 2 consecutive failures: connection refused",
    );
  } finally {
    await stopAll(live);
  }
});

Deno.test("outlier: never more than maxEjectionPercent of the pool is ejected", async () => {
  const backends = await startTestBackends(["a", "b", "c", "d"], { status: 500 });
  try {
    await using t = await startBalancer({
      outlier: { consecutiveFailures: 2, baseEjection: "1m", maxEjectionPercent: 50 },
      backends: entries(backends),
    });
    const ejected = () => t.balancer.pool.backends.filter((b) => b.state === "ejected").length;
    for (let i = 0; i < 40; i++) {
      assert.equal((await hit(t.url)).status, 500);
      assert.ok(ejected() <= 2, `${ejected()} of 4 ejected`);
    }
    assert.equal(ejected(), 2);
    assert.ok(t.logs.some((l) => l.includes("maxEjectionPercent reached")));
  } finally {
    await stopAll(backends);
  }
});

Deno.test("outlier: the active health check brings an ejected backend back early", async () => {
  const backends = await startTestBackends(["bad", "b"]);
  const [bad] = backends;
  bad.status = 500; // traffic fails, /health passes
  try {
    await using t = await startBalancer({
      outlier: { consecutiveFailures: 2, baseEjection: "1m", maxEjectionPercent: 50 },
      health: { interval: "200ms", timeout: "200ms" },
      backends: entries(backends),
    });
    const b = t.balancer.pool.get("bad")!;
    for (let i = 0; i < 4; i++) await hit(t.url);
    assert.equal(b.state, "ejected");
    await waitFor(() => stateOf(b) === "up", "reinstated by the health check", 5_000);
    assert.equal(b.reason, "health check passed");
    assert.ok(b.ejectedUntil === 0);
  } finally {
    await stopAll(backends);
  }
});

Deno.test("outlier: a second ejection is not cut short by the first one's timer", async () => {
  const backends = await startTestBackends(["bad", "b"]);
  const [bad] = backends;
  bad.status = 500;
  try {
    await using t = await startBalancer({
      outlier: { consecutiveFailures: 2, baseEjection: "400ms", maxEjectionPercent: 50 },
      backends: entries(backends),
    });
    const b = t.balancer.pool.get("bad")!;
    for (let i = 0; i < 4; i++) await hit(t.url);
    assert.equal(b.state, "ejected");
    // A passing probe reinstates it at once; it fails again and is ejected for 800ms.
    await t.balancer.health.check(b);
    assert.equal(b.state, "up");
    await waitFor(ejectedAfterTraffic(b, t.url), "the second ejection", 5_000);
    const until = b.ejectedUntil;
    assert.ok(until - Date.now() > 500, "second ejection is 800ms");
    await waitFor(() => stateOf(b) === "up", "second ejection over", 5_000);
    assert.ok(b.since >= until - 5, `back after ${b.since - until + 800}ms of 800ms`);
  } finally {
    await stopAll(backends);
  }
});

// ---------------------------------------------------------------- circuit breaking and the queue

Deno.test("circuit breaking: a backend at maxConnections is skipped; all full and no queue gives 503 + Retry-After at once", async () => {
  const backends = await startTestBackends(["a", "b"]);
  const [a, b] = backends;
  try {
    await using t = await startBalancer({
      limits: { maxPending: 0 },
      backends: entries(backends, (x) => ({ maxConnections: x.name === "a" ? 2 : 1 })),
    });
    const held = [hit(`${t.url}/hold/1`), hit(`${t.url}/hold/2`), hit(`${t.url}/hold/3`)];
    await waitFor(() => a.held + b.held === 3, "3 held requests");
    assert.deepEqual([a.held, b.held], [2, 1]);
    const full = await hit(t.url);
    assert.equal(full.status, 503);
    assert.equal(full.headers.get("retry-after"), "1");
    assert.deepEqual([a.hits, b.hits], [2, 1], "the refused request reached no backend");
    a.release();
    b.release();
    assert.deepEqual((await Promise.all(held)).map((r) => r.status), [200, 200, 200]);
    assert.equal((await hit(t.url)).status, 200);
  } finally {
    await stopAll(backends);
  }
});

Deno.test("circuit breaking: limits.maxConnections applies to every backend", async () => {
  const backends = await startTestBackends(["a", "b"]);
  try {
    await using t = await startBalancer({
      limits: { maxConnections: 1, maxPending: 0 },
      backends: entries(backends),
    });
    const held = [hit(`${t.url}/hold/1`), hit(`${t.url}/hold/2`)];
    await waitFor(() => backends.every((b) => b.held === 1), "one held request per backend");
    const full = await hit(t.url);
    assert.equal(full.status, 503);
    assert.equal(full.headers.get("retry-after"), "1");
    for (const b of backends) b.release();
    assert.deepEqual((await Promise.all(held)).map((r) => r.status), [200, 200]);
  } finally {
    await stopAll(backends);
  }
});

Deno.test("queue: with maxPending, a request waits up to queueTimeout, then gets 503 + Retry-After", async () => {
  await using a = await startTestBackend("a");
  await using t = await startBalancer({
    limits: { maxConnections: 1, maxPending: 1, queueTimeout: "300ms" },
    backends: entries([a]),
  });
  const held = hit(`${t.url}/hold`);
  await waitFor(() => a.held === 1, "held request");
  const started = performance.now();
  const waited = await hit(t.url);
  const elapsed = performance.now() - started;
  assert.equal(waited.status, 503);
  assert.equal(waited.headers.get("retry-after"), "1");
  assert.ok(elapsed >= 290, `answered after ${elapsed.toFixed(0)}ms, before queueTimeout`);
  assert.equal(a.hits, 1);
  a.release();
  assert.equal((await held).status, 200);
});

Deno.test("queue: a freed slot serves a waiting request; past maxPending, 503 at once", async () => {
  await using a = await startTestBackend("a");
  await using t = await startBalancer({
    limits: { maxConnections: 1, maxPending: 1, queueTimeout: "30s" },
    backends: entries([a]),
  });
  const held = hit(`${t.url}/hold`);
  await waitFor(() => a.held === 1, "held request");
  // Two more: one takes the only queue place, the other is refused at once.
  const extra = [hit(`${t.url}/x`), hit(`${t.url}/y`)];
  const first = await Promise.race(extra);
  assert.equal(first.status, 503);
  assert.equal(first.headers.get("retry-after"), "1");
  assert.equal(a.held, 1, "refused while the slot is still taken");
  a.release();
  const answers = await Promise.all(extra);
  assert.deepEqual(answers.map((r) => r.status).sort(), [200, 503]);
  assert.equal((await held).status, 200);
  assert.equal(a.hits, 2, "the held request and the one that waited");
});

Deno.test({
  name: "queue: by default (maxPending 0) a request finding every backend full gets 503 at once",
  async fn() {
    await using a = await startTestBackend("a");
    await using t = await startBalancer({
      limits: { maxConnections: 1, queueTimeout: "30s" },
      backends: entries([a]),
    });
    const held = hit(`${t.url}/hold`);
    await waitFor(() => a.held === 1, "held request");
    const second = hit(t.url);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const outcome = await Promise.race([
      second,
      new Promise<"queued">((r) => timer = setTimeout(() => r("queued"), 5_000)),
    ]);
    clearTimeout(timer);
    a.release();
    await held;
    await second;
    assert.notEqual(outcome, "queued", "the request was queued although maxPending defaults to 0");
    if (outcome !== "queued") {
      assert.equal(outcome.status, 503);
      assert.equal(outcome.headers.get("retry-after"), "1");
    }
  },
});

// ---------------------------------------------------------------- backend states

Deno.test("backend states: up, down, ejected, draining and disabled, each with a reason; only up gets traffic", async () => {
  const backends = await startTestBackends(["a", "b", "c"]);
  const [a, b] = backends;
  try {
    await using t = await startBalancer({
      health: { unhealthyThreshold: 2, healthyThreshold: 2 },
      outlier: { consecutiveFailures: 1, baseEjection: "1m", maxEjectionPercent: 100 },
      backends: entries(backends),
    });
    const pool = t.balancer.pool;
    const state = (id: string) => [pool.get(id)!.state, pool.get(id)!.reason];
    await waitFor(() => pool.backends.every((x) => x.lastProbe !== undefined), "first probes");
    assert.deepEqual(state("a"), ["up", "health check passed"]);

    // down: the health check fails unhealthyThreshold times in a row.
    a.healthy = false;
    await probeUntil(t, pool.get("a")!, "down");
    assert.deepEqual(state("a"), ["down", "health check returned status 503"]);
    assert.deepEqual(tally(await sequence(t.url, 4)), { b: 2, c: 2 });
    a.healthy = true;
    await probeUntil(t, pool.get("a")!, "up");
    assert.deepEqual(state("a"), ["up", "health check passed"]);

    // draining: no new requests; in-flight ones finish, then the drain resolves.
    const inflight = hit(`${t.url}/hold`); // round robin: goes to some backend
    await waitFor(() => backends.some((x) => x.held === 1), "held request");
    const holder = backends.find((x) => x.held === 1)!;
    let drained = false;
    const drain = t.balancer.drain(holder.name).then(() => drained = true);
    assert.deepEqual(state(holder.name), ["draining", "draining by operator"]);
    await t.balancer.sync(); // every worker thread has seen it

    assert.ok(!(await sequence(t.url, 4)).includes(holder.name));
    assert.equal(drained, false);
    holder.release();
    assert.equal((await inflight).status, 200);
    await drain;
    await t.balancer.enable(holder.name);
    assert.deepEqual(state(holder.name), ["up", "enabled by operator"]);

    // disabled: out of service at once.
    await t.balancer.disable("b");
    assert.deepEqual(state("b"), ["disabled", "disabled by operator"]);
    assert.ok(!(await sequence(t.url, 4)).includes("b"));
    await t.balancer.enable("b");

    // ejected: one 5xx is enough with consecutiveFailures 1.
    b.status = 500;
    while (pool.get("b")!.state === "up") await hit(t.url);
    assert.deepEqual(state("b"), [
      "ejected",
      "ejected for 60000ms after 1 consecutive failures: status 500",
    ]);

    // Nothing up: 503 without Retry-After (not a capacity problem).
    await t.balancer.disable("a");
    await t.balancer.disable("c");
    const none = await hit(t.url);
    assert.equal(none.status, 503);
    assert.equal(none.headers.get("retry-after"), null);
  } finally {
    await stopAll(backends);
  }
});
