/**
 * Routing, end to end: sluice runs as a subprocess (main.ts) in front of echo backends, one per
 * named pool, and each test asserts what a client sees (status, body, headers) and what a
 * backend received (target, headers). Matchers, actions, header edits, rate limits, per-pool
 * health, `--check` errors, metrics labels, the admin API per pool, and reload under load.
 */
import assert from "node:assert/strict";
import { backendUrl, rawExchange, startBackends, waitFor } from "./helpers.ts";
import { adminUrl, configDir, PATIENCE, sighupReload, startSluice } from "./ops_helpers.ts";
import { checkConfig } from "./process_helpers.ts";
import { ask, poolFor } from "./fixtures/client.ts";
import {
  hostMatcher,
  removeDotSegments,
  Router,
  routingHost,
  routingPath,
  stripPrefix,
  underPrefix,
} from "../lib/router.ts";
import { RateLimiter } from "../lib/rate_limit.ts";
import type { RouteConfig } from "../lib/config.ts";
import { type EchoBackend, poolsOf, startEchoBackends } from "./fixtures/echo_backend.ts";

/** Requests every backend has seen so far. */
const seenTotal = (backends: readonly EchoBackend[]) =>
  backends.reduce((n, b) => n + b.seen.length, 0);

/** Listens on 127.0.0.1 (first) and on `::` (dual stack); returns sluice and both ports. */
async function startDualStack(file: string, args: string[] = []) {
  const sluice = await startSluice(file, args);
  const [line] = await sluice.stderr.waitFor(/sluice listening on http:\/\/\[::\]:\d+/);
  const v6port = Number(/\[::\]:(\d+)/.exec(line)![1]);
  return { sluice, v6port };
}

/** An admin token (writes need one). */
const TOKEN = "routing-test-token-0123";
Deno.test("router helpers: host, prefix, normalized path, strip prefix", () => {
  const host = hostMatcher(["API.example.com", "*.Example.org."]);
  assert.ok(host(routingHost("api.example.com:8080")));
  assert.ok(host(routingHost("API.EXAMPLE.COM.")));
  assert.ok(host(routingHost("a.example.org")));
  assert.ok(host(routingHost("a.b.example.org:1")));
  assert.ok(!host(routingHost("example.org")), "a wildcard needs at least one label");
  assert.ok(!host(routingHost("xexample.org")));
  assert.ok(!host(routingHost(undefined)));
  assert.equal(routingHost("[::1]:8080"), "[::1]");
  assert.equal(routingHost("[FE80::1]"), "[fe80::1]");

  assert.ok(underPrefix("/v1", "/v1"));
  assert.ok(underPrefix("/v1/x", "/v1"));
  assert.ok(!underPrefix("/v10", "/v1"));
  assert.ok(underPrefix("/s/x", "/s/"));
  assert.ok(!underPrefix("/s", "/s/"));
  assert.ok(underPrefix("/anything", "/"));

  assert.equal(routingPath("/a/b?x=/../c"), "/a/b", "the query is not the path");
  assert.equal(routingPath("/%61pi/%7Ex"), "/api/~x");
  assert.equal(routingPath("/api%2fx"), "/api%2Fx", "reserved escapes stay (upper-cased)");
  assert.equal(routingPath("/a/./b/../c"), "/a/c");
  assert.equal(routingPath("/../../etc"), "/etc");
  assert.equal(routingPath("/%2e%2e/api"), "/api", "escaped dots are dots");
  assert.equal(routingPath("//api///x"), "/api/x");
  assert.equal(routingPath("/a/b/.."), "/a/");
  assert.equal(removeDotSegments("/a/b/./"), "/a/b/");

  assert.equal(stripPrefix("/v1/x?q=1", "/v1"), "/x?q=1");
  assert.equal(stripPrefix("/v1", "/v1"), "/");
  assert.equal(stripPrefix("/v1?q", "/v1"), "/?q");
  assert.equal(stripPrefix("/v1/", "/v1"), "/");
  assert.equal(stripPrefix("/s/a", "/s/"), "/a");
  assert.equal(stripPrefix("/s/", "/s/"), "/");
  assert.equal(stripPrefix("/s/?z=1", "/s/"), "/?z=1");
});

Deno.test("rate limiter: every key is limited after its burst, and only its own", () => {
  const limiter = new RateLimiter({ perSecond: 1, burst: 2 });
  const now = 1_000_000;
  const unlimited: string[] = [];
  for (let i = 0; i < 300; i++) {
    const key = `10.0.${i >> 8}.${i & 255}`;
    const waits = [limiter.take(key, now), limiter.take(key, now), limiter.take(key, now)];
    if (waits[0] !== 0 || waits[1] !== 0 || waits[2] === 0) unlimited.push(key);
  }
  assert.deepEqual(
    unlimited,
    [],
    "keys whose third request was not refused (or earlier ones were)",
  );
  assert.equal(limiter.take("10.0.0.0", now + 999), 1, "1 ms to wait");
  assert.equal(limiter.take("10.0.0.0", now + 1000), 0, "one request a second after the burst");
});

Deno.test("header edits never touch framing headers (a dropped Content-Length would smuggle the body)", () => {
  const route = {
    exact: false,
    stripPrefix: false,
    pool: "a",
    requestHeaders: {
      set: { "Content-Length": "0", "x-set": "1" },
      remove: ["content-length", "Transfer-Encoding", "connection", "x-gone"],
    },
    responseHeaders: { set: { "content-length": "1", "x-out": "1" } },
  } as RouteConfig;
  const [r] = new Router([route], "a").routes;
  assert.deepEqual(r.requestHeaders?.set, [["x-set", "1"]]);
  assert.deepEqual([...r.requestHeaders!.remove].sort(), ["x-gone", "x-set"]);
  assert.deepEqual(r.responseHeaders?.set, [["x-out", "1"]]);
});

Deno.test("rate limits survive a reload route by route, wherever the route moved", () => {
  const base = { exact: false, stripPrefix: false, pool: "a" };
  const limit = { perSecond: 1, burst: 1, key: "ip" };
  const gets = { ...base, path: "/x", methods: ["GET"], rateLimit: limit } as RouteConfig;
  const posts = { ...base, path: "/x", methods: ["POST"], rateLimit: limit } as RouteConfig;
  const first = new Router([gets, posts], "a");
  const [g1, p1] = first.routes.map((r) => r.rateLimit!.limiter);
  assert.notEqual(g1, p1);
  // A route inserted in front: each limited route keeps its own table, with its state.
  const other = { ...base, path: "/new" } as RouteConfig;
  const second = new Router([other, posts, gets], "a", first);
  assert.equal(second.routes[1].rateLimit!.limiter, p1);
  assert.equal(second.routes[2].rateLimit!.limiter, g1);
  // A changed limit starts afresh.
  const faster = { ...gets, rateLimit: { ...limit, perSecond: 5 } } as RouteConfig;
  const third = new Router([faster, posts], "a", second);
  assert.notEqual(third.routes[0].rateLimit!.limiter, g1);
  assert.equal(third.routes[1].rateLimit!.limiter, p1);
});

const LISTEN_BOTH = [{ host: "127.0.0.1", port: 0 }, { host: "::", port: 0 }];
const HEALTH = { path: "/health", interval: "1m" };

Deno.test("routes: every matcher and action through main.ts", async () => {
  await using backends = await startEchoBackends(
    "api",
    "wild",
    "login",
    "exact",
    "canary",
    "v6",
    "v4",
    "strip",
    "first",
    "second",
    "hdr",
  );
  await using cfg = await configDir({
    listen: LISTEN_BOTH,
    health: HEALTH,
    pools: poolsOf(backends),
    routes: [
      { name: "api-v1", host: "API.Example.com", path: "/v1", stripPrefix: true, pool: "api" },
      { host: ["*.example.com", "example.org"], path: "/w", pool: "wild" },
      { path: "/login", exact: true, methods: ["POST", "put"], pool: "login" },
      { path: "/exact", exact: true, pool: "exact" },
      { headers: { "X-Canary": "1" }, pool: "canary" },
      { path: "/ip", clientIp: "::1/128", pool: "v6" },
      { path: "/ip", clientIp: ["10.0.0.0/8", "127.0.0.0/8"], pool: "v4" },
      { path: "/old", redirect: { to: "https://example.com/new", status: 301 } },
      { path: "/moved", redirect: { to: "/new?from=moved" } },
      { path: "/frag", redirect: { to: "https://example.com/doc#part-2", status: 308 } },
      { path: "/ping", exact: true, respond: { body: "pong\n" } },
      {
        path: "/teapot",
        respond: { status: 418, body: '{"short":"stout"}', contentType: "application/json" },
      },
      { path: "/s/", stripPrefix: true, pool: "strip" },
      { path: "/first", pool: "first" },
      { path: "/first/x", pool: "second" },
      {
        path: "/hdr",
        pool: "hdr",
        requestHeaders: { set: { "X-Env": "prod" }, remove: ["x-debug"] },
        responseHeaders: {
          set: { "strict-transport-security": "max-age=31536000" },
          remove: ["X-Private"],
        },
      },
    ],
  });
  const { sluice, v6port } = await startDualStack(cfg.file);
  await using _ = sluice;
  const port = sluice.port;
  const api = { host: "api.example.com" };

  // host: exact, any case, port and trailing dot ignored.
  const v1 = await ask(port, "/v1/users", api);
  assert.equal(v1.echo?.name, "api");
  assert.equal(v1.echo?.target, "/users", "stripPrefix removes /v1");
  assert.equal(await poolFor(port, "/v1/x", { host: "API.EXAMPLE.COM:8443" }), "api");
  assert.equal(await poolFor(port, "/v1/x", { host: "api.example.com." }), "api");
  assert.equal(await poolFor(port, "/v1/x", { host: "other.example.net" }), "status 404");
  // host wildcard: one or more labels, never the bare domain or a look-alike.
  assert.equal(await poolFor(port, "/w", { host: "a.example.com" }), "wild");
  assert.equal(await poolFor(port, "/w/deep", { host: "a.b.Example.COM:80" }), "wild");
  assert.equal(await poolFor(port, "/w", { host: "example.org" }), "wild");
  assert.equal(await poolFor(port, "/w", { host: "example.com" }), "status 404");
  assert.equal(await poolFor(port, "/w", { host: "badexample.com" }), "status 404");

  // path prefix on segment boundaries; routing sees the normalized path.
  assert.equal((await ask(port, "/v1", api)).echo?.target, "/", "/v1 alone becomes /");
  assert.equal(await poolFor(port, "/v10", api), "status 404");
  assert.equal(await poolFor(port, "/v1x/y", api), "status 404");
  assert.equal(await poolFor(port, "/%761/enc", api), "api", "%76 is v");
  assert.equal(await poolFor(port, "/x/../v1/dots", api), "api");
  assert.equal(await poolFor(port, "//v1//slashes", api), "api", "slashes merged");
  const absolute = await ask(port, "http://api.example.com/v1/abs?q", { host: "other.test" });
  assert.equal(absolute.echo?.name, "api", "an absolute-form target's authority is the host");
  assert.equal(absolute.echo?.target, "/abs?q");

  // exact: the path must be equal; the query does not count.
  assert.equal(await poolFor(port, "/exact"), "exact");
  assert.equal(await poolFor(port, "/exact?q=1"), "exact");
  assert.equal(await poolFor(port, "/exact/"), "status 404");
  assert.equal(await poolFor(port, "/exact/more"), "status 404");

  // methods (written in any case in the file).
  assert.equal(await poolFor(port, "/login", { method: "POST" }), "login");
  assert.equal(await poolFor(port, "/login", { method: "PUT" }), "login");
  assert.equal(await poolFor(port, "/login", { method: "GET" }), "status 404");

  // headers: names in any case, values exact.
  assert.equal(await poolFor(port, "/anything", { headers: { "x-canary": "1" } }), "canary");
  assert.equal(await poolFor(port, "/anything", { headers: { "X-CANARY": "1" } }), "canary");
  assert.equal(await poolFor(port, "/anything", { headers: { "x-canary": "2" } }), "status 404");
  assert.equal(await poolFor(port, "/anything", { headers: { "x-canary": "10" } }), "status 404");

  // clientIp: IPv4 and IPv6 CIDRs; a dual-stack socket's IPv4 peer matches the IPv4 range.
  assert.equal(await poolFor(port, "/ip"), "v4", "127.0.0.1 on the IPv4 listener");
  assert.equal(await poolFor(v6port, "/ip"), "v4", "::ffff:127.0.0.1 on the :: listener");
  const fromV6 = await fetch(`http://[::1]:${v6port}/ip`);
  assert.equal(fromV6.headers.get("x-backend"), "v6", "::1 on the :: listener");
  await fromV6.body?.cancel();

  // first match wins, in the order written.
  assert.equal(await poolFor(port, "/first/x"), "first");
  assert.equal(await poolFor(port, "/first"), "first");
  assert.equal(backends.find((b) => b.name === "second")!.seen.length, 0);

  // no match: 404 with a short text body, and no backend sees the request.
  const before = seenTotal(backends);
  const none = await ask(port, "/nothing/here");
  assert.equal(none.status, 404);
  assert.equal(none.body, "Not Found: no route matches this request\n");
  assert.match(none.header("content-type") ?? "", /^text\/plain/);
  assert.ok(none.header("x-request-id"));
  assert.equal(seenTotal(backends), before, "a request matching no route reached a backend");

  // stripPrefix: with a query, with the prefix alone, with a trailing slash in the prefix.
  assert.equal((await ask(port, "/v1/x?q=1&r=a%20b", api)).echo?.target, "/x?q=1&r=a%20b");
  assert.equal((await ask(port, "/v1?q=1", api)).echo?.target, "/?q=1");
  assert.equal((await ask(port, "/v1/", api)).echo?.target, "/");
  assert.equal((await ask(port, "/s/a/b?z=9")).echo?.target, "/a/b?z=9");
  assert.equal((await ask(port, "/s/")).echo?.target, "/");
  assert.equal((await ask(port, "/s/?z")).echo?.target, "/?z");

  // redirect: the query is kept, appended to a `to` that has its own.
  const old = await ask(port, "/old?a=1&b=2");
  assert.equal(old.status, 301);
  assert.equal(old.header("location"), "https://example.com/new?a=1&b=2");
  assert.equal((await ask(port, "/old")).header("location"), "https://example.com/new");
  const moved = await ask(port, "/moved/page?x=1");
  assert.equal(moved.status, 302, "302 is the default");
  assert.equal(moved.header("location"), "/new?from=moved&x=1");
  const frag = await ask(port, "/frag?a=1");
  assert.equal(frag.status, 308);
  assert.equal(frag.header("location"), "https://example.com/doc?a=1#part-2", "query before #");

  // respond: status, body and content type, no backend.
  const before2 = seenTotal(backends);
  const ping = await ask(port, "/ping?x=1");
  assert.deepEqual([ping.status, ping.body], [200, "pong\n"]);
  assert.equal(ping.header("content-type"), "text/plain; charset=utf-8");
  const pingHead = await rawExchange(
    port,
    "GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
  );
  assert.match(pingHead, /^HTTP\/1\.1 200 OK\r\n/, "the standard reason phrase");
  assert.equal(await poolFor(port, "/ping/more"), "status 404", "exact: /ping only");
  const tea = await ask(port, "/teapot");
  assert.deepEqual([tea.status, tea.body], [418, '{"short":"stout"}']);
  assert.equal(tea.header("content-type"), "application/json");
  assert.equal(seenTotal(backends), before2);

  // requestHeaders reach the backend; responseHeaders reach the client.
  const hdr = await ask(port, "/hdr", {
    headers: { "x-debug": "1", "X-Env": "dev", "x-keep": "yes" },
  });
  assert.equal(hdr.echo?.headers["x-env"], "prod", "set replaces the client's value");
  assert.equal(hdr.echo?.headers["x-debug"], undefined, "removed before the backend");
  assert.equal(hdr.echo?.headers["x-keep"], "yes");
  assert.equal(hdr.header("strict-transport-security"), "max-age=31536000");
  assert.equal(hdr.header("x-private"), null, "removed before the client");
  assert.equal(hdr.header("x-backend"), "hdr");
  const plain = await ask(port, "/first", { headers: { "x-debug": "1" } });
  assert.equal(plain.header("x-private"), "1", "other routes keep the backend's headers");
  assert.equal(plain.echo?.headers["x-debug"], "1");
});

Deno.test("rate limit: 429 with Retry-After, per key, then recovery after the wait", async () => {
  await using backends = await startEchoBackends("a");
  await using cfg = await configDir({
    listen: LISTEN_BOTH,
    health: HEALTH,
    pools: poolsOf(backends),
    routes: [
      { path: "/ip", rateLimit: { perSecond: 1, burst: 2 }, pool: "a" },
      { path: "/user", rateLimit: { perSecond: 1, burst: 1, key: "header:X-User" }, pool: "a" },
      { path: "/pong", respond: { body: "pong\n" }, rateLimit: { perSecond: 1, burst: 1 } },
      { pool: "a" },
    ],
  });
  const { sluice, v6port } = await startDualStack(cfg.file);
  await using _ = sluice;
  const port = sluice.port;

  // key ip: a burst of 2, then 429 for this client only.
  assert.equal((await ask(port, "/ip")).status, 200);
  assert.equal((await ask(port, "/ip/x")).status, 200);
  const limited = await ask(port, "/ip");
  assert.equal(limited.status, 429);
  assert.equal(limited.body, "Too Many Requests\n");
  const retryAfter = Number(limited.header("retry-after"));
  assert.ok(retryAfter >= 1 && retryAfter <= 2, `Retry-After ${limited.header("retry-after")}`);
  const fromV6 = await fetch(`http://[::1]:${v6port}/ip`);
  await fromV6.body?.cancel();
  assert.equal(fromV6.status, 200, "another address has its own bucket");
  assert.equal((await ask(port, "/other")).status, 200, "a route without a limit is not limited");

  // key header:X-User: per value; requests without the header are not limited (as nginx).
  assert.equal((await ask(port, "/user", { headers: { "x-user": "alice" } })).status, 200);
  assert.equal((await ask(port, "/user", { headers: { "X-User": "alice" } })).status, 429);
  assert.equal((await ask(port, "/user", { headers: { "x-user": "bob" } })).status, 200);
  for (let i = 0; i < 4; i++) assert.equal((await ask(port, "/user")).status, 200);

  // A limit on a route that answers by itself holds too.
  assert.equal((await ask(port, "/pong")).status, 200);
  assert.equal((await ask(port, "/pong")).status, 429);

  // Recovery: after the Retry-After wait the client is served again.
  await new Promise((r) => setTimeout(r, retryAfter * 1000 + 50));
  assert.equal((await ask(port, "/ip")).status, 200);
  assert.equal((await ask(port, "/user", { headers: { "x-user": "alice" } })).status, 200);
});

Deno.test("rate limit with workers: 2 is one limit shared by every worker thread", async () => {
  await using backends = await startEchoBackends("a");
  await using cfg = await configDir({
    listen: { host: "127.0.0.1", port: 0 },
    workers: 2,
    health: HEALTH,
    pools: poolsOf(backends),
    // One request per 5 s after the burst: no refill during the test, however slow the machine.
    routes: [{ path: "/ip", rateLimit: { perSecond: 0.2, burst: 3 }, pool: "a" }, { pool: "a" }],
  });
  await using sluice = await startSluice(cfg.file);
  // Fresh connections spread over the workers (SO_REUSEPORT hashes the client port).
  const statuses = await Promise.all(
    Array.from({ length: 20 }, async () => (await ask(sluice.port, "/ip")).status),
  );
  assert.equal(statuses.filter((s) => s === 200).length, 3, statuses.join(","));
  assert.equal(statuses.filter((s) => s === 429).length, 17);
});

Deno.test("per-pool health: one pool all down answers 503 on its routes only", async () => {
  await using backends = await startEchoBackends("up", "down1", "down2");
  const [up, down1, down2] = backends;
  await using cfg = await configDir({
    listen: { host: "127.0.0.1", port: 0 },
    health: { path: "/health", interval: "100ms", healthyThreshold: 1, unhealthyThreshold: 1 },
    pools: {
      web: { backends: [{ url: up.url, name: "up" }] },
      api: {
        backends: [{ url: down1.url, name: "down1" }, { url: down2.url, name: "down2" }],
      },
    },
    routes: [{ path: "/api", pool: "api" }, { pool: "web" }],
  });
  await using sluice = await startSluice(cfg.file);
  assert.match(await poolFor(sluice.port, "/api"), /^down[12]$/);
  down1.healthy = false;
  down2.healthy = false;
  await sluice.stderr.waitFor(/backend \S+ is down: .* pool=api/, 2, PATIENCE);
  const a = await ask(sluice.port, "/api/x");
  assert.equal(a.status, 503);
  for (let i = 0; i < 5; i++) assert.equal(await poolFor(sluice.port, `/page/${i}`), "up");
  assert.equal(sluice.stderr.matching(/is down: .* pool=web/).length, 0);
  down2.healthy = true;
  await waitFor(async () => (await poolFor(sluice.port, "/api")) === "down2", "api back", PATIENCE);
});

/** Runs `main.ts --check -c FILE` on `config`; returns the exit code and both outputs. */
async function check(config: unknown): Promise<{ code: number; stdout: string; stderr: string }> {
  await using cfg = await configDir(config);
  return await checkConfig(cfg.file);
}

Deno.test("--check: route errors, each with its routes[i].field line, all at once", async () => {
  const b = (port: number) => ({ backends: [{ url: `http://127.0.0.1:${port}` }] });
  const { code, stdout, stderr } = await check({
    pools: { a: b(9001), web: b(9002) },
    routes: [
      { path: "/x", pool: "nope" },
      { path: "/two", pool: "a", respond: { body: "x" } },
      { path: "/none" },
      { clientIp: ["10.0.0.0/8", "10.0.0.0/33"], pool: "a" },
      { clientIp: "not-an-address", pool: "web" },
      { pool: "web" },
      { path: "/late", pool: "a" },
    ],
  });
  assert.equal(code, 1, stdout);
  const lines = stderr.split("\n");
  const expect = [
    /^routes\[0\]\.pool: no pool named "nope" \(pools: a, web\)$/,
    /^routes\[1\]: has pool and respond; choose one action$/,
    /^routes\[2\]: needs an action: pool, redirect or respond$/,
    /^routes\[3\]\.clientIp\[1\]: .+/,
    /^routes\[4\]\.clientIp: .+/,
    /^routes\[6\]: is unreachable: routes\[5\] before it matches every request$/,
  ];
  for (const pattern of expect) {
    assert.ok(lines.some((l) => pattern.test(l)), `no line ${pattern} in:\n${stderr}`);
  }
  assert.ok(!lines.some((l) => /routes\[5\]/.test(l) && !/routes\[6\]/.test(l)), stderr);
  assert.equal(stdout, "", "nothing printed as the effective config");
});

Deno.test("--check: a pool no route uses is a warning, not an error", async () => {
  const { code, stdout, stderr } = await check({
    backends: [{ url: "http://127.0.0.1:9000" }],
    pools: {
      a: { backends: [{ url: "http://127.0.0.1:9001" }] },
      idle: { backends: [{ url: "http://127.0.0.1:9002" }] },
    },
    routes: [{ path: "/a", pool: "a" }, { pool: "default" }],
  });
  assert.equal(code, 0, stderr);
  assert.equal(stderr, "sluice: warning: pools.idle: no route uses this pool");
  const printed = JSON.parse(stdout);
  assert.deepEqual(Object.keys(printed.pools), ["a", "idle"]);
  assert.equal(printed.routes.length, 2);
});

Deno.test("metrics carry pool and route labels; admin API per pool and the old default-pool paths", async () => {
  await using backends = await startEchoBackends("d", "a1", "a2");
  const [d, a1, a2] = backends;
  await using cfg = await configDir({
    listen: { host: "127.0.0.1", port: 0 },
    health: HEALTH,
    admin: { host: "127.0.0.1", port: 0, token: TOKEN },
    backends: [{ url: d.url, name: "d" }],
    pools: { api: { backends: [{ url: a1.url, name: "a1" }, { url: a2.url, name: "a2" }] } },
    routes: [
      { name: "api", path: "/api", pool: "api" },
      { path: "/ping", respond: { body: "pong" } },
      { pool: "default" },
    ],
  });
  await using sluice = await startSluice(cfg.file);
  const admin = await adminUrl(sluice);
  const port = sluice.port;
  for (let i = 0; i < 4; i++) await ask(port, "/api/x");
  await ask(port, "/home");
  await ask(port, "/ping");

  const metrics = await (await fetch(`${admin}/metrics`)).text();
  const requests = (labels: string) =>
    metrics.split("\n").filter((l) => l.startsWith("sluice_requests_total{") && l.includes(labels));
  assert.equal(requests('pool="api",route="api",backend="a1"').length, 1, metrics);
  assert.equal(requests('pool="api",route="api",backend="a2"').length, 1, metrics);
  assert.equal(requests('pool="default",route="2",backend="d"').length, 1, metrics);
  assert.equal(requests('pool="",route="1",backend=""').length, 1, "respond: no pool, route 1");

  const json = async (path: string, init: RequestInit = {}) => {
    const res = await fetch(admin + path, {
      ...init,
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    return { status: res.status, body: await res.json() };
  };
  const pools = await json("/api/pools");
  assert.equal(pools.status, 200);
  assert.deepEqual(pools.body.map((p: { name: string }) => p.name), ["default", "api"]);
  const routes = await json("/api/routes");
  assert.equal(routes.body.length, 3);
  const status = await json("/api/status");
  assert.equal(status.body.pools.length, 2);
  assert.equal(status.body.routes.length, 3);
  const apiBackends = await json("/api/pools/api/backends");
  assert.deepEqual(apiBackends.body.map((b: { id: string }) => b.id).sort(), ["a1", "a2"]);
  assert.equal((await json("/api/pools/nope/backends")).status, 404);
  assert.equal((await json("/api/pools/api/backends/d")).status, 404, "d is not in api");

  // Drain a1 in pool api: api traffic goes to a2 only; the default pool is untouched.
  const drained = await json("/api/pools/api/backends/a1/drain", { method: "POST" });
  assert.equal(drained.status, 202);
  const seenA1 = a1.seen.length;
  for (let i = 0; i < 4; i++) assert.equal(await poolFor(port, "/api/y"), "a2");
  assert.equal(a1.seen.length, seenA1);
  assert.equal(await poolFor(port, "/home"), "d");
  assert.equal((await json("/api/pools/api/backends/a1/enable", { method: "POST" })).status, 200);
  const after = new Set<string>();
  for (let i = 0; i < 4; i++) after.add(await poolFor(port, "/api/z"));
  assert.deepEqual([...after].sort(), ["a1", "a2"]);

  // The old paths address the default pool.
  const old = await json("/api/backends");
  assert.deepEqual(old.body.map((b: { id: string }) => b.id), ["d"]);
  assert.equal((await json("/api/backends/d/disable", { method: "POST" })).status, 200);
  assert.equal((await ask(port, "/home")).status, 503, "the default pool has no backend left");
  assert.equal(await poolFor(port, "/api/q"), "a1", "other pools keep serving");
  assert.equal((await json("/api/backends/d/enable", { method: "POST" })).status, 200);
  assert.equal(await poolFor(port, "/home"), "d");
  assert.equal((await json("/api/backends/a1")).status, 404, "a1 is not in the default pool");
});

/** Sends requests from `clients` loops until `stop` resolves; returns failures and answers by backend. */
async function steadyLoad(port: number, clients: number, stop: Promise<void>) {
  let stopped = false;
  stop.then(() => stopped = true);
  const failures: string[] = [];
  const by: Record<string, number> = {};
  const loop = async (n: number) => {
    for (let i = 0; !stopped; i++) {
      try {
        const a = await ask(port, `/app/${n}/${i}`, { host: "app.example.com" });
        if (a.status !== 200) failures.push(`status ${a.status}: ${a.body.slice(0, 80)}`);
        else by[a.echo!.name] = (by[a.echo!.name] ?? 0) + 1;
      } catch (err) {
        failures.push(String(err));
      }
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, n) => loop(n)));
  return { failures, by };
}

Deno.test("reload (SIGHUP) swaps routes and pools under steady load with zero failed requests", async () => {
  await using backends = await startEchoBackends("blue", "green", "static");
  const [blue, green, staticB] = backends;
  const blueConfig = {
    listen: { host: "127.0.0.1", port: 0 },
    health: HEALTH,
    pools: { blue: { backends: [{ url: blue.url, name: "blue" }] } },
    routes: [{ host: "*.example.com", pool: "blue" }],
  };
  const greenConfig = {
    ...blueConfig,
    pools: {
      green: { backends: [{ url: green.url, name: "green" }] },
      static: { backends: [{ url: staticB.url, name: "static" }] },
    },
    routes: [
      { path: "/static", pool: "static" },
      { host: "app.example.com", path: "/app", pool: "green" },
    ],
  };
  await using cfg = await configDir(blueConfig);
  await using sluice = await startSluice(cfg.file);
  const done = Promise.withResolvers<void>();
  const load = steadyLoad(sluice.port, 4, done.promise);
  try {
    for (let round = 0; round < 4; round++) {
      const next = round % 2 === 0 ? greenConfig : blueConfig;
      const want = round % 2 === 0 ? green : blue;
      const seen = want.seen.length;
      await cfg.write(next);
      assert.match(await sighupReload(sluice), /configuration reloaded/);
      await waitFor(() => want.seen.length >= seen + 20, `traffic on ${want.name}`, PATIENCE);
    }
  } finally {
    done.resolve();
  }
  const { failures, by } = await load;
  assert.deepEqual(failures, []);
  assert.ok(by.blue > 0 && by.green > 0, JSON.stringify(by));
  assert.equal(sluice.stderr.matching(/configuration rejected/).length, 0);
  assert.ok(sluice.stderr.matching(/pool blue removed/).length >= 1);
});

Deno.test("reload: a request in flight finishes on the pool it started on after that pool is removed", async () => {
  await using backends = await startEchoBackends("old", "new");
  const [oldB, newB] = backends;
  const config = (b: EchoBackend) => ({
    listen: { host: "127.0.0.1", port: 0 },
    health: HEALTH,
    pools: { [b.name]: { backends: [{ url: b.url, name: b.name }] } },
    routes: [{ pool: b.name }],
  });
  await using cfg = await configDir(config(oldB));
  await using sluice = await startSluice(cfg.file);
  const slow = ask(sluice.port, "/slow/upload");
  await waitFor(() => oldB.held === 1, "the slow request at old", PATIENCE);
  await cfg.write(config(newB));
  await sighupReload(sluice);
  await sluice.stderr.waitFor(/pool old removed/);
  assert.equal(await poolFor(sluice.port, "/fresh"), "new");
  oldB.release();
  const answer = await slow;
  assert.equal(answer.status, 200);
  assert.equal(answer.echo?.name, "old");
  assert.equal(answer.echo?.target, "/slow/upload");
});

Deno.test("today's form: top-level backends, no routes, round robin on every path", async () => {
  const demo = await startBackends(2);
  try {
    await using cfg = await configDir({
      listen: { host: "127.0.0.1", port: 0 },
      health: { interval: "1m" },
      backends: demo.map((b) => ({ url: backendUrl(b) })),
    });
    await using sluice = await startSluice(cfg.file);
    const bodies = new Set<string>();
    for (const path of ["/", "/a/b?c=d", "/nothing/routes/here", "/x"]) {
      const a = await ask(sluice.port, path);
      assert.equal(a.status, 200);
      assert.match(a.body, /^Hello from backend server on port: \d+\n$/);
      bodies.add(a.body);
    }
    assert.deepEqual(
      [...bodies].sort(),
      demo.map((b) => `Hello from backend server on port: ${b.port}\n`).sort(),
    );
    assert.equal(sluice.stderr.matching(/warning/i).length, 0);
  } finally {
    await Promise.all(demo.map((b) => b.shutdown()));
  }
});
