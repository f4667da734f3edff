/**
 * Hot reload, end to end: sluice runs as a subprocess; SIGHUP and `--watch` reload its
 * config file. Traffic is checked by which backend answers; reloads by the log lines.
 */
import assert from "node:assert/strict";
import { waitFor } from "./helpers.ts";
import {
  configDir,
  get,
  PATIENCE,
  sighupReload,
  startSluice,
  startTestBackends,
  tally,
  type TestBackend,
} from "./ops_helpers.ts";
import { RawClient } from "./proxy_helpers.ts";

type Entry = TestBackend | { backend: TestBackend; weight: number };

/** A config file body: the listed backends (named after the test backend), probes every minute. */
function config(entries: Entry[], extra: Record<string, unknown> = {}) {
  return {
    listen: { host: "127.0.0.1", port: 0 },
    health: { path: "/health", interval: "1m" },
    ...extra,
    backends: entries.map((e) => {
      const { backend, weight } = "backend" in e ? e : { backend: e, weight: 1 };
      return { name: backend.name, url: backend.url, weight };
    }),
  };
}

Deno.test("SIGHUP: backends added, removed, re-weighted and the strategy changed; traffic follows", async () => {
  await using backends = await startTestBackends("a", "b", "c");
  const [a, b, c] = backends;
  await using cfg = await configDir(config([a, b]));
  await using sluice = await startSluice(cfg.file);
  assert.deepEqual(await tally(sluice.url, 20), { a: 10, b: 10 });

  // a removed, c added, b:c weighted 3:1 under weighted round robin.
  await cfg.write(config([{ backend: b, weight: 3 }, { backend: c, weight: 1 }], {
    strategy: "weighted-round-robin",
  }));
  assert.match(await sighupReload(sluice), /configuration reloaded \(SIGHUP\) version=2/);
  assert.deepEqual(await tally(sluice.url, 40), { b: 30, c: 10 });
  await sluice.stderr.waitFor(new RegExp(`backend ${a.url} removed`));
  await sluice.stderr.waitFor(new RegExp(`backend ${c.url} added`));

  // a back, consistent hashing on a header: each user sticks to one backend.
  await cfg.write(config([a, b, c], { strategy: "consistent-hash", hashKey: "header:x-user" }));
  assert.match(await sighupReload(sluice), /version=3/);
  const owners = new Set<string>();
  for (let user = 0; user < 12; user++) {
    const counts = await tally(sluice.url, 4, { "x-user": `user-${user}` });
    assert.equal(Object.keys(counts).length, 1, `user-${user} spread: ${JSON.stringify(counts)}`);
    owners.add(Object.keys(counts)[0]);
  }
  assert.deepEqual([...owners].sort(), ["a", "b", "c"]);
  assert.equal(sluice.stderr.matching(/configuration rejected/).length, 0);
});

Deno.test({
  name: "SIGHUP: sent as soon as sluice says it is listening, reloads instead of killing it",
  async fn() {
    await using backends = await startTestBackends("a");
    await using cfg = await configDir(config(backends));
    for (let i = 0; i < 3; i++) {
      await using sluice = await startSluice(cfg.file, [], { settle: false });
      sluice.kill("SIGHUP");
      const died = sluice.process.status.then((s) => {
        throw new Error(`sluice exited with ${JSON.stringify(s)}`);
      });
      died.catch(() => {}); // it does exit at the end of the iteration
      await Promise.race([died, sluice.stderr.waitFor(/configuration reloaded \(SIGHUP\)/)]);
      assert.deepEqual(await tally(sluice.url, 2), { a: 2 });
    }
  },
});

Deno.test("SIGHUP: a listen change needs a restart; everything else applies and the old address keeps serving", async () => {
  await using backends = await startTestBackends("a", "b");
  const [a, b] = backends;
  await using cfg = await configDir(config([a]));
  await using sluice = await startSluice(cfg.file);
  await cfg.write({ ...config([b]), listen: { host: "127.0.0.1", port: 1 } });
  await sighupReload(sluice);
  await sluice.stderr.waitFor(/WARN .*listen address changes take effect after a restart/);
  assert.deepEqual(await tally(sluice.url, 3), { b: 3 });
  // Same address, other settings a listener is opened with: the warning names them.
  await cfg.write({ ...config([a]), listen: { host: "127.0.0.1", port: 1, http2: true } });
  await sighupReload(sluice);
  await sluice.stderr.waitFor(/WARN .*listener http2 changes take effect after a restart/);
  assert.equal(
    sluice.stderr.matching(/listen address changes/).length,
    1,
    "said once, for the move",
  );
  assert.deepEqual(await tally(sluice.url, 3), { a: 3 });
});

Deno.test("SIGHUP: an invalid config is rejected with every problem logged; the old one keeps serving", async () => {
  await using backends = await startTestBackends("a", "b");
  const [a, b] = backends;
  await using cfg = await configDir(config([a]));
  await using sluice = await startSluice(cfg.file);

  await cfg.write({
    ...config([a, b]),
    strategy: "fastest",
    health: { path: "/health", interval: "soon" },
    backends: [{ url: "ftp://127.0.0.1:21" }, { url: b.url, weight: -1 }],
    bogus: true,
  });
  sluice.kill("SIGHUP");
  await sluice.stderr.waitFor(/ERROR configuration rejected \(SIGHUP\); keeping the previous one/);
  for (
    const problem of [
      "strategy: must be one of",
      "backends[0].url: must be an http:// or https:// URL",
      "backends[1].weight",
      "health.interval: must be a duration",
      "bogus: unknown key",
    ]
  ) {
    await waitFor(
      () => sluice.stderr.lines.some((l) => l.includes("ERROR") && l.includes(problem)),
      `${problem} to be logged`,
      PATIENCE,
    );
  }
  assert.deepEqual(await tally(sluice.url, 4), { a: 4 });

  // Unparsable and missing files are rejected the same way.
  await cfg.write("{ not json");
  sluice.kill("SIGHUP");
  await sluice.stderr.waitFor(/configuration rejected/, 2);
  await Deno.remove(cfg.file);
  sluice.kill("SIGHUP");
  await sluice.stderr.waitFor(/configuration rejected/, 3);
  await sluice.stderr.waitFor(/ERROR .*config\.json: cannot read/);
  assert.deepEqual(await tally(sluice.url, 4), { a: 4 });
  assert.equal(sluice.stderr.matching(/configuration reloaded/).length, 0);

  // A valid file then applies; rejected attempts did not bump the version.
  await cfg.write(config([b]));
  assert.match(await sighupReload(sluice), /version=2/);
  assert.deepEqual(await tally(sluice.url, 4), { b: 4 });
});

Deno.test({
  name: "SIGHUP: an invalid config logs one error line per problem",
  async fn() {
    await using backends = await startTestBackends("a");
    await using cfg = await configDir(config(backends));
    await using sluice = await startSluice(cfg.file);
    await cfg.write({ ...config(backends), strategy: "fastest", bogus: true });
    sluice.kill("SIGHUP");
    await sluice.stderr.waitFor(/configuration rejected/);
    const strategy = await sluice.stderr.waitFor(/ERROR .*strategy: must be one of/);
    const bogus = await sluice.stderr.waitFor(/ERROR .*bogus: unknown key/);
    assert.equal(strategy.length, 1);
    assert.equal(bogus.length, 1);
    assert.notEqual(strategy[0], bogus[0], "both problems are on one line");
    assert.ok(!strategy[0].includes('\\"'), `escaped quotes in: ${strategy[0]}`);
  },
});

/** Waits until every response of a few requests comes from `name`. */
function servedOnlyBy(url: string, name: string, headers?: HeadersInit): Promise<void> {
  return waitFor(
    async () => (await tally(url, 4, headers))[name] === 4,
    `traffic to go to ${name} only`,
    PATIENCE,
  );
}

Deno.test("--watch: editing the config file applies it without a signal", async () => {
  await using backends = await startTestBackends("a", "b");
  const [a, b] = backends;
  await using cfg = await configDir(config([a]));
  await using sluice = await startSluice(cfg.file, ["--watch"]);
  assert.deepEqual(await tally(sluice.url, 2), { a: 2 });

  // Edited in place, as `echo … > file` or most editors do.
  await Deno.writeTextFile(cfg.file, JSON.stringify(config([b])));
  await servedOnlyBy(sluice.url, "b");
  await sluice.stderr.waitFor(/configuration reloaded \(file changed\)/);

  // A broken edit is rejected and the running config stays.
  await Deno.writeTextFile(cfg.file, JSON.stringify({ ...config([a]), strategy: "fastest" }));
  await sluice.stderr.waitFor(/configuration rejected \(file changed\)/);
  assert.deepEqual(await tally(sluice.url, 2), { b: 2 });

  // Fixing it applies it.
  await Deno.writeTextFile(cfg.file, JSON.stringify(config([a])));
  await servedOnlyBy(sluice.url, "a");
});

Deno.test({
  name: "--watch: keeps following the file after it is replaced by a rename (sed -i, vim, k8s)",
  async fn() {
    await using backends = await startTestBackends("a", "b");
    const [a, b] = backends;
    await using cfg = await configDir(config([a]));
    await using sluice = await startSluice(cfg.file, ["--watch"]);
    await cfg.write(config([b])); // write a sibling, rename it over the file
    await servedOnlyBy(sluice.url, "b");
    await cfg.write(config([a]));
    await servedOnlyBy(sluice.url, "a");
    await Deno.writeTextFile(cfg.file, JSON.stringify(config([b])));
    await servedOnlyBy(sluice.url, "b");
  },
});

Deno.test("SIGHUP: a slow in-flight request to a backend removed by the reload completes with 200", async () => {
  await using backends = await startTestBackends("a", "b");
  const [a, b] = backends;
  await using cfg = await configDir(config([a]));
  await using sluice = await startSluice(cfg.file);

  const slow = get(`${sluice.url}/hold`);
  await waitFor(() => a.held === 1, "the slow request to reach a", PATIENCE);
  await cfg.write(config([b]));
  await sighupReload(sluice);
  await sluice.stderr.waitFor(new RegExp(`backend ${a.url} removed`));
  assert.deepEqual(await tally(sluice.url, 4), { b: 4 });

  a.release();
  const { status, body } = await slow;
  assert.equal(status, 200);
  assert.equal(body, "held by a");
});

Deno.test("SIGHUP: a new response timeout applies to new requests; in-flight ones keep theirs", async () => {
  await using backends = await startTestBackends("a");
  const [a] = backends;
  await using cfg = await configDir(config([a], { timeouts: { response: "1m" } }));
  await using sluice = await startSluice(cfg.file);

  const before = get(`${sluice.url}/hold`);
  await waitFor(() => a.held === 1, "the first slow request to reach a", PATIENCE);
  await cfg.write(config([a], { timeouts: { response: "300ms" } }));
  await sighupReload(sluice);
  const after = await get(`${sluice.url}/hold`);
  assert.equal(after.status, 504);
  assert.equal(after.body, "Gateway Timeout");

  a.release();
  const first = await before;
  assert.equal(first.status, 200);
  assert.equal(first.body, "held by a");
});

Deno.test({
  name: "SIGHUP: new health check settings take effect at once, not after the old interval",
  async fn() {
    await using backends = await startTestBackends("a", "b");
    const [a, b] = backends;
    await using cfg = await configDir(config([a, b]));
    await using sluice = await startSluice(cfg.file);
    b.healthy = false; // not noticed yet: the next probe is a minute away
    await cfg.write(config([a, b], {
      health: { path: "/health", interval: "1s", timeout: "1s", unhealthyThreshold: 1 },
    }));
    await sighupReload(sluice);
    await sluice.stderr.waitFor(new RegExp(`backend ${b.url} is down`), 1, 10_000);
    assert.deepEqual(await tally(sluice.url, 4), { a: 4 });
  },
});

Deno.test("reload under load: 20 reloads adding and removing backends, keep-alive clients see zero failures", async () => {
  const NAMES = ["n0", "n1", "n2", "n3", "n4"];
  const STRATEGIES = ["round-robin", "least-connections", "weighted-round-robin", "power-of-two"];
  await using backends = await startTestBackends(...NAMES);
  const byName = new Map(backends.map((b) => [b.name, b]));
  // Config i: two neighbours on the ring of five, a third (weight 2) on odd i; so each
  // reload adds at least n((i+1)%5) and removes at least one backend.
  const configFor = (i: number) => {
    const entries: Entry[] = [backends[i % 5], backends[(i + 1) % 5]];
    if (i % 2) entries.push({ backend: backends[(i + 3) % 5], weight: 2 });
    return config(entries, { strategy: STRATEGIES[i % STRATEGIES.length] });
  };
  await using cfg = await configDir(configFor(0));
  await using sluice = await startSluice(cfg.file);

  const CLIENTS = 4;
  let running = true;
  let total = 0;
  const failures: string[] = [];
  const connections: number[] = [];
  const clients = Array.from({ length: CLIENTS }, async (_, c) => {
    connections[c] = 0;
    let client: RawClient | undefined;
    let closing = false; // the last response said `connection: close`
    try {
      while (running) {
        if (!client || client.closed || closing) {
          client?.close();
          client = await RawClient.connect(sluice.port);
          closing = false;
          connections[c]++;
        }
        try {
          // A few ms at the backend, so removed backends often have requests in flight.
          await client.send(`GET /?delay=${(total + c) % 8} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n`);
          const res = await client.readResponse();
          closing = res.header("connection")?.toLowerCase() === "close";
          if (res.status !== 200 || !byName.has(res.text())) {
            failures.push(`client ${c}: ${res.status} ${res.text()}`);
          }
          total++;
        } catch (err) {
          failures.push(`client ${c}: ${(err as Error).message}`);
        }
      }
    } finally {
      client?.close();
    }
  });

  try {
    for (let i = 1; i <= 20; i++) {
      const mark = total;
      await waitFor(() => total >= mark + 40 || failures.length > 0, "traffic", PATIENCE);
      await cfg.write(configFor(i));
      const line = await sighupReload(sluice);
      assert.match(line, new RegExp(`version=${i + 1}\\b`));
      // Traffic follows: the backend this reload added starts answering.
      const added = backends[(i + 1) % 5];
      const hits = added.hits;
      await waitFor(() => added.hits > hits, `traffic to ${added.name} (reload ${i})`, PATIENCE);
    }
    const mark = total;
    await waitFor(() => total >= mark + 40, "traffic after the last reload", PATIENCE);
  } finally {
    running = false;
    await Promise.all(clients);
  }

  assert.deepEqual(failures, []);
  assert.deepEqual(connections, Array(CLIENTS).fill(1), "a client connection was closed");
  assert.equal(sluice.stderr.matching(/configuration reloaded \(SIGHUP\)/).length, 20);
  assert.equal(sluice.stderr.matching(/configuration rejected/).length, 0);
  assert.deepEqual(sluice.stderr.matching(/upstream .* failed/), []);
  // The last config is in force: only n0 (20 % 5) and n1 answer now.
  const counts = await tally(sluice.url, 10);
  assert.deepEqual(Object.keys(counts).sort(), ["n0", "n1"]);
  assert.ok(total >= 21 * 40, `only ${total} requests`);
});
