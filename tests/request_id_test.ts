/**
 * Request IDs, end to end: X-Request-Id is kept or generated, reaches the backend, comes
 * back to the client (also on the balancer's own 502/503/504) and is in the access log.
 */
import assert from "node:assert/strict";
import { fileLines, waitFor } from "./helpers.ts";
import {
  configDir,
  get,
  PATIENCE,
  sighupReload,
  startBrokenBackend,
  startSluice,
  startTestBackends,
} from "./ops_helpers.ts";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** A config file body for `backends` (URLs) with a JSON access log at `path`. */
function config(backends: string[], path: string, extra: Record<string, unknown> = {}) {
  return {
    listen: { host: "127.0.0.1", port: 0 },
    health: { path: "/health", interval: "1m" },
    backends: backends.map((url) => ({ url })),
    accessLog: { format: "json", path },
    ...extra,
  };
}

/** The access log's records once it holds at least `n`. */
async function records(path: string, n: number): Promise<Record<string, unknown>[]> {
  return (await fileLines(path, n, PATIENCE)).map((l) => JSON.parse(l));
}

/** The X-Request-Id values the backend's /echo saw. */
function seenByBackend(body: string): string[] {
  const { headers } = JSON.parse(body) as { headers: [string, string][] };
  return headers.filter(([name]) => name === "x-request-id").map(([, value]) => value);
}

Deno.test("request id: a client's X-Request-Id is kept, passed to the backend, returned and logged", async () => {
  await using backends = await startTestBackends("a");
  await using cfg = await configDir({});
  const log = `${cfg.dir}/access.log`;
  await cfg.write(config([backends[0].url], log));
  await using sluice = await startSluice(cfg.file);

  const res = await get(`${sluice.url}/echo`, { "x-request-id": "client-chosen-42" });
  assert.equal(res.status, 200);
  assert.deepEqual(seenByBackend(res.body), ["client-chosen-42"]);
  assert.equal(res.headers.get("x-request-id"), "client-chosen-42");
  const [record] = await records(log, 1);
  assert.equal(record.request_id, "client-chosen-42");
});

Deno.test("request id: without one a fresh UUID is generated, passed to the backend, returned and logged", async () => {
  await using backends = await startTestBackends("a");
  await using cfg = await configDir({});
  const log = `${cfg.dir}/access.log`;
  await cfg.write(config([backends[0].url], log));
  await using sluice = await startSluice(cfg.file);

  const ids: string[] = [];
  for (let i = 0; i < 2; i++) {
    const res = await get(`${sluice.url}/echo`);
    const id = res.headers.get("x-request-id") ?? "";
    assert.match(id, UUID);
    assert.deepEqual(seenByBackend(res.body), [id]);
    ids.push(id);
  }
  assert.notEqual(ids[0], ids[1]);
  const logged = await records(log, 2);
  assert.deepEqual(logged.map((r) => r.request_id), ids);
});

Deno.test("request id: on the balancer's own 502, 504 and 503 too, kept or generated, and logged", async () => {
  await using backends = await startTestBackends("down");
  const [down] = backends;
  using closing = startBrokenBackend("close");
  using hanging = startBrokenBackend("hang");
  await using cfg = await configDir({});
  const log = `${cfg.dir}/access.log`;
  await cfg.write(config([closing.url], log));
  await using sluice = await startSluice(cfg.file);

  const expected: [number, string][] = [];
  const check = async (status: number) => {
    const kept = await get(`${sluice.url}/kept`, { "x-request-id": `mine-${status}` });
    assert.equal(kept.status, status);
    assert.equal(kept.headers.get("x-request-id"), `mine-${status}`);
    const fresh = await get(`${sluice.url}/fresh`);
    assert.equal(fresh.status, status);
    const id = fresh.headers.get("x-request-id") ?? "";
    assert.match(id, UUID);
    expected.push([status, `mine-${status}`], [status, id]);
  };

  // 502: the backend drops the connection.
  await check(502);
  // 504: the backend never answers within timeouts.response.
  await cfg.write(config([hanging.url], log, { timeouts: { response: "300ms" } }));
  await sighupReload(sluice);
  await check(504);
  // 503: no backend is available.
  down.healthy = false;
  await cfg.write(config([down.url], log));
  await sighupReload(sluice);
  await sluice.stderr.waitFor(new RegExp(`backend ${down.url} is down`));
  await check(503);

  const logged = await records(log, expected.length);
  assert.deepEqual(logged.map((r) => [r.status, r.request_id]), expected);
});

Deno.test("request id: a client id that is not a single word is quoted in the combined log", async () => {
  await using backends = await startTestBackends("a");
  await using cfg = await configDir({});
  const log = `${cfg.dir}/access.log`;
  await cfg.write(config([backends[0].url], log, { accessLog: { format: "combined", path: log } }));
  await using sluice = await startSluice(cfg.file);

  const id = 'two words "quoted"';
  const res = await get(`${sluice.url}/echo`, { "x-request-id": id });
  assert.equal(res.headers.get("x-request-id"), id);
  assert.deepEqual(seenByBackend(res.body), [id]);
  let line = "";
  await waitFor(
    async () => {
      line = (await Deno.readTextFile(log).catch(() => "")).trim();
      return line !== "";
    },
    "the access log line",
    PATIENCE,
  );
  const m = / retries=0 id=(.*) pool=\S+ route=\S+$/.exec(line);
  assert.ok(m, line);
  assert.equal(JSON.parse(m[1]), id);
});
