/**
 * The access log, end to end: sluice runs as a subprocess with `accessLog:` set, and the
 * lines it writes to stdout or a file are checked field by field.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { combinedLine, jsonLine } from "../lib/access_log.ts";
import type { RequestRecord } from "../lib/proxy.ts";
import { clientRequest, fileLines } from "./helpers.ts";
import {
  configDir,
  get,
  sighupReload,
  startBrokenBackend,
  startSluice,
  startTestBackends,
} from "./ops_helpers.ts";

/** A config file body for `backends` (URLs), probed every minute on /health. */
function config(backends: string[], extra: Record<string, unknown> = {}) {
  return {
    listen: { host: "127.0.0.1", port: 0 },
    health: { path: "/health", interval: "1m" },
    backends: backends.map((url) => ({ url })),
    ...extra,
  };
}

/** A finished GET / record with every field set; `fields` overrides some. */
function record(fields: Partial<RequestRecord> = {}): RequestRecord {
  return {
    time: 0,
    ip: "127.0.0.1",
    method: "GET",
    target: "/",
    protocol: "HTTP/1.1",
    pool: "default",
    route: "",
    status: 200,
    bytes: 0,
    durationMs: 0,
    upstreamMs: 0,
    backend: undefined,
    answered: false,
    retries: 0,
    requestId: "id",
    error: undefined,
    request: clientRequest("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ...fields,
  };
}

/** host:port, the backend id the log shows for an unnamed backend. */
function idOf(url: string): string {
  return new URL(url).host;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** The Apache/nginx "combined" format, as log parsers match it. */
const COMBINED =
  /^(\S+) (\S+) (\S+) \[([\w:/]+\s[+\-]\d{4})\] "(\S+) (\S+)\s*(\S+)?\s*" (\d{3}) (\d+|-) "([^"]*)" "([^"]*)"/;
/** What sluice appends to "combined". */
const COMBINED_TAIL =
  /^ rt=(\d+\.\d{3}) urt=(\d+\.\d{3}) backend=(\S+) retries=(\d+) id=(\S+) pool=(\S+) route=(\S+)$/;

const MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(" ");
/** Parses `10/Oct/2000:13:55:36 +0000` to ms since epoch. */
function clfTime(text: string): number {
  const m = /^(\d\d)\/(\w{3})\/(\d{4}):(\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$/.exec(text);
  assert.ok(m, `bad time ${text}`);
  const utc = Date.UTC(+m[3], MONTHS.indexOf(m[2]), +m[1], +m[4], +m[5], +m[6]);
  const offset = (m[7] === "-" ? -1 : 1) * (+m[8] * 60 + +m[9]) * 60_000;
  return utc - offset;
}

Deno.test("access log: off by default, nothing is written for requests", async () => {
  await using backends = await startTestBackends("a");
  await using cfg = await configDir(config([backends[0].url]));
  const sluice = await startSluice(cfg.file);
  try {
    for (let i = 0; i < 3; i++) assert.equal((await get(`${sluice.url}/marker-${i}`)).status, 200);
    assert.equal(backends[0].hits, 3);
  } finally {
    assert.equal(await sluice.stop(), 0);
  }
  assert.deepEqual(sluice.stdout.lines, []);
  assert.deepEqual(sluice.stderr.matching(/marker-/), []);
  const files = [];
  for await (const entry of Deno.readDir(cfg.dir)) files.push(entry.name);
  assert.deepEqual(files, ["config.json"]);
});

Deno.test("access log: JSON lines appended to a file, one per request, with every field", async () => {
  await using backends = await startTestBackends("a");
  const [a] = backends;
  using broken = startBrokenBackend("close");
  await using cfg = await configDir({});
  const path = `${cfg.dir}/access.log`;
  await Deno.writeTextFile(path, "an earlier line\n");
  await cfg.write(config([broken.url, a.url], { accessLog: { format: "json", path } }));
  await using sluice = await startSluice(cfg.file);

  const before = Date.now();
  // Round robin starts at the broken backend: the request fails there and is retried on a.
  const first = await get(`${sluice.url}/first?delay=30&q=%20x`, { "x-request-id": "json-1" });
  const second = await get(`${sluice.url}/second`);
  const after = Date.now();
  assert.equal(first.status, 200);
  assert.equal(second.status, 200);

  const lines = await fileLines(path, 3);
  assert.equal(lines[0], "an earlier line", "the file is appended to");
  assert.equal(lines.length, 3);
  const records = lines.slice(1).map((l) => JSON.parse(l));
  const [one, two] = records;
  assert.deepEqual(Object.keys(one), [
    "time",
    "client",
    "method",
    "target",
    "protocol",
    "status",
    "bytes",
    "pool",
    "route",
    "duration_ms",
    "upstream_ms",
    "backend",
    "retries",
    "request_id",
  ]);
  const time = Date.parse(one.time);
  assert.ok(time >= before - 1000 && time <= after + 1000, `time ${one.time}`);
  assert.match(one.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.deepEqual(
    {
      client: one.client,
      method: one.method,
      target: one.target,
      status: one.status,
      bytes: one.bytes,
      backend: one.backend,
      retries: one.retries,
      request_id: one.request_id,
    },
    {
      client: "127.0.0.1",
      method: "GET",
      target: "/first?delay=30&q=%20x",
      status: 200,
      bytes: 1,
      backend: idOf(a.url),
      retries: 1,
      request_id: "json-1",
    },
  );
  assert.ok(one.upstream_ms >= 20, `upstream_ms ${one.upstream_ms} < backend delay`);
  assert.ok(one.duration_ms >= one.upstream_ms, JSON.stringify(one));
  assert.equal(two.target, "/second");
  assert.equal(two.retries, 0);
  assert.equal(two.backend, idOf(a.url));
  assert.match(two.request_id, UUID);
  assert.equal(two.request_id, second.headers.get("x-request-id"));
});

Deno.test("access log: combined format on stdout parses with the Apache/nginx combined regex", async () => {
  await using backends = await startTestBackends("a");
  const [a] = backends;
  await using cfg = await configDir(config([a.url], { accessLog: { format: "combined" } }));
  await using sluice = await startSluice(cfg.file);

  const before = Date.now();
  await get(`${sluice.url}/path/x?y=1`, {
    "user-agent": "ops-test/1.0 (x)",
    referer: "http://example.test/from",
    "x-request-id": "combined-1",
  });
  await get(`${sluice.url}/missing`, { "user-agent": "" });
  const after = Date.now();

  const [line, bare] = await sluice.stdout.waitFor(/HTTP\/1\.1/, 2);
  const m = COMBINED.exec(line);
  assert.ok(m, `not combined: ${line}`);
  const [, client, ident, user, time, method, target, protocol, status, bytes, referer, agent] = m;
  assert.deepEqual(
    { client, ident, user, method, target, protocol, status, bytes, referer, agent },
    {
      client: "127.0.0.1",
      ident: "-",
      user: "-",
      method: "GET",
      target: "/path/x?y=1",
      protocol: "HTTP/1.1",
      status: "200",
      bytes: "1",
      referer: "http://example.test/from",
      agent: "ops-test/1.0 (x)",
    },
  );
  const ms = clfTime(time);
  assert.ok(ms >= before - 2000 && ms <= after + 1000, `time ${time}`);
  const tail = COMBINED_TAIL.exec(line.slice(m[0].length));
  assert.ok(tail, `unexpected tail: ${line.slice(m[0].length)}`);
  const [, rt, urt, backend, retries, id] = tail;
  assert.ok(Number(rt) >= Number(urt), line);
  assert.deepEqual({ backend, retries, id }, {
    backend: idOf(a.url),
    retries: "0",
    id: "combined-1",
  });

  // No referer and an empty user agent: "-" and "".
  const n = COMBINED.exec(bare);
  assert.ok(n, `not combined: ${bare}`);
  assert.equal(n[10], "-");
  assert.equal(n[11], "");
  assert.match(COMBINED_TAIL.exec(bare.slice(n[0].length))![5], UUID);
  assert.deepEqual(sluice.stderr.matching(/HTTP\/1\.1/), [], "access lines went to stderr");
});

Deno.test("access log: balancer-generated 502 and 503 are logged too", async () => {
  await using backends = await startTestBackends("down");
  const [down] = backends;
  down.healthy = false;
  using broken = startBrokenBackend("close");
  // 502: the only backend drops the connection; JSON to stdout.
  await using cfg502 = await configDir(config([broken.url], { accessLog: { format: "json" } }));
  // 503: the only backend fails its health check; combined to a file.
  await using cfg503 = await configDir({});
  const path = `${cfg503.dir}/access.log`;
  await cfg503.write(config([down.url], { accessLog: { format: "combined", path } }));
  await using s502 = await startSluice(cfg502.file);
  await using s503 = await startSluice(cfg503.file);
  await s503.stderr.waitFor(new RegExp(`backend ${down.url} is down`));

  const bad = await get(`${s502.url}/x`);
  assert.equal(bad.status, 502);
  const [line] = await s502.stdout.waitFor(/"status":502/);
  const record = JSON.parse(line);
  assert.equal(record.target, "/x");
  assert.equal(record.backend, idOf(broken.url), "the backend that failed");
  assert.equal(record.request_id, bad.headers.get("x-request-id"));

  const unavailable = await get(`${s503.url}/y`, { "x-request-id": "no-backend-1" });
  assert.equal(unavailable.status, 503);
  const [combined] = await fileLines(path, 1);
  const m = COMBINED.exec(combined);
  assert.ok(m, `not combined: ${combined}`);
  assert.equal(m[6], "/y");
  assert.equal(m[8], "503");
  const tail = COMBINED_TAIL.exec(combined.slice(m[0].length));
  assert.ok(tail, combined);
  assert.deepEqual([tail[3], tail[4], tail[5]], ["-", "0", "no-backend-1"]);
});

Deno.test("access log: a reload turns it on, changes its format and turns it off", async () => {
  await using backends = await startTestBackends("a");
  const [a] = backends;
  await using cfg = await configDir(config([a.url]));
  const path = `${cfg.dir}/access.log`;
  await using sluice = await startSluice(cfg.file);
  await get(`${sluice.url}/before`);

  await cfg.write(config([a.url], { accessLog: { format: "json", path } }));
  await sighupReload(sluice);
  await get(`${sluice.url}/json`);
  assert.equal(JSON.parse((await fileLines(path, 1))[0]).target, "/json");

  await cfg.write(config([a.url], { accessLog: { format: "combined", path } }));
  await sighupReload(sluice);
  await get(`${sluice.url}/combined`);
  const lines = await fileLines(path, 2);
  assert.match(lines[1], COMBINED);
  assert.match(lines[1], /"GET \/combined HTTP\/1\.1" 200/);

  await cfg.write(config([a.url]));
  await sighupReload(sluice);
  await get(`${sluice.url}/after`);
  // Stopping flushes the log: still the two lines from before.
  assert.equal(await sluice.stop(), 0);
  assert.equal((await Deno.readTextFile(path)).trim().split("\n").length, 2);
  assert.deepEqual(sluice.stdout.lines, []);
});

Deno.test("access log: after the file is renamed (logrotate), a reload starts a new one at the path", async () => {
  await using backends = await startTestBackends("a");
  const [a] = backends;
  const log = (path: string) => ({ accessLog: { format: "json", path } });
  await using cfg = await configDir(config([a.url]));
  const path = `${cfg.dir}/access.log`;
  await cfg.write(config([a.url], log(path)));
  await using sluice = await startSluice(cfg.file);
  await get(`${sluice.url}/first`);
  await fileLines(path, 1);
  await Deno.rename(path, `${path}.1`);
  await get(`${sluice.url}/second`); // still the old file: nothing reopened it yet
  await fileLines(`${path}.1`, 2);

  await sighupReload(sluice); // the same configuration
  await get(`${sluice.url}/third`);
  const targets = async (file: string, n: number) =>
    (await fileLines(file, n)).map((l) => JSON.parse(l).target);
  assert.deepEqual(await targets(path, 1), ["/third"]);
  assert.equal(await sluice.stop(), 0);
  assert.deepEqual(await targets(`${path}.1`, 2), ["/first", "/second"]);
  assert.deepEqual(await targets(path, 1), ["/third"]);
});

Deno.test({
  name: "access log: bytes of balancer-generated 502/503/504 bodies are counted",
  async fn() {
    using broken = startBrokenBackend("close");
    await using cfg = await configDir(config([broken.url], { accessLog: { format: "json" } }));
    await using sluice = await startSluice(cfg.file);
    const res = await get(`${sluice.url}/x`);
    assert.equal(res.status, 502);
    const [line] = await sluice.stdout.waitFor(/"status":502/);
    assert.equal(JSON.parse(line).bytes, new TextEncoder().encode(res.body).length);
  },
});

Deno.test("access log: each line carries its own request's time, in both formats", () => {
  const at = Date.UTC(2026, 10, 25, 13, 55, 36, 120);
  const recordAt = (time: number) => record({ time, bytes: 2, durationMs: 1, upstreamMs: 1 });
  // Formatted times are reused within a millisecond (JSON) or a second (combined): never across.
  for (
    const [time, iso] of [[at, "13:55:36.120"], [at, "13:55:36.120"], [at + 1, "13:55:36.121"]]
  ) {
    assert.ok(jsonLine(recordAt(time as number)).includes(`T${iso}Z`));
  }
  const times = [at, at + 500, at + 879, at + 1000].map((t) =>
    clfTime(/\[([^\]]+)\]/.exec(combinedLine(recordAt(t)))![1])
  );
  assert.deepEqual(times, [at - 120, at - 120, at - 120, at + 880]);
  assert.equal(JSON.parse(jsonLine(recordAt(at))).time, "2026-11-25T13:55:36.120Z");
});

Deno.test("access log: JSON lines escape quotes, backslashes, control and non-ASCII characters", () => {
  const targets = ['/a"b', "/c\\d", "/tab\there", "/caf\u00e9", "/\u0001", "/plain"];
  for (const target of targets) {
    const odd = record({
      ip: "::1",
      target,
      pool: 'p"ool',
      route: "r\\",
      requestId: "\u2603",
      error: 'say "no"',
    });
    const parsed = JSON.parse(jsonLine(odd));
    assert.deepEqual(
      [parsed.target, parsed.pool, parsed.route, parsed.request_id, parsed.error],
      [target, 'p"ool', "r\\", "\u2603", 'say "no"'],
    );
  }
});

Deno.test("access log: JSON durations are milliseconds to the microsecond, and names that change from line to line stay right", () => {
  const durations = [0, 0.0004, 0.0005, 0.001, 0.01, 0.1, 1, 1.5, 2.25, 0.1234, 9.9995, 123456.789];
  for (let i = 0; i < 2000; i++) durations.push(Math.random() * 10 ** (i % 7));
  for (const d of durations) {
    const line = jsonLine(record({ durationMs: d, upstreamMs: d / 3 }));
    const text = (field: string) => new RegExp(`"${field}":([^,]+),`).exec(line)![1];
    // The same text as printing the rounded number, the way a reader of the log expects it.
    assert.equal(text("duration_ms"), String(Math.round(d * 1000) / 1000), line);
    assert.equal(text("upstream_ms"), String(Math.round((d / 3) * 1000) / 1000), line);
  }
  const names = [
    ["10.0.0.1", "GET", 'p"ool', "r1", "b:1"],
    ["::1", "POST", "plain", "", "b:2"],
    ["10.0.0.1", "GET", 'p"ool', "r1", "b:1"],
    ["10.0.0.1", "GET", "plain", "r\\", "b:1"],
  ];
  for (const [ip, method, pool, route, id] of names) {
    const backend = { id } as RequestRecord["backend"];
    const parsed = JSON.parse(jsonLine(record({ ip, method, pool, route, backend })));
    assert.deepEqual(
      [parsed.client, parsed.method, parsed.pool, parsed.route, parsed.backend],
      [ip, method, pool, route, id],
    );
  }
});

Deno.test("access log: every JSON line shows its own record's fields, whatever the lines before it", () => {
  // Runs of a line are kept from the line before when their fields repeat: any change in any of
  // them, in any order, must show in the next line.
  const backend = (id: string | undefined) =>
    id === undefined ? undefined : { id } as RequestRecord["backend"];
  const fields = fc.record({
    time: fc.constantFrom(0, 1, 1000, Date.UTC(2026, 11, 1)),
    ip: fc.constantFrom("127.0.0.1", "::1", "10.0.0.2"),
    method: fc.constantFrom("GET", "POST", 'M"X'),
    target: fc.constantFrom("/", "/a?b=c", '/q"'),
    protocol: fc.constantFrom("HTTP/1.1", "HTTP/1.0", "HTTP/2"),
    status: fc.constantFrom(200, 404, 502),
    bytes: fc.constantFrom(0, 13, 1234567),
    pool: fc.constantFrom("default", "api", 'p"'),
    route: fc.constantFrom("", "r1", "r\\"),
    backend: fc.constantFrom(undefined, "127.0.0.1:8081", "b:2"),
    retries: fc.constantFrom(0, 1, 2),
    requestId: fc.constantFrom("id-1", "id-2"),
    error: fc.constantFrom(undefined, "upstream timed out"),
    durationMs: fc.constantFrom(0, 0.25, 12.5),
    upstreamMs: fc.constantFrom(0, 0.125, 3),
  });
  fc.assert(
    fc.property(fc.array(fields, { minLength: 1, maxLength: 12 }), (list) => {
      for (const f of list) {
        const parsed = JSON.parse(jsonLine(record({ ...f, backend: backend(f.backend) })));
        assert.deepEqual(parsed, {
          time: new Date(f.time).toISOString(),
          client: f.ip,
          method: f.method,
          target: f.target,
          protocol: f.protocol,
          status: f.status,
          bytes: f.bytes,
          pool: f.pool,
          route: f.route,
          duration_ms: f.durationMs,
          upstream_ms: f.upstreamMs,
          backend: f.backend ?? null,
          retries: f.retries,
          request_id: f.requestId,
          ...(f.error ? { error: f.error } : {}),
        });
      }
    }),
    { numRuns: 300 },
  );
});
