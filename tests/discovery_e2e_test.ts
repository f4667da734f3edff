/**
 * DNS discovery end to end: `main.ts` as a subprocess with `dns:` backend entries resolved
 * through a real dnsmasq on a loopback port, demo backends on 127.x.y.z addresses, traffic
 * through the balancer, and the admin API and metrics as an operator reads them.
 *
 * dnsmasq answers with a 1 s TTL while `discovery.interval` is 30 s: every change below is seen
 * within seconds only because the TTL is honoured.
 */
import assert from "node:assert/strict";
import { type DemoBackend, startBackend } from "../backend.ts";
import { startBackends } from "./helpers.ts";
import { dnsmasqSkipReason, startDnsmasq, waitFor } from "./dns_helpers.ts";
import { adminUrl, configDir, PATIENCE, type Sluice, startSluice } from "./ops_helpers.ts";

const skip = await dnsmasqSkipReason();
const SRV = "_http._tcp.web.internal";

/** A test that needs dnsmasq: ignored (with the reason printed once) where it cannot run. */
function dnsTest(name: string, fn: () => Promise<void>) {
  Deno.test({ name, ignore: skip !== undefined, fn });
}

/** sluice started from `config` (plus a loopback listener and admin port), with its admin URL. */
async function startWith(config: Record<string, unknown>): Promise<
  { sluice: Sluice; admin: string; [Symbol.asyncDispose](): Promise<void> }
> {
  const dir = await configDir({
    listen: { host: "127.0.0.1", port: 0 },
    admin: { host: "127.0.0.1", port: 0 },
    health: { interval: "1m" },
    log: { level: "debug" },
    ...config,
  });
  let sluice: Sluice;
  try {
    sluice = await startSluice(dir.file);
  } catch (err) {
    await dir[Symbol.asyncDispose]();
    throw err;
  }
  return {
    sluice,
    admin: await adminUrl(sluice),
    async [Symbol.asyncDispose]() {
      await sluice.stop();
      await dir[Symbol.asyncDispose]();
    },
  };
}

/** A backend as `GET /api/status` shows it (the fields these tests read). */
interface BackendView {
  id: string;
  url: string;
  state: string;
  weight: number;
  inflight: number;
  source?: string;
}

/**
 * Every backend in `GET /api/status`: under `backends`, or under each of `pools[].backends`
 * should the status be grouped by pool.
 */
async function statusBackends(admin: string): Promise<BackendView[]> {
  const res = await fetch(`${admin}/api/status`);
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  const out: BackendView[] = [];
  const visit = (value: unknown) => {
    if (Array.isArray(value)) value.forEach(visit);
    else if (value && typeof value === "object") {
      const o = value as Record<string, unknown>;
      if (typeof o.url === "string" && typeof o.state === "string") out.push(o as never);
      else Object.values(o).forEach(visit);
    }
  };
  visit(body.backends ?? body.pools ?? body);
  return out;
}

/** The sum of every sample of `name` on the admin `/metrics` (whatever its labels). */
async function metricSum(admin: string, name: string): Promise<number> {
  const text = await (await fetch(`${admin}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)`).exec(line);
    if (m) sum += Number(m[1]);
  }
  return sum;
}

/** Steady traffic: `workers` clients in a loop; every answer that is not a 200 is a failure. */
function steadyTraffic(url: string, workers = 6) {
  let running = true;
  const bodies = new Map<string, number>();
  const failures: string[] = [];
  let ok = 0;
  const loops = Array.from({ length: workers }, async () => {
    while (running) {
      try {
        const res = await fetch(url);
        const body = (await res.text()).trim();
        if (res.status === 200) {
          ok++;
          bodies.set(body, (bodies.get(body) ?? 0) + 1);
        } else failures.push(`${res.status} ${body}`);
      } catch (err) {
        failures.push(String(err));
      }
    }
  });
  return {
    get ok() {
      return ok;
    },
    bodies,
    failures,
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

/** Demo backends on the same port of several loopback addresses (an A record names addresses only). */
async function loopbackBackends(hosts: string[]): Promise<DemoBackend[]> {
  for (let tries = 0;; tries++) {
    const first = await startBackend({ hostname: hosts[0], port: 0, quiet: true });
    const started = [first];
    try {
      for (const hostname of hosts.slice(1)) {
        started.push(await startBackend({ hostname, port: first.port, quiet: true }));
      }
      return started;
    } catch (err) {
      await Promise.all(started.map((b) => b.shutdown()));
      if (tries >= 5) throw err; // the port was taken on another address: try another one
    }
  }
}

async function closeAll(backends: DemoBackend[]): Promise<void> {
  await Promise.all(backends.map((b) => b.shutdown()));
}

dnsTest(
  "A records: discovered backends take traffic, an added address joins, a removed one drains then leaves, no request fails",
  async () => {
    const [b2, b3, b4] = await loopbackBackends(["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    const port = b2.port;
    try {
      await using dns = await startDnsmasq({
        ttl: 1,
        hosts: { "api.internal": ["127.0.0.2", "127.0.0.3"] },
      });
      await using s = await startWith({
        backends: [{ dns: "api.internal", port, type: "A" }],
        discovery: { interval: "30s", nameServer: dns.nameServer },
      });
      const at = (host: string) => (list: BackendView[]) =>
        list.find((b) => b.url.includes(`${host}:${port}`));
      await waitFor(
        async () => {
          const list = await statusBackends(s.admin);
          return !!at("127.0.0.2")(list) && !!at("127.0.0.3")(list);
        },
        "both addresses in the pool",
        PATIENCE,
      );
      const traffic = steadyTraffic(`${s.sluice.url}/`);
      try {
        // Both discovered backends answer.
        const base2 = b2.requests, base3 = b3.requests;
        await waitFor(
          () => b2.requests > base2 + 10 && b3.requests > base3 + 10,
          "traffic on both",
          PATIENCE,
        );

        // An address appears: it joins the pool and takes traffic.
        const base4 = b4.requests;
        await dns.setHosts({ "api.internal": ["127.0.0.2", "127.0.0.3", "127.0.0.4"] });
        await waitFor(() => b4.requests > base4 + 10, "traffic on the new address", PATIENCE);

        // An address disappears while requests to it are in flight: it is drained (no new
        // requests, the in-flight ones finish with 200), then removed.
        b2.delay = 6_000;
        await waitFor(
          async () => (at("127.0.0.2")(await statusBackends(s.admin))?.inflight ?? 0) > 0,
          "a slow request in flight on 127.0.0.2",
          PATIENCE,
        );
        await dns.setHosts({ "api.internal": ["127.0.0.3", "127.0.0.4"] });
        const states = new Set<string>();
        let drainingAt = -1;
        await waitFor(
          async () => {
            const b = at("127.0.0.2")(await statusBackends(s.admin));
            if (b) {
              states.add(b.state);
              if (b.state === "draining" && drainingAt < 0) drainingAt = b2.requests;
            }
            return !b;
          },
          "127.0.0.2 to leave the pool",
          PATIENCE,
        );
        assert.ok(states.has("draining"), `states seen: ${[...states]}`);
        assert.equal(b2.requests, drainingAt, "no new request reached it once draining");
        const after = b2.requests;
        const base = b3.requests + b4.requests;
        await waitFor(() => b3.requests + b4.requests > base + 20, "more traffic", PATIENCE);
        assert.equal(b2.requests, after, "nothing reaches a removed address");
      } finally {
        await traffic.stop();
      }
      assert.deepEqual(traffic.failures, [], "zero failed requests across the changes");
      assert.ok(traffic.ok > 50, `only ${traffic.ok} requests`);
    } finally {
      await closeAll([b2, b3, b4]);
    }
  },
);

dnsTest(
  "SRV: ports and weights from the records; the lowest priority takes all traffic while any of it is up",
  async () => {
    const [a, b, backup] = await startBackends(3);
    const hello = (x: DemoBackend) => `Hello from backend server on port: ${x.port}`;
    try {
      await using dns = await startDnsmasq({
        ttl: 1,
        hosts: { "web.internal": ["127.0.0.1"] },
        srv: [
          { name: SRV, target: "web.internal", port: a.port, priority: 10, weight: 3 },
          { name: SRV, target: "web.internal", port: b.port, priority: 10, weight: 1 },
          { name: SRV, target: "web.internal", port: backup.port, priority: 20, weight: 1 },
        ],
      });
      await using s = await startWith({
        backends: [{ dns: SRV, type: "SRV" }],
        discovery: { interval: "30s", nameServer: dns.nameServer },
        health: {
          path: "/health",
          interval: "250ms",
          healthyThreshold: 1,
          unhealthyThreshold: 1,
        },
      });
      const view = async (x: DemoBackend) =>
        (await statusBackends(s.admin)).find((v) => v.url.endsWith(`:${x.port}`));
      await waitFor(async () => !!(await view(backup)), "the SRV backends", PATIENCE);
      assert.equal((await view(a))?.weight, 3);
      assert.equal((await view(b))?.weight, 1);

      const count = async (n: number) => {
        const seen = new Map<string, number>();
        for (let i = 0; i < n; i++) {
          const res = await fetch(`${s.sluice.url}/`);
          const body = (await res.text()).trim();
          assert.equal(res.status, 200, body);
          seen.set(body, (seen.get(body) ?? 0) + 1);
        }
        return seen;
      };
      // Priority 10 takes everything, shared 3:1.
      let seen = await count(80);
      assert.equal(
        seen.get(hello(backup)) ?? 0,
        0,
        "the backup gets nothing while priority 10 is up",
      );
      const shareA = seen.get(hello(a)) ?? 0;
      assert.ok(Math.abs(shareA - 60) <= 6, `3:1 expected, got ${[...seen]}`);
      assert.equal(shareA + (seen.get(hello(b)) ?? 0), 80);

      // One of priority 10 down: the other still takes all.
      a.healthy = false;
      await waitFor(async () => (await view(a))?.state === "down", "a down", PATIENCE);
      seen = await count(20);
      assert.deepEqual([...seen], [[hello(b), 20]]);

      // All of priority 10 down: priority 20 takes over.
      b.healthy = false;
      await waitFor(async () => (await view(b))?.state === "down", "b down", PATIENCE);
      seen = await count(20);
      assert.deepEqual([...seen], [[hello(backup), 20]]);

      // One of priority 10 back: it takes everything again.
      a.healthy = true;
      await waitFor(async () => (await view(a))?.state === "up", "a up", PATIENCE);
      seen = await count(20);
      assert.deepEqual([...seen], [[hello(a), 20]]);
    } finally {
      await closeAll([a, b, backup]);
    }
  },
);

dnsTest(
  "a failed lookup keeps serving the last set and counts sluice_discovery_errors_total",
  async () => {
    const backends = await startBackends(2);
    try {
      await using dns = await startDnsmasq({
        ttl: 1,
        hosts: { "web.internal": ["127.0.0.1"] },
        srv: backends.map((x) => ({ name: SRV, target: "web.internal", port: x.port })),
      });
      await using s = await startWith({
        backends: [{ dns: SRV, type: "SRV" }],
        discovery: { interval: "30s", nameServer: dns.nameServer },
      });
      await waitFor(
        async () => (await statusBackends(s.admin)).length === 2,
        "both backends",
        PATIENCE,
      );
      const before = await metricSum(s.admin, "sluice_discovery_errors_total");
      await dns.stop();
      const traffic = steadyTraffic(`${s.sluice.url}/`, 2);
      try {
        await waitFor(
          async () => (await metricSum(s.admin, "sluice_discovery_errors_total")) >= before + 2,
          "sluice_discovery_errors_total to rise",
          PATIENCE,
        );
        // Still both backends, both serving.
        assert.equal((await statusBackends(s.admin)).length, 2);
        const base = traffic.ok;
        await waitFor(() => traffic.ok > base + 20, "traffic while DNS is down", PATIENCE);
      } finally {
        await traffic.stop();
      }
      assert.deepEqual(traffic.failures, []);
      assert.equal(traffic.bodies.size, 2, "both backends kept serving");
      // The failure is logged with the DnsError's message: name, type and why.
      const why = new RegExp(`${SRV.replaceAll(".", "\\.")} SRV: no answer from 127\\.0\\.0\\.1:`);
      assert.ok(s.sluice.stderr.matching(why).length > 0, "a log line says what failed and why");
    } finally {
      await closeAll(backends);
    }
  },
);

dnsTest("the admin API shows each discovered backend's source", async () => {
  const [b] = await startBackends(1);
  try {
    await using dns = await startDnsmasq({
      hosts: { "api.internal": ["127.0.0.1"], "web.internal": ["127.0.0.1"] },
      srv: [{ name: SRV, target: "web.internal", port: b.port }],
    });
    // The same backend twice would collide: the A entry uses another (unused) port.
    await using s = await startWith({
      backends: [
        { dns: "api.internal", port: 1, type: "A" },
        { dns: SRV, type: "SRV" },
      ],
      discovery: { interval: "30s", nameServer: dns.nameServer },
    });
    await waitFor(
      async () => (await statusBackends(s.admin)).length === 2,
      "both entries resolved",
      PATIENCE,
    );
    const list = await statusBackends(s.admin);
    const bySource = Object.fromEntries(list.map((v) => [v.source, v.url]));
    assert.deepEqual(bySource, {
      "dns: api.internal": "http://127.0.0.1:1",
      [`dns: ${SRV}`]: `http://127.0.0.1:${b.port}`,
    });
  } finally {
    await closeAll([b]);
  }
});
