/** The admin listener: every endpoint, the token rules, error answers and draining. */
import assert from "node:assert/strict";
import type { BackendView, StatusView } from "../lib/admin/api.ts";
import { startAdmin } from "../lib/admin/server.ts";
import { ConfigError, validateConfig } from "../lib/config.ts";
import {
  type AdminFixture,
  readEvents,
  startAdminFixture,
  TOKEN,
  traffic,
} from "./admin_fixture.ts";
import { backendUrl, startBackends, startTestBalancer, waitFor } from "./helpers.ts";

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

async function status(f: AdminFixture): Promise<StatusView> {
  const res = await f.call("GET", "/api/status");
  assert.equal(res.status, 200);
  return res.body as unknown as StatusView;
}

function backend(s: StatusView, id: string): BackendView {
  const b = s.backends.find((b) => b.id === id);
  assert.ok(b, `backend ${id} in ${s.backends.map((b) => b.id)}`);
  return b;
}

/** The parts of the status an operator changes; compared before and after refused requests. */
function shape(s: StatusView) {
  return s.backends.map((b) => ({ id: b.id, url: b.url, state: b.state, weight: b.weight }));
}

Deno.test("GET /api/status describes the balancer and every backend", async () => {
  await using f = await startAdminFixture({ backends: 2, named: false });
  const [b0, b1] = f.backends;
  const id0 = `127.0.0.1:${b0.port}`;
  const id1 = `127.0.0.1:${b1.port}`;
  await waitFor(
    async () => (await status(f)).backends.every((b) => b.lastProbe !== null),
    "first health probes",
  );
  await traffic(f.tb.url, 6);
  const s = await status(f);
  assert.equal(s.configVersion, 1);
  assert.equal(s.strategy, "round-robin");
  assert.match(s.startedAt, ISO);
  assert.ok(s.uptimeSeconds >= 0 && s.uptimeSeconds < 60);
  assert.deepEqual(s.backends.map((b) => b.id), [id0, id1]);
  const b = backend(s, id0);
  assert.equal(b.url, backendUrl(b0));
  assert.equal(b.state, "up");
  assert.equal(typeof b.reason, "string");
  assert.match(b.since, ISO);
  assert.equal(b.weight, 1);
  assert.equal(b.effectiveWeight, 1);
  assert.equal(b.inflight, 0);
  assert.equal(b.maxConnections, null);
  assert.deepEqual(b.responses, { "1xx": 0, "2xx": 3, "3xx": 0, "4xx": 0, "5xx": 0, failed: 0 });
  assert.ok(b.latencyMs > 0, "latency is measured");
  assert.ok(b.lastProbe);
  assert.equal(b.lastProbe.ok, true);
  assert.equal(b.lastProbe.status, 200);
  assert.equal(b.lastProbe.error, null);
  assert.match(b.lastProbe.time, ISO);
  assert.ok(b.lastProbe.durationMs >= 0);
  assert.equal("drained" in b, false, "drained only appears while draining");
  assert.equal(backend(s, id1).responses["2xx"], 3);

  const one = await f.call("GET", `/api/backends/${id1}`);
  assert.equal(one.status, 200);
  assert.equal(one.body.id, id1);
  const list = await f.call("GET", "/api/backends");
  assert.deepEqual((list.body as unknown as BackendView[]).map((b) => b.id), [id0, id1]);
});

Deno.test("without a token, reads work on loopback and every write is refused with 403", async () => {
  await using f = await startAdminFixture();
  const before = shape(await status(f));
  for (
    const [method, path, body] of [
      ["POST", "/api/backends/a/drain"],
      ["POST", "/api/backends/a/disable"],
      ["POST", "/api/backends/a/enable"],
      ["PATCH", "/api/backends/a", { weight: 5 }],
      ["DELETE", "/api/backends/a"],
      ["POST", "/api/backends", { url: "http://127.0.0.1:9" }],
    ] as const
  ) {
    for (const token of [false, true]) {
      const res = await f.call(method, path, { body, token });
      assert.equal(res.status, 403, `${method} ${path}`);
      assert.match(String(res.body.error), /admin\.token/);
    }
  }
  assert.deepEqual(shape(await status(f)), before);
  const metrics = await fetch(f.base + "/metrics");
  assert.equal(metrics.status, 200);
  await metrics.body?.cancel();
});

Deno.test("with a token, writes need it: 401 with WWW-Authenticate otherwise", async () => {
  await using f = await startAdminFixture({ token: TOKEN });
  const before = shape(await status(f));
  for (const token of [false, "wrong-token-0123456789", TOKEN + "x", TOKEN.slice(0, -1)]) {
    const res = await f.call("POST", "/api/backends/a/disable", { token });
    assert.equal(res.status, 401);
    assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/);
    assert.equal(typeof res.body.error, "string");
  }
  const basic = await fetch(f.base + "/api/backends/a/disable", {
    method: "POST",
    headers: { authorization: `Basic ${btoa("admin:" + TOKEN)}` },
  });
  assert.equal(basic.status, 401);
  await basic.body?.cancel();
  assert.deepEqual(shape(await status(f)), before, "refused writes change nothing");

  // Reads stay open on loopback; the auth scheme is case-insensitive.
  assert.equal((await f.call("GET", "/api/status")).status, 200);
  const ok = await fetch(f.base + "/api/backends/a/disable", {
    method: "POST",
    headers: { authorization: `bearer ${TOKEN}` },
  });
  assert.equal(ok.status, 200);
  assert.equal((await ok.json()).state, "disabled");
  assert.ok(f.tb.logs.some((l) => l.includes("admin: POST /api/backends/a/disable -> 200")));
  assert.ok(f.tb.logs.some((l) => l.includes("refused POST /api/backends/a/disable")));
});

Deno.test("a non-loopback admin listener needs a token, and then for reads too", async () => {
  assert.throws(
    () => validateConfig({ backends: [{ url: "http://127.0.0.1:9" }], admin: { host: "0.0.0.0" } }),
    (err) => err instanceof ConfigError && err.problems.some((p) => p.startsWith("admin.token")),
  );
  const [b] = await startBackends(1);
  await using tb = await startTestBalancer({ backends: [{ url: backendUrl(b) }] });
  try {
    await assert.rejects(
      startAdmin(tb.balancer, { host: "0.0.0.0", port: 0 }),
      /admin\.token is required/,
    );
    await assert.rejects(
      startAdmin(tb.balancer, { host: "127.0.0.1", port: tb.balancer.addr.port, token: TOKEN }),
      /traffic port/,
    );
  } finally {
    await b.shutdown();
  }

  await using f = await startAdminFixture({ host: "0.0.0.0", token: TOKEN });
  for (const path of ["/api/status", "/metrics", "/api/events", "/api/backends/a"]) {
    const res = await f.call("GET", path);
    assert.equal(res.status, 401, path);
    assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/);
  }
  assert.equal((await f.call("GET", "/api/status", { token: true })).status, 200);
  // The dashboard page holds no data and must load before it can ask for the token.
  const page = await fetch(f.base + "/");
  assert.equal(page.status, 200);
  assert.doesNotMatch(await page.text(), /127\.0\.0\.1/);
});

Deno.test("POST /api/backends adds a backend that takes traffic at once", async () => {
  await using f = await startAdminFixture({ token: TOKEN, backends: 1 });
  const [extra] = await startBackends(1);
  try {
    const res = await f.call("POST", "/api/backends", {
      token: true,
      body: { url: backendUrl(extra), name: "extra", weight: 2, maxConnections: 10 },
    });
    assert.equal(res.status, 201);
    assert.equal(res.headers.get("location"), "/api/backends/extra");
    assert.equal(res.body.id, "extra");
    assert.equal(res.body.weight, 2);
    assert.equal(res.body.maxConnections, 10);
    assert.deepEqual((await status(f)).backends.map((b) => b.id), ["a", "extra"]);
    const bodies = await traffic(f.tb.url, 4);
    assert.ok(bodies.some((t) => t.includes(`port: ${extra.port}`)), "the new backend answers");

    const dup = await f.call("POST", "/api/backends", {
      token: true,
      body: { url: backendUrl(extra), name: "a" },
    });
    assert.equal(dup.status, 409, "the id a is taken");
    const dupName = await f.call("POST", "/api/backends", {
      token: true,
      body: { url: "http://127.0.0.1:9", name: "extra" },
    });
    assert.equal(dupName.status, 409);
    assert.match(String(dupName.body.error), /extra already exists/);
    assert.deepEqual((await status(f)).backends.map((b) => b.id), ["a", "extra"]);
  } finally {
    await f.call("DELETE", "/api/backends/extra", { token: true });
    await extra.shutdown();
  }
});

Deno.test("DELETE /api/backends/{id} takes the backend out of the pool", async () => {
  await using f = await startAdminFixture({ token: TOKEN, backends: 2 });
  const res = await f.call("DELETE", "/api/backends/a", { token: true });
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, { removed: "a" });
  assert.deepEqual((await status(f)).backends.map((b) => b.id), ["b"]);
  const bodies = await traffic(f.tb.url, 4);
  assert.ok(bodies.every((t) => t.includes(`port: ${f.backends[1].port}`)));
  assert.equal((await f.call("DELETE", "/api/backends/a", { token: true })).status, 404);
});

Deno.test("disable and enable take a backend out of rotation and back", async () => {
  await using f = await startAdminFixture({ token: TOKEN, backends: 2 });
  const [a, b] = f.backends;
  const off = await f.call("POST", "/api/backends/a/disable", { token: true });
  assert.equal(off.status, 200);
  assert.equal(off.body.state, "disabled");
  assert.equal(off.body.reason, "disabled by operator");
  let bodies = await traffic(f.tb.url, 4);
  assert.ok(bodies.every((t) => t.includes(`port: ${b.port}`)), "a gets nothing while disabled");

  const on = await f.call("POST", "/api/backends/a/enable", { token: true });
  assert.equal(on.status, 200);
  assert.equal(on.body.state, "up");
  bodies = await traffic(f.tb.url, 4);
  assert.ok(bodies.some((t) => t.includes(`port: ${a.port}`)), "a is back in rotation");
  assert.ok(f.tb.logs.some((l) => l.includes("backend a disabled by operator")));
});

Deno.test("PATCH /api/backends/{id} changes the weight at once", async () => {
  await using f = await startAdminFixture({
    token: TOKEN,
    backends: 2,
    config: { strategy: "weighted-round-robin" },
  });
  const [a] = f.backends;
  const res = await f.call("PATCH", "/api/backends/a", { token: true, body: { weight: 3 } });
  assert.equal(res.status, 200);
  assert.equal(res.body.weight, 3);
  assert.equal(res.body.effectiveWeight, 3);
  const bodies = await traffic(f.tb.url, 40);
  const toA = bodies.filter((t) => t.includes(`port: ${a.port}`)).length;
  assert.ok(toA >= 29 && toA <= 31, `a answered ${toA} of 40 with weight 3 against 1`);
});

Deno.test("bad requests get JSON errors and never change state", async () => {
  await using f = await startAdminFixture({ token: TOKEN, backends: 2 });
  const before = shape(await status(f));
  const cases: [string, string, { body?: unknown; raw?: string }, number, RegExp][] = [
    ["GET", "/api/nope", {}, 404, /no such endpoint/],
    ["GET", "/nope", {}, 404, /no such endpoint/],
    ["GET", "/api/backends/ghost", {}, 404, /no backend with id ghost/],
    ["POST", "/api/backends/ghost/drain", {}, 404, /ghost/],
    ["POST", "/api/backends/ghost/enable", {}, 404, /ghost/],
    ["POST", "/api/backends/ghost/disable", {}, 404, /ghost/],
    ["PATCH", "/api/backends/ghost", { body: { weight: 2 } }, 404, /ghost/],
    ["DELETE", "/api/backends/ghost", {}, 404, /ghost/],
    ["POST", "/api/backends/a/reboot", {}, 404, /no such endpoint/],
    ["PUT", "/api/status", {}, 405, /PUT not allowed/],
    ["DELETE", "/api/backends", {}, 405, /not allowed/],
    ["POST", "/api/backends/a", {}, 405, /not allowed/],
    ["POST", "/metrics", {}, 405, /not allowed/],
    ["POST", "/api/backends", { raw: "{not json" }, 400, /invalid JSON/],
    ["POST", "/api/backends", { raw: "" }, 400, /expected a JSON body/],
    ["POST", "/api/backends", { body: [1, 2] }, 400, /body: must be a mapping/],
    ["POST", "/api/backends", { body: { url: "ftp://x" } }, 400, /url: must be an http/],
    ["POST", "/api/backends", { body: { name: "x" } }, 400, /url: is required/],
    [
      "POST",
      "/api/backends",
      { body: { url: "http://127.0.0.1:9", weight: -1 } },
      400,
      /weight: must be at least 0/,
    ],
    [
      "POST",
      "/api/backends",
      { body: { url: "http://127.0.0.1:9", port: 9 } },
      400,
      /port: applies to dns entries only/,
    ],
    ["POST", "/api/backends", { raw: JSON.stringify({ pad: "x".repeat(70_000) }) }, 413, /larger/],
    ["PATCH", "/api/backends/a", { body: { weight: "heavy" } }, 400, /weight: must be a number/],
    ["PATCH", "/api/backends/a", { body: { weight: 1.5 } }, 400, /weight: must be an integer/],
    ["PATCH", "/api/backends/a", { body: { weight: 1001 } }, 400, /weight: must be at most 1000/],
    ["PATCH", "/api/backends/a", { body: {} }, 400, /weight: is required/],
    ["PATCH", "/api/backends/a", { body: { weight: 2, url: "x" } }, 400, /url: unknown key/],
  ];
  for (const [method, path, options, code, message] of cases) {
    const res = await f.call(method, path, { token: true, ...options });
    assert.equal(res.status, code, `${method} ${path} ${JSON.stringify(options).slice(0, 60)}`);
    assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
    assert.match(String(res.body.error), message, `${method} ${path}: ${res.body.error}`);
  }
  const wrongMethod = await f.call("GET", "/api/backends/a/drain");
  assert.equal(wrongMethod.status, 405);
  assert.equal(wrongMethod.headers.get("allow"), "POST");
  assert.deepEqual(shape(await status(f)), before);
});

Deno.test("drain stops new requests and reports drained once the in-flight request ends", async () => {
  const release = Promise.withResolvers<void>();
  const arrived = Promise.withResolvers<void>();
  const slow = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    if (new URL(req.url).pathname !== "/slow") return new Response("ok");
    arrived.resolve();
    await release.promise;
    return new Response("slow done");
  });
  try {
    await using f = await startAdminFixture({ token: TOKEN, backends: 1 });
    // Swap the pool for the slow server plus the demo backend, through the API itself.
    const added = await f.call("POST", "/api/backends", {
      token: true,
      body: { url: `http://127.0.0.1:${slow.addr.port}`, name: "slow" },
    });
    assert.equal(added.status, 201);
    await f.call("POST", "/api/backends/a/disable", { token: true });
    const pending = fetch(f.tb.url + "/slow").then((r) => r.text());
    await arrived.promise;
    await f.call("POST", "/api/backends/a/enable", { token: true });

    const drain = await f.call("POST", "/api/backends/slow/drain", { token: true });
    assert.equal(drain.status, 202);
    assert.equal(drain.body.state, "draining");
    assert.equal(drain.body.inflight, 1);
    assert.equal(drain.body.drained, false);

    const bodies = await traffic(f.tb.url, 5);
    assert.ok(bodies.every((t) => t.includes(`port: ${f.backends[0].port}`)), "no new requests");
    assert.equal(backend(await status(f), "slow").drained, false);

    release.resolve();
    assert.equal(await pending, "slow done", "the in-flight request completes");
    await waitFor(async () => backend(await status(f), "slow").drained === true, "drained");
    const s = backend(await status(f), "slow");
    assert.equal(s.state, "draining");
    assert.equal(s.inflight, 0);
    assert.ok(f.tb.logs.some((l) => l.includes(`127.0.0.1:${slow.addr.port} is drained`)));
  } finally {
    release.resolve();
    await slow.shutdown();
  }
});

Deno.test("GET /api/events streams a snapshot, then per-second updates with the traffic", async () => {
  await using f = await startAdminFixture({ token: TOKEN });
  const res = await fetch(f.base + "/api/events");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
  const events = readEvents(res);
  try {
    const first = (await events.next()).value!;
    assert.equal(first.event, "snapshot");
    const snapshot = JSON.parse(first.data);
    assert.equal(snapshot.writable, true);
    assert.equal(snapshot.status.backends.length, 2);
    assert.equal(snapshot.series.total.count.length, 300, "five minutes of seconds");
    assert.deepEqual(Object.keys(snapshot.series.backends), ["default/a", "default/b"]);

    await traffic(f.tb.url, 6);
    let seen = 0;
    let summary;
    const deadline = Date.now() + 10_000;
    while (seen < 3 && Date.now() < deadline) {
      const { value } = await events.next();
      assert.equal(value!.event, "update");
      const frame = JSON.parse(value!.data);
      seen += frame.series.backends["default/a"].count.reduce((n: number, c: number) => n + c, 0);
      summary = frame.summary.backends["default/a"];
    }
    assert.equal(seen, 3, "a's three requests show up in the per-second series");
    assert.ok(summary.rps > 0);
    assert.equal(summary.errorRate, 0);
    assert.ok(summary.p50 > 0 && summary.p99 >= summary.p50);
  } finally {
    await events.return(undefined);
  }
});

Deno.test("shutting the admin listener down ends open event streams", async () => {
  await using f = await startAdminFixture();
  const res = await fetch(f.base + "/api/events");
  const events = readEvents(res);
  assert.equal((await events.next()).value?.event, "snapshot");
  await f.admin.shutdown();
  assert.equal((await events.next()).done, true);
  const s = await (await fetch(`${f.tb.url}/`)).text();
  assert.match(s, /Hello from backend/, "traffic is unaffected");
});

Deno.test("the dashboard and the metrics are served with the right types", async () => {
  await using f = await startAdminFixture({ token: TOKEN });
  const page = await fetch(f.base + "/");
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
  assert.match(page.headers.get("content-security-policy") ?? "", /script-src 'self'/);
  assert.match(await page.text(), /<script src="app\.js"/);
  for (const [path, type] of [["/app.js", "text/javascript"], ["/style.css", "text/css"]]) {
    const res = await fetch(f.base + path);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", new RegExp(`^${type}`));
    assert.ok((await res.text()).length > 1000);
  }
  const metrics = await fetch(f.base + "/metrics");
  assert.equal(metrics.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  assert.match(await metrics.text(), /^# HELP sluice_/m);
  assert.equal((await f.call("POST", "/", { token: true })).status, 405);
});
