/** GET /metrics after real traffic, read back with a Prometheus text-format parser. */
import assert from "node:assert/strict";
import parsePrometheus from "parse-prometheus-text-format";
import { validateConfig } from "../lib/config.ts";
import { startAdminFixture, traffic } from "./admin_fixture.ts";
import { backendUrl, waitFor } from "./helpers.ts";

interface Sample {
  value: string;
  labels?: Record<string, string>;
  buckets?: Record<string, string>;
  count?: string;
  sum?: string;
}
interface Family {
  name: string;
  help: string;
  type: string;
  metrics: Sample[];
}

interface Scrape extends Map<string, Family> {
  text: string;
}

async function scrape(base: string): Promise<Scrape> {
  const res = await fetch(base + "/metrics");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const text = await res.text();
  const families = parsePrometheus(text) as Family[];
  return Object.assign(new Map(families.map((f) => [f.name, f])), { text });
}

/** The value of the sample whose labels include `labels`, or undefined. */
function value(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const family = families.get(name);
  assert.ok(family, `metric ${name} is exposed`);
  const sample = family.metrics.find((m) =>
    Object.entries(labels).every(([k, v]) => m.labels?.[k] === v)
  );
  return sample === undefined ? undefined : Number(sample.value);
}

/**
 * One backend's series of a histogram. The parser only understands histograms without labels
 * (it folds label sets together and drops their _sum and _count), so it gets that backend's
 * lines with the backend label taken out.
 */
function histogram(m: Scrape, name: string, backend: string): Sample {
  const lines = m.text.split("\n").filter((line) =>
    line.startsWith(`# HELP ${name} `) || line.startsWith(`# TYPE ${name} `) ||
    (line.startsWith(`${name}_`) && line.includes(`backend="${backend}"`))
  );
  // Keep only the `le` label, so the family's series for this backend read as one histogram.
  const text = lines.join("\n").replace(/(pool|route|backend)="[^"]*",?/g, "").replaceAll("{}", "");
  const [family] = parsePrometheus(text + "\n") as Family[];
  assert.ok(family, `metric ${name} is exposed`);
  assert.equal(family.type, "HISTOGRAM");
  assert.equal(family.metrics.length, 1, `${name}{backend="${backend}"}`);
  return family.metrics[0];
}

/** Status codes of `n` requests, grouped by the backend port that answered (from the body). */
async function send(url: string, method: string, n: number, counts: Map<string, number>) {
  for (let i = 0; i < n; i++) {
    const res = await fetch(url + "/", { method });
    const port = /port: (\d+)/.exec(await res.text())?.[1] ?? "none";
    const key = `${port} ${method} ${res.status}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
}

Deno.test("metrics count real traffic by backend, method and code, with histograms", async () => {
  await using f = await startAdminFixture({
    backends: [{}, { failRate: 1 }],
    config: {
      health: { path: "/health" },
      // The failing backend is ejected after its third 5xx in a row.
      outlier: { consecutiveFailures: 3, maxEjectionPercent: 100 },
    },
  });
  const [a, b] = f.backends;
  // A passing probe would end the ejection early, so let the first ones finish before traffic.
  await waitFor(
    () => f.tb.balancer.pool.backends.every((b) => b.lastProbe !== undefined),
    "first health probes",
  );
  const counts = new Map<string, number>();
  await send(f.tb.url, "GET", 6, counts);
  await send(f.tb.url, "POST", 2, counts);
  const m = await scrape(f.base);

  const total = { a: 0, b: 0 };
  for (const [key, n] of counts) {
    const [port, method, code] = key.split(" ");
    const backend = port === String(a.port) ? "a" : port === String(b.port) ? "b" : "?";
    assert.equal(value(m, "sluice_requests_total", { backend, method, code }), n, key);
    if (backend === "a" || backend === "b") total[backend] += n;
  }
  assert.equal(total.a + total.b, 8);
  assert.equal(total.b, 3, "b answered three times before it was ejected");
  assert.equal(value(m, "sluice_requests_total", { backend: "b", method: "GET", code: "500" }), 3);
  assert.equal(value(m, "sluice_requests_total", { backend: "a", method: "POST", code: "200" }), 2);

  for (const name of ["sluice_request_duration_seconds", "sluice_upstream_response_seconds"]) {
    const h = histogram(m, name, "a");
    assert.equal(Number(h.count), total.a, `${name} count`);
    assert.ok(Number(h.sum) > 0, `${name} sum`);
    const buckets = Object.entries(h.buckets!)
      .map(([le, n]) => [le === "+Inf" ? Infinity : Number(le), Number(n)])
      .sort((x, y) => x[0] - y[0]);
    assert.equal(buckets.length, 15, "14 bounds and +Inf");
    assert.deepEqual(buckets.at(-1), [Infinity, total.a]);
    for (let i = 1; i < buckets.length; i++) {
      assert.ok(buckets[i][1] >= buckets[i - 1][1], `${name} buckets are cumulative`);
    }
  }

  assert.equal(value(m, "sluice_ejections_total", { backend: "b" }), 1);
  assert.equal(value(m, "sluice_ejections_total", { backend: "a" }), 0, "zero, not missing");
  assert.equal(value(m, "sluice_backend_state", { backend: "b", state: "ejected" }), 1);
  assert.equal(value(m, "sluice_backend_state", { backend: "b", state: "up" }), 0);
  assert.equal(value(m, "sluice_backend_up", { backend: "b" }), 0);
  assert.equal(value(m, "sluice_backend_up", { backend: "a" }), 1);
  assert.equal(value(m, "sluice_retries_total", { backend: "a" }), 0);
  assert.equal(value(m, "sluice_backend_weight", { backend: "a" }), 1);
  assert.equal(value(m, "sluice_backend_inflight_requests", { backend: "a" }), 0);
});

Deno.test("metrics show retries and connect errors when a backend stops answering", async () => {
  await using f = await startAdminFixture({ backends: 2 });
  await waitFor(
    () => f.tb.balancer.pool.backends.every((b) => b.lastProbe !== undefined),
    "first health probes",
  );
  await f.backends[1].shutdown();
  // Health checks run once a minute here, so b still looks up and gets tried.
  const bodies = await traffic(f.tb.url, 4);
  assert.ok(bodies.every((t) => t.includes(`port: ${f.backends[0].port}`)));
  const m = await scrape(f.base);
  assert.equal(value(m, "sluice_requests_total", { backend: "a", code: "200" }), 4);
  const failures = value(m, "sluice_upstream_errors_total", { backend: "b", kind: "connect" })!;
  assert.ok(failures >= 1, "connect failures to b are counted");
  assert.equal(value(m, "sluice_upstream_connect_errors_total", { backend: "b" }), failures);
  assert.equal(value(m, "sluice_retries_total", { backend: "a" }), failures, "each retried on a");
});

Deno.test("metrics show health state changes", async () => {
  await using f = await startAdminFixture({
    backends: [{}, {}],
    config: { health: { path: "/health", interval: "200ms", unhealthyThreshold: 1 } },
  });
  await f.backends[1].shutdown();
  await waitFor(async () => {
    const m = await scrape(f.base);
    return value(m, "sluice_backend_state", { backend: "b", state: "down" }) === 1;
  }, "b reported down");
  const m = await scrape(f.base);
  assert.equal(value(m, "sluice_backend_up", { backend: "b" }), 0);
  for (const id of ["a", "b"]) {
    const states = m.get("sluice_backend_state")!.metrics.filter((s) => s.labels?.backend === id);
    assert.equal(states.length, 5);
    assert.equal(states.filter((s) => s.value === "1").length, 1, `${id} has one state`);
  }
});

Deno.test("metrics show requests in flight", async () => {
  const release = Promise.withResolvers<void>();
  const held = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async () => {
    await release.promise;
    return new Response("done");
  });
  try {
    await using f = await startAdminFixture({ backends: 1 });
    f.tb.balancer.addBackend({
      url: `http://127.0.0.1:${held.addr.port}`,
      name: "held",
      weight: 1,
    });
    await f.tb.balancer.disable("a");
    const pending = fetch(f.tb.url + "/").then((r) => r.text());
    await waitFor(async () => {
      const m = await scrape(f.base);
      return value(m, "sluice_backend_inflight_requests", { backend: "held" }) === 1;
    }, "one request in flight");
    release.resolve();
    assert.equal(await pending, "done");
    const m = await scrape(f.base);
    assert.equal(value(m, "sluice_backend_inflight_requests", { backend: "held" }), 0);
  } finally {
    release.resolve();
    await held.shutdown();
  }
});

Deno.test("metrics show the config version and reload counters", async () => {
  await using f = await startAdminFixture({ backends: 1 });
  let m = await scrape(f.base);
  assert.equal(value(m, "sluice_config_version"), 1);
  assert.equal(value(m, "sluice_config_reloads_total", { outcome: "success" }), 0);
  assert.equal(value(m, "sluice_config_reloads_total", { outcome: "failure" }), 0);
  const start = value(m, "sluice_start_time_seconds")!;
  assert.ok(Math.abs(start * 1000 - f.tb.balancer.startedAt) < 1);

  f.tb.balancer.reload(validateConfig({
    listen: { host: "127.0.0.1", port: 0 },
    backends: [{ url: backendUrl(f.backends[0]), name: "a", weight: 4 }],
    health: { interval: "1m" },
  }));
  m = await scrape(f.base);
  assert.equal(value(m, "sluice_config_version"), 2);
  assert.equal(value(m, "sluice_backend_weight", { backend: "a" }), 4);
});

Deno.test("metric names, types and labels follow Prometheus conventions", async () => {
  await using f = await startAdminFixture({ backends: 1 });
  await traffic(f.tb.url, 2);
  const m = await scrape(f.base);
  assert.ok(m.size >= 15);
  for (const family of m.values()) {
    const { name, type } = family;
    assert.match(name, /^sluice_[a-z][a-z0-9_]*[a-z0-9]$/, name);
    assert.ok(family.help.length > 10, `${name} has help text`);
    if (type === "COUNTER") assert.match(name, /_total$/, `counter ${name} ends in _total`);
    else assert.doesNotMatch(name, /_total$/, `${type} ${name} does not end in _total`);
    if (type === "HISTOGRAM") assert.match(name, /_seconds$/, `${name} is in base units`);
    assert.doesNotMatch(name, /_(ms|milliseconds|count|sum|bucket)$/, name);
    for (const sample of family.metrics) {
      for (const label of Object.keys(sample.labels ?? {})) {
        assert.match(label, /^[a-z][a-z0-9_]*$/, `${name} label ${label}`);
      }
    }
  }
});

Deno.test("sluice_client_connections counts open client connections, and drops closed ones", async () => {
  await using f = await startAdminFixture({ backends: 1 });
  const before = value(await scrape(f.base), "sluice_client_connections");
  assert.equal(before, 0);
  // Three raw keep-alive connections, two requests each: three connections, not six.
  const conns = await Promise.all(
    [0, 1, 2].map(() => Deno.connect({ hostname: "127.0.0.1", port: f.tb.balancer.addr.port })),
  );
  try {
    for (let round = 0; round < 2; round++) {
      for (const conn of conns) {
        await conn.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        const buf = new Uint8Array(4096);
        let text = "";
        while (!/\r\n\r\n[\s\S]*port: \d+/.test(text)) {
          const n = await conn.read(buf);
          if (n === null) throw new Error("connection closed");
          text += new TextDecoder().decode(buf.subarray(0, n));
        }
      }
    }
    assert.equal(value(await scrape(f.base), "sluice_client_connections"), 3);
  } finally {
    for (const conn of conns) conn.close();
  }
  await waitFor(
    async () => value(await scrape(f.base), "sluice_client_connections") === 0,
    "closed connections to leave the gauge",
  );
});
