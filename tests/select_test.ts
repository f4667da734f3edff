/**
 * Selection strategies and sticky sessions: exact distributions on a real Pool, and the
 * same behaviour end to end through a balancer in front of real backends.
 */
import assert from "node:assert/strict";
import { startTestBalancer, waitFor } from "./helpers.ts";
import {
  ctxOf,
  entries,
  hit,
  picks,
  poolOf,
  runLoad,
  sequence,
  setHealthy,
  setInflight,
  startTestBackend,
  startTestBackends,
  stopAll,
  tally,
} from "./resilience_helpers.ts";
import { consistentHash } from "../lib/select/consistent_hash.ts";
import { createSelector } from "../lib/select/mod.ts";
import { latency } from "../lib/select/latency.ts";
import { leastConnections } from "../lib/select/least_connections.ts";
import { powerOfTwo } from "../lib/select/power_of_two.ts";
import { random } from "../lib/select/random.ts";
import { roundRobin } from "../lib/select/round_robin.ts";
import { smoothWeighted } from "../lib/select/weighted_round_robin.ts";

const WRR_CYCLE = ["a", "a", "b", "a", "c", "a", "a"];

/** Asserts each backend's share of `values` is within `tolerance` of `expected`. */
function assertShares(
  values: string[],
  expected: Record<string, number>,
  tolerance: number,
): void {
  const counts = tally(values);
  for (const [name, share] of Object.entries(expected)) {
    const got = (counts[name] ?? 0) / values.length;
    assert.ok(
      Math.abs(got - share) <= tolerance,
      `${name}: share ${got.toFixed(3)}, expected ${share.toFixed(3)} ± ${tolerance} (${
        JSON.stringify(counts)
      })`,
    );
  }
}

// ---------------------------------------------------------------- weighted round robin

Deno.test("weighted-round-robin: weights 5,1,1 give a a b a c a a in every window of 7", () => {
  const { pool } = poolOf([{ name: "a", weight: 5 }, { name: "b" }, { name: "c" }]);
  const seq = picks(smoothWeighted(pool), 70);
  for (let i = 0; i < seq.length; i += 7) assert.deepEqual(seq.slice(i, i + 7), WRR_CYCLE);
  // Every sliding window of 7 holds five a's, one b and one c, and a never runs five long.
  for (let i = 0; i + 7 <= seq.length; i++) {
    assert.deepEqual(tally(seq.slice(i, i + 7)), { a: 5, b: 1, c: 1 });
  }
  assert.ok(!seq.join("").includes("aaaaa"));
});

Deno.test("weighted-round-robin: retries take the other backends after the chosen one", () => {
  const { pool } = poolOf([{ name: "a", weight: 5 }, { name: "b" }, { name: "c" }]);
  const order = [...smoothWeighted(pool).candidates(ctxOf())].map((b) => b.id);
  assert.deepEqual(order, ["a", "b", "c"]);
});

Deno.test("weighted-round-robin: a backend that goes down drops out, and the rest keep their ratio", () => {
  const { pool, byName } = poolOf([{ name: "a", weight: 2 }, { name: "b" }, { name: "c" }]);
  const select = smoothWeighted(pool);
  setHealthy(pool, byName.a, false);
  const seq = picks(select, 40);
  assert.ok(!seq.includes("a"));
  assert.deepEqual(tally(seq), { b: 20, c: 20 });
  setHealthy(pool, byName.a, true);
  assertShares(picks(select, 400), { a: 0.5, b: 0.25, c: 0.25 }, 0.01);
});

Deno.test("weighted-round-robin through the balancer: a a b a c a a, repeated", async () => {
  const backends = await startTestBackends(["a", "b", "c"]);
  try {
    await using t = await startTestBalancer({
      strategy: "weighted-round-robin",
      backends: entries(backends, (b) => ({ weight: b.name === "a" ? 5 : 1 })),
    });
    const seq = await sequence(t.url, 21);
    assert.deepEqual(seq, [...WRR_CYCLE, ...WRR_CYCLE, ...WRR_CYCLE]);
  } finally {
    await stopAll(backends);
  }
});

// ---------------------------------------------------------------- round robin

Deno.test("round-robin: equal weights rotate strictly", () => {
  const { pool } = poolOf([{ name: "a" }, { name: "b" }, { name: "c" }]);
  assert.deepEqual(picks(roundRobin(pool), 9), ["a", "b", "c", "a", "b", "c", "a", "b", "c"]);
});

Deno.test("round-robin: unequal weights are honoured smoothly, like nginx", () => {
  const { pool } = poolOf([{ name: "a", weight: 2 }, { name: "b" }]);
  assert.deepEqual(picks(roundRobin(pool), 6), ["a", "b", "a", "a", "b", "a"]);
  const { pool: p2 } = poolOf([{ name: "a", weight: 5 }, { name: "b" }, { name: "c" }]);
  assert.deepEqual(picks(roundRobin(p2), 7), WRR_CYCLE);
});

Deno.test("round-robin: a down backend is skipped and the others keep rotating", () => {
  const { pool, byName } = poolOf([{ name: "a" }, { name: "b" }, { name: "c" }]);
  setHealthy(pool, byName.b, false);
  const seq = picks(roundRobin(pool), 6);
  assert.deepEqual(tally(seq), { a: 3, c: 3 });
  for (let i = 1; i < seq.length; i++) assert.notEqual(seq[i], seq[i - 1]);
});

Deno.test("round-robin through the balancer: strict rotation, every backend once per round", async () => {
  const backends = await startTestBackends(["a", "b", "c"]);
  try {
    await using t = await startTestBalancer({ backends: entries(backends) });
    const seq = await sequence(t.url, 12);
    assert.deepEqual(seq, ["a", "b", "c", "a", "b", "c", "a", "b", "c", "a", "b", "c"]);
  } finally {
    await stopAll(backends);
  }
});

// ---------------------------------------------------------------- least connections

Deno.test("least-connections: the backend with the fewest in-flight requests wins", () => {
  const { pool, byName } = poolOf([{ name: "a" }, { name: "b" }, { name: "c" }]);
  setInflight(byName.a, 3);
  setInflight(byName.b, 1);
  setInflight(byName.c, 2);
  const select = leastConnections(pool);
  assert.deepEqual(picks(select, 5), ["b", "b", "b", "b", "b"]);
  // Retries go on in order of load.
  assert.deepEqual([...select.candidates(ctxOf())].map((b) => b.id), ["b", "c", "a"]);
});

Deno.test("least-connections: ties are broken round robin", () => {
  const { pool } = poolOf([{ name: "a" }, { name: "b" }, { name: "c" }]);
  assert.deepEqual(picks(leastConnections(pool), 6), ["a", "b", "c", "a", "b", "c"]);
});

Deno.test("least-connections: in-flight counts are relative to weight, ties follow the weights", () => {
  const { pool, byName } = poolOf([{ name: "a", weight: 2 }, { name: "b" }]);
  const select = leastConnections(pool);
  // Idle: a tie, shared 2:1 like weighted round robin (nginx's least_conn).
  assert.deepEqual(picks(select, 6), ["a", "b", "a", "a", "b", "a"]);
  // a holds 2 on weight 2 (1 per unit), b holds 0: b.
  setInflight(byName.a, 2);
  assert.deepEqual(picks(select, 3), ["b", "b", "b"]);
  // a holds 3 on weight 2 (1.5 per unit), b holds 1 (1 per unit): b.
  setInflight(byName.a, 3);
  setInflight(byName.b, 1);
  assert.deepEqual(picks(select, 2), ["b", "b"]);
  // a holds 1 on weight 2 (0.5 per unit), b holds 1: a.
  setInflight(byName.a, 1);
  assert.deepEqual(picks(select, 2), ["a", "a"]);
});

Deno.test("least-connections through the balancer: new requests go to the idle backend while the others hold long ones", async () => {
  const backends = await startTestBackends(["a", "b", "c"]);
  try {
    await using t = await startTestBalancer({
      strategy: "least-connections",
      backends: entries(backends),
    });
    // Idle pool: ties are broken round robin.
    assert.deepEqual(await sequence(t.url, 6), ["a", "b", "c", "a", "b", "c"]);
    // Two long requests (held open by the backends) land on two different backends.
    const long = [hit(`${t.url}/hold/1`), hit(`${t.url}/hold/2`)];
    await waitFor(() => backends.reduce((n, b) => n + b.held, 0) === 2, "2 held requests");
    const busy = backends.filter((b) => b.held === 1).map((b) => b.name);
    assert.equal(busy.length, 2);
    const idle = backends.find((b) => b.held === 0)!.name;
    // Every quick request goes to the one idle backend.
    assert.deepEqual(await sequence(t.url, 15), Array(15).fill(idle));
    for (const b of backends) b.release();
    const answers = await Promise.all(long);
    assert.deepEqual(answers.map((a) => a.status), [200, 200]);
    assert.deepEqual(answers.map((a) => a.backend).sort(), busy.sort());
    // Once they finish, every backend gets its share again.
    const after = tally(await sequence(t.url, 30));
    for (const name of ["a", "b", "c"]) {
      assert.ok(after[name] >= 9 && after[name] <= 11, JSON.stringify(after));
    }
  } finally {
    await stopAll(backends);
  }
});

// ---------------------------------------------------------------- random and power of two

Deno.test("random: picks are proportional to weight", () => {
  const { pool } = poolOf([{ name: "a", weight: 1 }, { name: "b", weight: 2 }, {
    name: "c",
    weight: 3,
  }]);
  assertShares(picks(random(pool), 12_000), { a: 1 / 6, b: 2 / 6, c: 3 / 6 }, 0.03);
});

Deno.test("random: retries try every other backend once", () => {
  const { pool } = poolOf([{ name: "a" }, { name: "b" }, { name: "c" }]);
  const select = random(pool);
  for (let i = 0; i < 50; i++) {
    const order = [...select.candidates(ctxOf())].map((b) => b.id);
    assert.deepEqual([...order].sort(), ["a", "b", "c"]);
  }
});

Deno.test("power-of-two: idle picks are proportional to weight", () => {
  const { pool } = poolOf([{ name: "a", weight: 1 }, { name: "b", weight: 2 }, {
    name: "c",
    weight: 3,
  }]);
  assertShares(picks(powerOfTwo(pool), 12_000), { a: 1 / 6, b: 2 / 6, c: 3 / 6 }, 0.03);
});

Deno.test("power-of-two: the more loaded of the two choices is never taken", () => {
  const { pool, byName } = poolOf([{ name: "a" }, { name: "b" }, { name: "c" }]);
  setInflight(byName.a, 5);
  const seq = picks(powerOfTwo(pool), 3_000);
  assert.ok(!seq.includes("a"), "the busiest backend never wins a pair");
  assertShares(seq, { b: 0.5, c: 0.5 }, 0.05);
  // With two backends the less loaded one always wins.
  const { pool: p2, byName: n2 } = poolOf([{ name: "x" }, { name: "y" }]);
  setInflight(n2.x, 1);
  assert.deepEqual(tally(picks(powerOfTwo(p2), 200)), { y: 200 });
});

Deno.test("random and power-of-two through the balancer: roughly proportional to weight", async () => {
  const backends = await startTestBackends(["a", "b"]);
  try {
    for (const strategy of ["random", "power-of-two"]) {
      await using t = await startTestBalancer({
        strategy,
        backends: entries(backends, (b) => ({ weight: b.name === "a" ? 3 : 1 })),
      });
      const seq = await sequence(t.url, 400);
      assertShares(seq, { a: 0.75, b: 0.25 }, 0.1);
    }
  } finally {
    await stopAll(backends);
  }
});

// ---------------------------------------------------------------- latency (peak EWMA)

Deno.test("latency: a backend with a high recent latency is avoided, and tried again as it fades", () => {
  const { pool, byName } = poolOf([{ name: "a" }, { name: "b" }, { name: "c" }]);
  const now = Date.now();
  byName.a.observeLatency(2, now);
  byName.b.observeLatency(2, now);
  byName.c.observeLatency(150, now);
  const select = latency(pool);
  assert.ok(!picks(select, 500).includes("c"));
  // Measured 30 s ago, its remembered latency has faded: it is tried again.
  byName.c.setLatency(150, now - 30_000);
  assert.ok(picks(select, 500).includes("c"));
  // Unmeasured backends are tried first, so they get measured.
  const { pool: fresh, byName: f } = poolOf([{ name: "a" }, { name: "b" }]);
  f.a.observeLatency(5, now);
  assert.deepEqual(tally(picks(latency(fresh), 20)), { b: 20 });
});

Deno.test("latency through the balancer: a slow backend gets under 20% of traffic, and wins it back after it recovers", async () => {
  const backends = await startTestBackends(["a", "b", "c"]);
  const [, , slow] = backends;
  try {
    await using t = await startTestBalancer({ strategy: "latency", backends: entries(backends) });
    slow.delay = 150;
    const during = await runLoad(t.url, { clients: 4, maxMs: 2_500, maxRequests: 5_000 });
    assert.deepEqual(during.failures, []);
    const share = (during.byBackend.c ?? 0) / during.total;
    assert.ok(
      share < 0.2,
      `slow backend got ${(share * 100).toFixed(1)}% (${JSON.stringify(during)})`,
    );
    // It recovers: its remembered latency fades, it is tried again, and takes a fair share.
    slow.delay = 0;
    let recent: string[] = [];
    const after = await runLoad(t.url, {
      clients: 4,
      maxMs: 30_000,
      onAnswer: (name) => {
        recent.push(name);
        if (recent.length > 300) recent = recent.slice(-300);
      },
      stop: () => recent.length === 300 && (tally(recent).c ?? 0) >= 50,
    });
    assert.deepEqual(after.failures, []);
    assert.ok(
      (tally(recent).c ?? 0) >= 50,
      `slow backend did not win traffic back: ${JSON.stringify(after.byBackend)}`,
    );
  } finally {
    await stopAll(backends);
  }
});

// ---------------------------------------------------------------- consistent hashing

const KEYS = Array.from({ length: 1_000 }, (_, i) => `user-${i}`);

function owners(select: ReturnType<typeof consistentHash>): string[] {
  return KEYS.map((key) => picks(select, 1, ctxOf("/", { headers: { "x-user": key } }))[0]);
}

Deno.test("consistent-hash: the same key always reaches the same backend, spread evenly", () => {
  const names = ["a", "b", "c", "d", "e"];
  const { pool } = poolOf(names.map((name) => ({ name })));
  const select = consistentHash(pool, "header:x-user");
  const first = owners(select);
  assert.deepEqual(owners(select), first);
  // A separate balancer instance over the same backends agrees key for key.
  assert.deepEqual(
    owners(consistentHash(poolOf(names.map((name) => ({ name }))).pool, "header:x-user")),
    first,
  );
  for (const name of names) {
    const share = first.filter((o) => o === name).length / KEYS.length;
    assert.ok(share > 0.1 && share < 0.3, `${name} owns ${share}`);
  }
});

Deno.test("consistent-hash: removing 1 backend of 5 remaps only its own keys (at most 1/5 + 5%)", () => {
  const { pool } = poolOf(["a", "b", "c", "d", "e"].map((name) => ({ name })));
  const select = consistentHash(pool, "header:x-user");
  const before = owners(select);
  pool.remove("c");
  const after = owners(select);
  const moved = KEYS.filter((_, i) => before[i] !== after[i]);
  assert.ok(moved.length <= KEYS.length * (1 / 5 + 0.05), `${moved.length} keys moved`);
  assert.ok(KEYS.every((_, i) => before[i] === after[i] || before[i] === "c"));
  assert.ok(!after.includes("c"));
  assert.equal(moved.length, before.filter((o) => o === "c").length);
});

Deno.test("consistent-hash: a down backend's keys fail over, and come back when it is up", () => {
  const { pool, byName } = poolOf(["a", "b", "c", "d", "e"].map((name) => ({ name })));
  const select = consistentHash(pool, "header:x-user");
  const before = owners(select);
  setHealthy(pool, byName.d, false);
  const during = owners(select);
  assert.ok(KEYS.every((_, i) => before[i] === during[i] || before[i] === "d"));
  assert.ok(!during.includes("d"));
  setHealthy(pool, byName.d, true);
  assert.deepEqual(owners(select), before);
});

Deno.test("consistent-hash: each hashKey kind (ip, header, cookie, query, path) keys on its value", () => {
  const { pool } = poolOf(["a", "b", "c", "d", "e"].map((name) => ({ name })));
  const cases: [string, (k: string) => ReturnType<typeof ctxOf>][] = [
    ["ip", (k) => ctxOf("/x", { ip: `127.0.${k.length}.${Number(k.slice(5)) % 250}` })],
    ["header:X-Tenant", (k) => ctxOf("/x", { headers: { "x-tenant": k } })],
    ["cookie:session", (k) => ctxOf("/x", { headers: { cookie: `theme=dark; session=${k}` } })],
    ["query:user", (k) => ctxOf(`/x?page=2&user=${k}`)],
    ["path", (k) => ctxOf(`/files/${k}?v=${Math.random()}`)],
  ];
  for (const [kind, make] of cases) {
    const select = consistentHash(pool, kind);
    const seen = new Set<string>();
    for (const key of KEYS.slice(0, 200)) {
      const a = picks(select, 3, make(key));
      assert.equal(new Set(a).size, 1, `${kind}: ${key} went to ${a}`);
      // Built afresh (other parts of the request differ), the same key lands on the same backend.
      assert.equal(picks(select, 1, make(key))[0], a[0]);
      seen.add(a[0]);
    }
    assert.ok(seen.size >= 4, `${kind}: 200 keys reached only ${[...seen]}`);
  }
});

Deno.test("consistent-hash: requests without the key fall back to round robin", () => {
  const { pool } = poolOf(["a", "b", "c"].map((name) => ({ name })));
  for (const kind of ["header:x-user", "cookie:session", "query:user"]) {
    assert.deepEqual(picks(consistentHash(pool, kind), 6, ctxOf("/x?other=1")), [
      "a",
      "b",
      "c",
      "a",
      "b",
      "c",
    ]);
  }
});

Deno.test("consistent-hash through the balancer: header, cookie, query, path and ip keys", async () => {
  const backends = await startTestBackends(["a", "b", "c", "d"]);
  try {
    const cases: [string, (k: string) => [string, RequestInit]][] = [
      ["header:x-user", (k) => ["/", { headers: { "x-user": k } }]],
      ["cookie:sid", (k) => ["/", { headers: { cookie: `sid=${k}` } }]],
      ["query:user", (k) => [`/?user=${k}`, {}]],
      ["path", (k) => [`/${k}?n=1`, {}]],
    ];
    for (const [hashKey, make] of cases) {
      await using t = await startTestBalancer({
        strategy: "consistent-hash",
        hashKey,
        backends: entries(backends),
      });
      const reached = new Set<string>();
      for (let i = 0; i < 40; i++) {
        const [path, init] = make(`key-${i}`);
        const first = await sequence(`${t.url}${path}`, 3, init);
        assert.equal(new Set(first).size, 1, `${hashKey} key-${i}: ${first}`);
        reached.add(first[0]);
      }
      assert.ok(reached.size >= 3, `${hashKey}: 40 keys reached only ${[...reached]}`);
      // Without the key: round robin.
      if (hashKey !== "path") {
        assert.deepEqual(tally(await sequence(t.url + "/", 8)), { a: 2, b: 2, c: 2, d: 2 });
      }
    }
    // ip: every request from 127.0.0.1 reaches the same backend.
    await using t = await startTestBalancer({
      strategy: "consistent-hash",
      hashKey: "ip",
      backends: entries(backends),
    });
    assert.equal(new Set(await sequence(t.url, 12)).size, 1);
  } finally {
    await stopAll(backends);
  }
});

// ---------------------------------------------------------------- slow start in the strategies

Deno.test("slow start: effective weight ramps from 5% to full over slowStart", () => {
  const { pool, byName } = poolOf([{ name: "a", weight: 4 }, { name: "b", weight: 4 }], 10_000);
  const b = byName.b;
  const t0 = 1_000_000;
  pool.setUpSince(b, t0);
  assert.equal(pool.effectiveWeight(b, t0), 4 * 0.05);
  assert.equal(pool.effectiveWeight(b, t0 + 2_500), 1);
  assert.equal(pool.effectiveWeight(b, t0 + 5_000), 2);
  assert.equal(pool.effectiveWeight(b, t0 + 10_000), 4);
  assert.equal(pool.effectiveWeight(b, t0 + 60_000), 4);
  // A backend that comes back up starts a new ramp.
  setHealthy(pool, b, false);
  setHealthy(pool, b, true);
  assert.ok(Date.now() - b.upSince < 1_000);
  assert.ok(pool.effectiveWeight(b) < 4 * 0.2);
});

Deno.test("slow start: weighted strategies send a ramping backend its ramped share", () => {
  for (const make of [smoothWeighted, roundRobin, random, powerOfTwo, leastConnections]) {
    const { pool, byName } = poolOf([{ name: "a" }, { name: "b" }], 100_000);
    // b came back 10% into its ramp: effective weight 0.1 against a's 1.
    pool.setUpSince(byName.b, Date.now() - 10_000);
    const share = tally(picks(make(pool), 2_000)).b ?? 0;
    assert.ok(share > 2_000 * 0.04 && share < 2_000 * 0.15, `${make.name}: b got ${share} of 2000`);
    // Fully ramped: an even share.
    pool.setUpSince(byName.b, 0);
    const even = tally(picks(make(pool), 2_000)).b ?? 0;
    assert.ok(Math.abs(even - 1_000) < 150, `${make.name}: ramped b got ${even} of 2000`);
  }
});

Deno.test("slow start through the balancer: a re-enabled or added backend ramps its traffic share", async () => {
  const backends = await startTestBackends(["a", "b", "c"]);
  try {
    await using t = await startTestBalancer({
      strategy: "weighted-round-robin",
      slowStart: "1500ms",
      backends: entries(backends.slice(0, 2)),
    });
    const { balancer } = t;
    const a = balancer.pool.get("a")!;
    // Backends present at start ramp together; wait until that is over.
    await waitFor(() => balancer.pool.effectiveWeight(a) === 1, "a fully ramped", 10_000);
    await balancer.disable("b");
    await balancer.enable("b");
    const b = balancer.pool.get("b")!;
    const enabledAt = b.upSince;
    assert.ok(balancer.pool.effectiveWeight(b) < 0.2);
    // Early in the ramp b gets a small share...
    const early: string[] = [];
    while (Date.now() - enabledAt < 300) early.push(...(await sequence(t.url, 10)));
    const earlyShare = (tally(early).b ?? 0) / early.length;
    assert.ok(earlyShare < 0.25, `early share ${earlyShare} of ${early.length}`);
    // ...and once the ramp is over, an even one.
    await waitFor(() => balancer.pool.effectiveWeight(b) === 1, "b fully ramped", 10_000);
    const late = await sequence(t.url, 40);
    assert.deepEqual(tally(late), { a: 20, b: 20 });
    // A backend added at run time ramps up the same way.
    const c = balancer.addBackend({ url: backends[2].url, name: "c", weight: 1 });
    assert.ok(balancer.pool.effectiveWeight(c) < 0.2);
    const added = await sequence(t.url, 30);
    assert.ok((tally(added).c ?? 0) <= 5, `new backend got ${tally(added).c} of 30`);
  } finally {
    await stopAll(backends);
  }
});

// ---------------------------------------------------------------- sticky sessions

Deno.test("sticky sessions: the cookie names the backend, is honoured while it is up, and replaced when it is down", async () => {
  const backends = await startTestBackends(["alpha", "beta", "gamma"]);
  try {
    await using t = await startTestBalancer({
      sticky: { cookie: "lb", ttl: "1h" },
      health: { path: "/health" },
      backends: entries(backends),
    });
    const first = await hit(t.url);
    const setCookie = first.headers.get("set-cookie")!;
    assert.match(
      setCookie,
      new RegExp(`^lb=${first.backend}; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600$`),
    );
    assert.ok(!setCookie.includes("127.0.0.1") && !setCookie.includes(String(backends[0].port)));
    const pinned = first.backend!;
    const cookie = { cookie: `other=1; lb=${pinned}` };
    for (let i = 0; i < 10; i++) {
      const r = await hit(t.url, { headers: cookie });
      assert.equal(r.backend, pinned);
      assert.equal(r.headers.get("set-cookie"), null, "a valid cookie is not set again");
    }
    // Without a cookie, round robin goes on.
    assert.equal(new Set(await sequence(t.url, 6)).size, 3);
    // The pinned backend goes down: the client is moved and re-pinned.
    backends.find((b) => b.name === pinned)!.healthy = false;
    const pinnedBackend = t.balancer.pool.get(pinned)!;
    for (let i = 0; i < 5 && pinnedBackend.state !== "down"; i++) {
      await t.balancer.health.check(pinnedBackend); // probe now, as the health loop would
    }
    assert.equal(pinnedBackend.state, "down");
    const moved = await hit(t.url, { headers: cookie });
    assert.equal(moved.status, 200);
    assert.notEqual(moved.backend, pinned);
    assert.match(moved.headers.get("set-cookie")!, new RegExp(`^lb=${moved.backend};`));
    const repinned = { cookie: `lb=${moved.backend}` };
    assert.deepEqual(
      new Set(await sequence(t.url, 5, { headers: repinned })),
      new Set([moved.backend]),
    );
    // An unknown cookie value is ignored and replaced.
    const unknown = await hit(t.url, { headers: { cookie: "lb=nosuchbackend" } });
    assert.match(unknown.headers.get("set-cookie")!, new RegExp(`^lb=${unknown.backend};`));
  } finally {
    await stopAll(backends);
  }
});

Deno.test("sticky sessions: an unnamed backend's cookie is opaque, never its address", async () => {
  await using backend = await startTestBackend("solo");
  await using t = await startTestBalancer({
    sticky: { cookie: "lb" },
    backends: [{ url: backend.url }],
  });
  const r = await hit(t.url);
  const value = /^lb=([^;]+);/.exec(r.headers.get("set-cookie")!)![1];
  assert.match(value, /^[0-9a-f]{8}$/);
  assert.ok(!r.headers.get("set-cookie")!.includes("Max-Age"), "a session cookie without ttl");
  const again = await hit(t.url, { headers: { cookie: `lb=${value}` } });
  assert.equal(again.status, 200);
  assert.equal(again.headers.get("set-cookie"), null);
});

Deno.test("createSelector builds every configured strategy", () => {
  const { pool } = poolOf([{ name: "a" }, { name: "b" }]);
  for (
    const strategy of [
      "round-robin",
      "weighted-round-robin",
      "least-connections",
      "random",
      "power-of-two",
      "latency",
      "consistent-hash",
    ] as const
  ) {
    const select = createSelector(pool, { strategy, hashKey: "ip" });
    const order = [...select.candidates(ctxOf())].map((b) => b.id).sort();
    assert.deepEqual(order, ["a", "b"], strategy);
  }
});
