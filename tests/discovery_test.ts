/**
 * DNS discovery against a real dnsmasq on a loopback port: what each record type resolves to,
 * how failures read, and the runner's timing (TTL, interval), change detection, keeping the last
 * good answer, and stopping cleanly.
 */
import assert from "node:assert/strict";
import dgram from "node:dgram";
import {
  DnsError,
  type DnsTarget,
  type Endpoint,
  parseNameServer,
  resolveTarget,
  srvEndpoints,
  startDiscovery,
  systemNameServers,
} from "../lib/discovery/mod.ts";
import { dnsmasqSkipReason, startDnsmasq, waitFor } from "./dns_helpers.ts";

const skip = await dnsmasqSkipReason();
const PATIENCE = 30_000;
const SRV = "_http._tcp.web.internal";

/** A test that needs dnsmasq: ignored (with the reason printed once) where it cannot run. */
function dnsTest(name: string, fn: () => Promise<void>) {
  Deno.test({ name, ignore: skip !== undefined, fn });
}

/** host:port/priority/weight, compact for assertions. */
function show(endpoints: readonly Endpoint[]): string[] {
  return endpoints.map((e) => `${e.host}:${e.port}/p${e.priority}/w${e.weight}`);
}

/** Waits for `promise` to reject with a DnsError; returns it. */
async function dnsError(promise: Promise<unknown>): Promise<DnsError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof DnsError, `expected a DnsError, got ${err}`);
    return err;
  }
  assert.fail("expected the lookup to fail");
}

// ---------------------------------------------------------------- one resolution

dnsTest("A: every address on the given port, sorted numerically, with the TTL", async () => {
  await using dns = await startDnsmasq({
    ttl: 42,
    hosts: { "api.internal": ["127.0.0.10", "127.0.0.9", "127.0.0.2"] },
  });
  const r = await resolveTarget({ dns: "api.internal", port: 8080, type: "A" }, {
    nameServer: dns.nameServer,
  });
  assert.deepEqual(show(r.endpoints), [
    "127.0.0.2:8080/p0/w1",
    "127.0.0.9:8080/p0/w1",
    "127.0.0.10:8080/p0/w1",
  ]);
  assert.equal(r.ttl, 42);
  // A trailing dot and upper case are the same name; A is the default type.
  const again = await resolveTarget({ dns: "API.internal.", port: 8080 }, {
    nameServer: dns.nameServer,
  });
  assert.deepEqual(again.endpoints, r.endpoints);
});

dnsTest("AAAA and A+AAAA: IPv6 addresses unbracketed, IPv4 sorted first", async () => {
  await using dns = await startDnsmasq({
    hosts: { "v6.internal": ["::1"], "both.internal": ["127.0.0.3", "::1"] },
  });
  const ns = { nameServer: dns.nameServer };
  const v6 = await resolveTarget({ dns: "v6.internal", port: 81, type: "AAAA" }, ns);
  assert.deepEqual(show(v6.endpoints), ["::1:81/p0/w1"]);
  const both = await resolveTarget({ dns: "both.internal", port: 81, type: "A+AAAA" }, ns);
  assert.deepEqual(show(both.endpoints), ["127.0.0.3:81/p0/w1", "::1:81/p0/w1"]);
  // A+AAAA of a name with only IPv4 addresses is fine; AAAA alone is an empty answer.
  const v4only = await resolveTarget({ dns: "both.internal", port: 81, type: "A" }, ns);
  assert.equal(v4only.endpoints.length, 1);
  const err = await dnsError(resolveTarget({ dns: "v6.internal", port: 81, type: "A" }, ns));
  assert.equal(err.kind, "nodata");
  assert.match(err.message, /^v6\.internal A: no A records$/);
});

dnsTest(
  "SRV: targets resolved (A and AAAA), ports, priorities and weights kept, sorted",
  async () => {
    await using dns = await startDnsmasq({
      ttl: 60,
      hosts: {
        "a.internal": ["127.0.0.2"],
        "b.internal": ["127.0.0.3"],
        "c.internal": ["127.0.0.4", "::1"],
        "backup.internal": ["127.0.0.5"],
      },
      srv: [
        { name: SRV, target: "backup.internal", port: 9000, priority: 20, weight: 0 },
        { name: SRV, target: "b.internal", port: 8002, priority: 10, weight: 30 },
        { name: SRV, target: "a.internal", port: 8001, priority: 10, weight: 60 },
        { name: SRV, target: "c.internal", port: 8003, priority: 10, weight: 20 },
      ],
    });
    const r = await resolveTarget({ dns: SRV, type: "SRV" }, { nameServer: dns.nameServer });
    assert.deepEqual(show(r.endpoints), [
      "127.0.0.2:8001/p10/w60",
      "127.0.0.3:8002/p10/w30",
      // c's weight 20 is split over its two addresses: a dual-stack target does not count double.
      "127.0.0.4:8003/p10/w10",
      "::1:8003/p10/w10",
      // Alone in its priority with weight 0: it gets the whole of that priority.
      "127.0.0.5:9000/p20/w1",
    ]);
    assert.equal(r.ttl, 60);
  },
);

Deno.test("SRV weights: RFC 2782 shares mapped to sluice's 1..1000", () => {
  const addrs: Record<string, string[]> = {
    a: ["10.0.0.1"],
    b: ["10.0.0.2"],
    z: ["10.0.0.3"],
    gone: [],
  };
  const of = (t: string) => addrs[t];
  const srv = (target: string, weight: number, priority = 1, port = 80) => ({
    target,
    weight,
    priority,
    port,
  });
  // Whole numbers up to 1000 are kept as DNS says them.
  assert.deepEqual(show(srvEndpoints([srv("a", 3), srv("b", 1)], of)), [
    "10.0.0.1:80/p1/w3",
    "10.0.0.2:80/p1/w1",
  ]);
  // Weight 0 next to others: "a very small chance", 1/1000 of the heaviest, never none.
  assert.deepEqual(show(srvEndpoints([srv("a", 5), srv("z", 0)], of)), [
    "10.0.0.1:80/p1/w1000",
    "10.0.0.3:80/p1/w1",
  ]);
  // All zero: equal shares.
  assert.deepEqual(show(srvEndpoints([srv("a", 0), srv("b", 0)], of)), [
    "10.0.0.1:80/p1/w1",
    "10.0.0.2:80/p1/w1",
  ]);
  // Above 1000: scaled down, proportions kept, at least 1.
  assert.deepEqual(show(srvEndpoints([srv("a", 65535), srv("b", 32768), srv("z", 1)], of)), [
    "10.0.0.1:80/p1/w1000",
    "10.0.0.2:80/p1/w500",
    "10.0.0.3:80/p1/w1",
  ]);
  // Priorities are scaled separately; a target without addresses is dropped.
  assert.deepEqual(show(srvEndpoints([srv("a", 2000, 1), srv("b", 7, 2), srv("gone", 9, 1)], of)), [
    "10.0.0.1:80/p1/w1000",
    "10.0.0.2:80/p2/w7",
  ]);
  // The same address and port twice: the lower priority wins; equal priorities add up.
  assert.deepEqual(show(srvEndpoints([srv("a", 5, 2), srv("a", 3, 1)], of)), [
    "10.0.0.1:80/p1/w3",
  ]);
  assert.deepEqual(show(srvEndpoints([srv("a", 5), srv("a", 3)], of)), ["10.0.0.1:80/p1/w8"]);
});

dnsTest("SRV: a target without addresses is skipped; none at all is an error", async () => {
  await using dns = await startDnsmasq({
    hosts: { "a.internal": ["127.0.0.2"] },
    srv: [
      { name: SRV, target: "a.internal", port: 8001, priority: 1, weight: 1 },
      { name: SRV, target: "missing.internal", port: 8002, priority: 1, weight: 1 },
      { name: "_none._tcp.web.internal", target: "missing.internal", port: 1 },
    ],
  });
  const ns = { nameServer: dns.nameServer };
  const r = await resolveTarget({ dns: SRV, type: "SRV" }, ns);
  assert.deepEqual(show(r.endpoints), ["127.0.0.2:8001/p1/w1"]);
  const err = await dnsError(resolveTarget({ dns: "_none._tcp.web.internal", type: "SRV" }, ns));
  assert.equal(err.kind, "nodata");
  assert.match(err.message, /no target has an address \(missing\.internal\)/);
});

dnsTest("a CNAME is followed to its addresses, its TTL counted", async () => {
  await using dns = await startDnsmasq({
    ttl: 30,
    hosts: { "real.internal": ["127.0.0.7"] },
    cnames: { "alias.internal": "real.internal" },
  });
  const r = await resolveTarget({ dns: "alias.internal", port: 1 }, {
    nameServer: dns.nameServer,
  });
  assert.deepEqual(show(r.endpoints), ["127.0.0.7:1/p0/w1"]);
  assert.equal(r.ttl, 30);
});

dnsTest("more addresses than fit in a UDP answer: retried over TCP, all of them", async () => {
  const many = Array.from({ length: 120 }, (_, i) => `127.0.1.${i + 1}`);
  await using dns = await startDnsmasq({ hosts: { "many.internal": many } });
  const r = await resolveTarget({ dns: "many.internal", port: 80 }, { nameServer: dns.nameServer });
  assert.equal(r.endpoints.length, 120);
  assert.equal(r.endpoints[119].host, "127.0.1.120");
});

dnsTest("failures say why: NXDOMAIN, REFUSED, timeout, bad input", async () => {
  await using dns = await startDnsmasq({ hosts: { "api.internal": ["127.0.0.2"] } });
  const ns = { nameServer: dns.nameServer, timeout: 500, attempts: 1 };
  let err = await dnsError(resolveTarget({ dns: "nope.internal", port: 80 }, ns));
  assert.equal(err.kind, "nxdomain");
  assert.equal(err.message, "nope.internal A: NXDOMAIN (no such name)");
  // dnsmasq has no upstream: names outside its local domain are refused.
  err = await dnsError(resolveTarget({ dns: "api.example", port: 80 }, ns));
  assert.equal(err.kind, "refused");
  assert.equal(err.message, `api.example A: REFUSED from ${dns.nameServer}`);
  err = await dnsError(resolveTarget({ dns: "api.internal", type: "SRV", port: 80 }, ns));
  assert.equal(err.kind, "config");
  err = await dnsError(resolveTarget({ dns: "api.internal", type: "A" }, ns));
  assert.equal(err.kind, "config");
  assert.match(err.message, /a port \(1-65535\) is required/);
  await dns.stop();
  const started = Date.now();
  err = await dnsError(resolveTarget({ dns: "api.internal", port: 80 }, ns));
  assert.equal(err.kind, "timeout");
  assert.equal(err.message, `api.internal A: no answer from ${dns.nameServer} within 500ms`);
  assert.ok(Date.now() - started < 10_000);
});

Deno.test("nameServer: an IP address with an optional port", () => {
  assert.deepEqual(parseNameServer("127.0.0.1:5353"), { host: "127.0.0.1", port: 5353 });
  assert.deepEqual(parseNameServer("10.0.0.2"), { host: "10.0.0.2", port: 53 });
  assert.deepEqual(parseNameServer("[::1]:5353"), { host: "::1", port: 5353 });
  assert.deepEqual(parseNameServer("fd00::0:53"), { host: "fd00::53", port: 53 });
  for (const bad of ["dns.internal:53", "127.0.0.1:0", "127.0.0.1:70000", "300.1.1.1", ""]) {
    assert.throws(() => parseNameServer(bad), /must be an IP address with an optional port/, bad);
  }
});

/**
 * A name server of our own over UDP for answers dnsmasq never gives: `answer` turns each question
 * (the raw query) into the datagrams to send back, in order.
 */
async function fakeServer(answer: (query: Uint8Array) => Uint8Array[]) {
  const socket = dgram.createSocket("udp4");
  const questions: Uint8Array[] = [];
  socket.on("message", (msg: Uint8Array, from: { port: number; address: string }) => {
    questions.push(msg);
    for (const reply of answer(msg)) socket.send(reply, from.port, from.address);
  });
  await new Promise<void>((r) => socket.bind(0, "127.0.0.1", r));
  return {
    nameServer: `127.0.0.1:${socket.address().port}`,
    questions,
    [Symbol.asyncDispose]: () => new Promise<void>((r) => socket.close(() => r())),
  };
}

/**
 * A response to `query`: its id and question, then `flags`, and an A record for `address` with
 * `ttl` unless `address` is undefined. The query's EDNS OPT record is not echoed.
 */
function reply(
  query: Uint8Array,
  { id, flags = 0x8180, address, ttl = 60 }: {
    id?: number;
    flags?: number;
    address?: string;
    ttl?: number;
  },
): Uint8Array {
  let end = 12;
  while (query[end] !== 0) end += query[end] + 1;
  end += 5; // root label, QTYPE, QCLASS
  const answer = address === undefined ? [] : [
    0xc0,
    12, // the name: a pointer to the question's
    0,
    1,
    0,
    1,
    (ttl >>> 24) & 255,
    (ttl >>> 16) & 255,
    (ttl >>> 8) & 255,
    ttl & 255,
    0,
    4,
    ...address.split(".").map(Number),
  ];
  const out = new Uint8Array([...query.subarray(0, end), ...answer]);
  const view = new DataView(out.buffer);
  if (id !== undefined) view.setUint16(0, id);
  view.setUint16(2, flags);
  view.setUint16(6, address === undefined ? 0 : 1);
  view.setUint16(10, 0);
  return out;
}

Deno.test("odd answers: others' ids and garbage ignored, FORMERR retried without EDNS, SERVFAIL", async () => {
  await using server = await fakeServer((q) => {
    const id = new DataView(q.buffer, q.byteOffset).getUint16(0);
    const edns = new DataView(q.buffer, q.byteOffset).getUint16(10) === 1;
    const name = new TextDecoder().decode(q.subarray(13, 13 + q[12]));
    if (name === "servfail") return [reply(q, { flags: 0x8182 })];
    if (edns) return [reply(q, { flags: 0x8181 })]; // FORMERR: "what is this OPT record?"
    return [
      reply(q, { id: id ^ 1, address: "10.9.9.9" }), // an answer to someone else
      new Uint8Array([1, 2, 3]), // not DNS at all
      reply(q, { address: "10.1.2.3", ttl: 0x80000005 }), // RFC 2181: top bit set means 0
    ];
  });
  const ns = { nameServer: server.nameServer, timeout: 2_000, attempts: 1 };
  const r = await resolveTarget({ dns: "old.internal", port: 80 }, ns);
  assert.deepEqual(show(r.endpoints), ["10.1.2.3:80/p0/w1"]);
  assert.equal(r.ttl, 0);
  assert.equal(server.questions.length, 2, "asked with EDNS, then without");
  const err = await dnsError(resolveTarget({ dns: "servfail.internal", port: 80 }, ns));
  assert.equal(err.kind, "servfail");
  assert.equal(err.message, `servfail.internal A: SERVFAIL from ${server.nameServer}`);
});

Deno.test("without nameServer: the nameserver lines of resolv.conf", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/resolv.conf`;
    await Deno.writeTextFile(
      file,
      "# generated\nsearch example.com\nnameserver 10.0.0.53\nnameserver fd00::53\n" +
        "nameserver fe80::1%eth0\nnameserver not-an-ip\noptions ndots:5\n",
    );
    assert.deepEqual(await systemNameServers(file), [
      { host: "10.0.0.53", port: 53 },
      { host: "fd00::53", port: 53 },
    ]);
    await Deno.writeTextFile(file, "search example.com\n");
    assert.deepEqual(await systemNameServers(file), [{ host: "127.0.0.1", port: 53 }]);
    await assert.rejects(systemNameServers(`${dir}/missing`), (err: DnsError) => {
      assert.equal(err.kind, "config");
      assert.match(err.message, /cannot read .*missing.*; set discovery\.nameServer/);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------- the runner

/** Collects a runner's callbacks. */
function recorder<T extends DnsTarget>() {
  const updates: { target: T; endpoints: string[] }[] = [];
  const errors: { target: T; error: Error }[] = [];
  return {
    updates,
    errors,
    onUpdate: (target: T, endpoints: readonly Endpoint[]) =>
      void updates.push({ target, endpoints: show(endpoints) }),
    onError: (target: T, error: Error) => void errors.push({ target, error }),
  };
}

dnsTest("runner: the first answer is reported and ready settles", async () => {
  await using dns = await startDnsmasq({
    hosts: { "api.internal": ["127.0.0.2"], "b.internal": ["127.0.0.3"] },
    srv: [{ name: SRV, target: "b.internal", port: 8002, priority: 1, weight: 5 }],
  });
  const api = { dns: "api.internal", port: 8080, type: "A" as const };
  const web = { dns: SRV, type: "SRV" as const };
  const rec = recorder<DnsTarget>();
  await using discovery = startDiscovery([api, web], { nameServer: dns.nameServer, ...rec });
  await discovery.ready;
  assert.equal(rec.errors.length, 0);
  assert.deepEqual(rec.updates.find((u) => u.target === api)?.endpoints, ["127.0.0.2:8080/p0/w1"]);
  assert.deepEqual(rec.updates.find((u) => u.target === web)?.endpoints, ["127.0.0.3:8002/p1/w5"]);
  assert.equal(discovery.endpoints(api)?.[0].host, "127.0.0.2");
});

dnsTest(
  "runner: a 1 s TTL is re-resolved within seconds although the interval is 30 s",
  async () => {
    await using dns = await startDnsmasq({ ttl: 1, hosts: { "api.internal": ["127.0.0.2"] } });
    const api = { dns: "api.internal", port: 8080 };
    const rec = recorder<DnsTarget>();
    await using discovery = startDiscovery([api], {
      interval: 30_000,
      nameServer: dns.nameServer,
      ...rec,
    });
    await discovery.ready;
    const first = Date.now();
    const asked = () => dns.queries(/query\[A\] api\.internal /).length;
    await waitFor(() => asked() >= 3, "two more lookups", PATIENCE);
    // Two TTL periods (1 s each) on a busy machine: far below the 30 s interval.
    assert.ok(Date.now() - first < 15_000, `took ${Date.now() - first}ms`);
    // And a change is seen at that pace.
    await dns.setHosts({ "api.internal": ["127.0.0.2", "127.0.0.3"] });
    const changed = Date.now();
    await waitFor(() => rec.updates.length === 2, "the second address", PATIENCE);
    assert.ok(Date.now() - changed < 15_000);
    assert.deepEqual(rec.updates[1].endpoints, ["127.0.0.2:8080/p0/w1", "127.0.0.3:8080/p0/w1"]);
  },
);

dnsTest("runner: reports changes only, at the interval when the TTL is longer", async () => {
  await using dns = await startDnsmasq({ ttl: 300, hosts: { "api.internal": ["127.0.0.2"] } });
  const api = { dns: "api.internal", port: 8080 };
  const rec = recorder<DnsTarget>();
  const started = Date.now();
  await using _discovery = startDiscovery([api], {
    interval: 200,
    minInterval: 100,
    nameServer: dns.nameServer,
    ...rec,
  });
  const asked = () => dns.queries(/query\[A\] api\.internal /).length;
  await waitFor(() => asked() >= 4, "four lookups", PATIENCE);
  assert.ok(Date.now() - started < 15_000, "at the 200 ms interval, not the 300 s TTL");
  assert.equal(rec.updates.length, 1, "the same answer is reported once");
  await dns.setHosts({ "api.internal": ["127.0.0.3", "127.0.0.2"] });
  await waitFor(() => rec.updates.length === 2, "an address added", PATIENCE);
  assert.deepEqual(rec.updates[1].endpoints, ["127.0.0.2:8080/p0/w1", "127.0.0.3:8080/p0/w1"]);
  await dns.setHosts({ "api.internal": ["127.0.0.3"] });
  await waitFor(() => rec.updates.length === 3, "an address removed", PATIENCE);
  assert.deepEqual(rec.updates[2].endpoints, ["127.0.0.3:8080/p0/w1"]);
  assert.equal(rec.errors.length, 0);
});

dnsTest("runner: an SRV change (weights, priorities, targets) is reported", async () => {
  const hosts = { "a.internal": ["127.0.0.2"], "b.internal": ["127.0.0.3"] };
  await using dns = await startDnsmasq({
    hosts,
    srv: [{ name: SRV, target: "a.internal", port: 8001, priority: 1, weight: 1 }],
  });
  const web = { dns: SRV, type: "SRV" as const };
  const rec = recorder<DnsTarget>();
  await using discovery = startDiscovery([web], {
    interval: 200,
    minInterval: 100,
    nameServer: dns.nameServer,
    ...rec,
  });
  await discovery.ready;
  await dns.restart({
    hosts,
    srv: [
      { name: SRV, target: "a.internal", port: 8001, priority: 2, weight: 1 },
      { name: SRV, target: "b.internal", port: 8002, priority: 1, weight: 3 },
    ],
  });
  await waitFor(() => rec.updates.length === 2, "the new SRV set", PATIENCE);
  assert.deepEqual(rec.updates[1].endpoints, ["127.0.0.3:8002/p1/w3", "127.0.0.2:8001/p2/w1"]);
});

dnsTest(
  "runner: a failed lookup keeps the last answer and is reported, never emptied",
  async () => {
    await using dns = await startDnsmasq({ hosts: { "api.internal": ["127.0.0.2"] } });
    const api = { dns: "api.internal", port: 8080 };
    const rec = recorder<DnsTarget>();
    await using discovery = startDiscovery([api], {
      interval: 200,
      minInterval: 100,
      timeout: 300,
      attempts: 1,
      nameServer: dns.nameServer,
      ...rec,
    });
    await discovery.ready;
    // The server goes away: timeouts.
    await dns.stop();
    await waitFor(() => rec.errors.length >= 2, "two failed lookups", PATIENCE);
    assert.ok(rec.errors.every((e) => e.error instanceof DnsError && e.error.kind === "timeout"));
    assert.equal(rec.updates.length, 1);
    assert.deepEqual(show(discovery.endpoints(api)!), ["127.0.0.2:8080/p0/w1"]);
    assert.ok(discovery.failures(api) >= 2);
    // It comes back with the name gone: NXDOMAIN is a failure too, not an empty pool.
    await dns.restart({ hosts: {} });
    await waitFor(
      () => rec.errors.some((e) => (e.error as DnsError).kind === "nxdomain"),
      "an NXDOMAIN",
      PATIENCE,
    );
    assert.equal(rec.updates.length, 1);
    assert.deepEqual(show(discovery.endpoints(api)!), ["127.0.0.2:8080/p0/w1"]);
    // And with the name back (same address): no update, the failure count resets.
    await dns.setHosts({ "api.internal": ["127.0.0.2"] });
    await waitFor(() => discovery.failures(api) === 0, "a successful lookup", PATIENCE);
    assert.equal(rec.updates.length, 1);
  },
);

dnsTest("runner: a failing target does not hold up the others", async () => {
  await using dns = await startDnsmasq({ hosts: { "api.internal": ["127.0.0.2"] } });
  const good = { dns: "api.internal", port: 80 };
  const bad = { dns: "gone.internal", port: 80 };
  const rec = recorder<DnsTarget>();
  await using discovery = startDiscovery([bad, good], { nameServer: dns.nameServer, ...rec });
  await discovery.ready;
  assert.deepEqual(rec.updates.map((u) => u.target), [good]);
  assert.deepEqual(rec.errors.map((e) => e.target), [bad]);
  assert.equal(discovery.endpoints(bad), undefined);
});

dnsTest(
  "runner: an onUpdate that throws is reported, and the update is offered again",
  async () => {
    await using dns = await startDnsmasq({ hosts: { "api.internal": ["127.0.0.2"] } });
    const api = { dns: "api.internal", port: 80 };
    let calls = 0;
    const errors: Error[] = [];
    await using discovery = startDiscovery([api], {
      interval: 200,
      minInterval: 100,
      nameServer: dns.nameServer,
      onUpdate: () => {
        if (++calls === 1) throw new Error("pool busy");
      },
      onError: (_, err) => void errors.push(err),
    });
    await waitFor(() => calls === 2, "a second offer", PATIENCE);
    assert.equal(errors[0].message, "pool busy");
    assert.equal(discovery.endpoints(api)?.length, 1);
  },
);

Deno.test("runner: stop ends a lookup in flight at once, leaves no timer or socket", async () => {
  // A name server that never answers: the lookup would wait 20 s.
  const silent = dgram.createSocket("udp4");
  let received = 0;
  silent.on("message", () => received++);
  await new Promise<void>((r) => silent.bind(0, "127.0.0.1", r));
  try {
    const rec = recorder<DnsTarget>();
    const discovery = startDiscovery([{ dns: "api.internal", port: 80 }], {
      timeout: 20_000,
      nameServer: `127.0.0.1:${silent.address().port}`,
      ...rec,
    });
    await waitFor(() => received >= 1, "the question to arrive", PATIENCE);
    const started = Date.now();
    await discovery.stop();
    assert.ok(Date.now() - started < 5_000, `stop took ${Date.now() - started}ms`);
    await discovery.ready; // settled by stop
    // A short window for anything that should not happen: no callback, no new question.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(rec.updates.length + rec.errors.length, 0);
    assert.equal(received, 1);
    await discovery.stop(); // twice is fine
    // Deno's sanitizers fail this test if a timer or socket was left behind.
  } finally {
    await new Promise<void>((r) => silent.close(() => r()));
  }
});
