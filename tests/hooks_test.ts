/**
 * TypeScript hooks, end to end: sluice runs as a subprocess (main.ts) with a `hooks:` module
 * next to its config, in front of echo backends (one per pool). Short-circuit replies, pool
 * choice, rewrites, `onResponse`, async hooks, failures (500, logged with the request id, the
 * balancer keeps serving), reload (SIGHUP and --watch), and `deno check` of user modules
 * against the public types in mod.ts.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { ask, poolFor } from "./fixtures/client.ts";
import { type EchoBackend, poolsOf, startEchoBackends } from "./fixtures/echo_backend.ts";
import { configDir, PATIENCE, sighupReload, startSluice } from "./ops_helpers.ts";
import { checkConfig, runDeno } from "./process_helpers.ts";
import { RawClient } from "./proxy_helpers.ts";

/** The fixture hooks module, as an absolute file URL. */
const BASIC = new URL("./fixtures/hooks_basic.ts", import.meta.url).href;
/** mod.ts as an absolute file URL, for modules written to temp folders. */
const MOD = new URL("../mod.ts", import.meta.url).href;
const HEALTH = { path: "/health", interval: "1m" };

/** A config: pools alpha and beta, `/a` (and everything else routed) to alpha, hooks at `hooks`. */
function config(backends: readonly EchoBackend[], hooks: string, extra: object = {}) {
  return {
    listen: { host: "127.0.0.1", port: 0 },
    health: HEALTH,
    pools: poolsOf(backends),
    routes: [
      { path: "/direct", respond: { body: "direct\n" } },
      { name: "api", path: "/api", stripPrefix: true, pool: "alpha" },
      { name: "main", path: "/", pool: "alpha", requestHeaders: { set: { "x-route": "main" } } },
    ],
    hooks,
    ...extra,
  };
}

/** A hooks module (source text) that tags responses with `version`. */
function versioned(version: string): string {
  return `import type { Hooks } from "${MOD}";
export default {
  onResponse(res) {
    res.headers.set("x-hooks-version", "${version}");
  },
} satisfies Hooks;
`;
}

Deno.test("hooks: short-circuit, pool choice, rewrites, onResponse, async; a relative hooks path", async () => {
  await using backends = await startEchoBackends("alpha", "beta");
  const [alpha] = backends;
  await using cfg = await configDir(config(backends, "./hooks.ts"));
  // Relative to the config file's folder, not to sluice's working directory.
  await Deno.writeTextFile(`${cfg.dir}/hooks.ts`, `export { default } from "${BASIC}";\n`);
  await using sluice = await startSluice(cfg.file);
  const port = sluice.port;

  // A Fetch Response from onRequest answers the client; no backend sees the request.
  const seen = alpha.seen.length;
  const short = await ask(port, "/short", { headers: { "x-request-id": "short-1" } });
  assert.equal(short.status, 203);
  assert.equal(short.body, "answered by a hook\n");
  assert.equal(short.header("x-hook"), "short");
  assert.equal(short.header("x-request-id"), "short-1");
  assert.equal(alpha.seen.length, seen);

  // ctx.pool picks a pool by name; onResponse sees the backend and the pool.
  const plain = await ask(port, "/plain");
  assert.equal(plain.echo?.name, "alpha");
  assert.equal(plain.header("x-served-by"), "alpha");
  assert.equal(plain.header("x-pool"), "alpha");
  assert.equal(plain.header("x-route"), "main", "ctx.route is the route's name");
  assert.equal(plain.header("x-status-seen"), "200");
  assert.equal(plain.header("x-private"), null, "onResponse removed it");
  assert.equal(plain.header("x-state"), "kept", "ctx.state carries from onRequest");
  const beta = await ask(port, "/plain", { headers: { "x-tenant": "beta" } });
  assert.equal(beta.echo?.name, "beta");
  assert.equal(beta.header("x-served-by"), "beta");
  assert.equal(beta.header("x-pool"), "beta");

  // Rewrites: path (query kept), headers set and removed; the route's own edits still apply.
  const rw = await ask(port, "/rewrite/x/y?q=1", { headers: { "x-drop": "1", "x-keep": "k" } });
  assert.equal(rw.echo?.target, "/rewritten/x/y?q=1");
  assert.equal(rw.echo?.headers["x-hooked"], "yes");
  assert.equal(rw.echo?.headers["x-drop"], undefined);
  assert.equal(rw.echo?.headers["x-keep"], "k");
  assert.equal(rw.echo?.headers["x-route"], "main");
  assert.equal(rw.echo?.name, "alpha", "the pool was chosen before the rewrite set x-tenant");

  // Hooks see the request after the route's own rewrites, and have the last word.
  const stripped = await ask(port, "/api/rewrite/z?q=2");
  assert.equal(stripped.echo?.target, "/rewritten/z?q=2");
  assert.equal(stripped.header("x-route"), "api");

  // An async onRequest is awaited.
  assert.equal(await poolFor(port, "/async"), "beta");

  // What a hook sees of the request.
  const described = await ask(port, "/describe?a=1&b", {
    host: "Shop.Example:8080",
    headers: { "x-probe": "one", "X-Probe-Two": "two", "x-request-id": "desc-1" },
  });
  assert.deepEqual(JSON.parse(described.body), {
    method: "GET",
    path: "/describe",
    query: "a=1&b",
    target: "/describe?a=1&b",
    host: "Shop.Example:8080",
    ip: "127.0.0.1",
    protocol: "HTTP/1.1",
    tls: false,
    requestId: "desc-1",
    route: "main",
    pool: "alpha",
    header: "one",
    headers: [["x-probe", "one"], ["X-Probe-Two", "two"]],
  });

  // Routes that answer by themselves do not run hooks.
  const direct = await ask(port, "/direct");
  assert.deepEqual([direct.status, direct.body], [200, "direct\n"]);
  assert.equal(direct.header("x-served-by"), null);
});

Deno.test("hooks: requests no route matches reach onRequest, which may route them", async () => {
  await using backends = await startEchoBackends("alpha", "beta");
  await using cfg = await configDir({
    ...config(backends, fileURLToPath(BASIC)),
    routes: [{ path: "/a", pool: "alpha" }, { path: "/b", pool: "beta" }],
  });
  await using sluice = await startSluice(cfg.file);
  assert.equal(await poolFor(sluice.port, "/unrouted/x"), "beta");
  const none = await ask(sluice.port, "/nowhere");
  assert.equal(none.status, 404);
  assert.equal(none.body, "Not Found: no route matches this request\n");
  assert.equal(await poolFor(sluice.port, "/a"), "alpha");
});

Deno.test("hooks: a throwing hook, a rejected promise, a bad rewrite or an unknown pool give that request 500, logged with its request id", async () => {
  await using backends = await startEchoBackends("alpha", "beta");
  const [alpha] = backends;
  await using cfg = await configDir(config(backends, fileURLToPath(BASIC)));
  await using sluice = await startSluice(cfg.file);
  const port = sluice.port;
  const cases: [string, RegExp][] = [
    ["/throw", /hook onRequest failed .*requestId=id-throw.*hook exploded/],
    ["/reject", /hook onRequest failed .*requestId=id-reject.*hook rejected/],
    ["/bad-path", /hook onRequest failed .*requestId=id-bad-path.*must start with \//],
    ["/unknown-pool", /requestId=id-unknown-pool.*no pool named nowhere/],
    ["/throw-late", /hook onResponse failed .*requestId=id-throw-late.*onResponse exploded/],
    ["/drop-length", /requestId=id-drop-length.*Content-Length frames the request body/],
  ];
  for (const [path, logged] of cases) {
    const id = `id-${path.slice(1)}`;
    const seen = alpha.seen.length;
    const a = await ask(port, path, { headers: { "x-request-id": id } });
    assert.equal(a.status, 500, `${path}: ${a.body}`);
    assert.equal(a.body, "Internal Server Error\n");
    assert.equal(a.header("x-request-id"), id);
    await sluice.stderr.waitFor(logged);
    if (path !== "/throw-late") assert.equal(alpha.seen.length, seen, `${path} reached a backend`);
    // The balancer keeps serving, on the same connection setup as before.
    assert.equal(await poolFor(port, "/after"), "alpha");
  }
  // A POST whose hook tried to drop Content-Length: 500, and its body never reaches a backend
  // as a request of its own.
  using client = await RawClient.connect(port);
  const smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
  await client.send(
    `POST /drop-length HTTP/1.1\r\nHost: x\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`,
  );
  assert.equal((await client.readResponse()).status, 500);
  // A hook setting Content-Length on a response changes nothing: one, the right one.
  using again = await RawClient.connect(port);
  await again.send("GET /set-length HTTP/1.1\r\nHost: x\r\n\r\n");
  const framed = await again.readResponse();
  assert.equal(framed.headers.filter(([n]) => n === "content-length").length, 1, framed.head);
  assert.equal(JSON.parse(framed.text()).target, "/set-length");
  assert.ok(!alpha.seen.some((e) => e.target === "/smuggled"), "a body was sent as a request");

  // Many failures in a row do not stop it either.
  const failures = await Promise.all(
    Array.from({ length: 20 }, (_, i) => ask(port, i % 2 ? "/throw" : "/reject")),
  );
  assert.deepEqual(new Set(failures.map((f) => f.status)), new Set([500]));
  assert.equal(await poolFor(port, "/still"), "alpha");
});

Deno.test("hooks: SIGHUP reloads an edited hooks file; a broken one keeps the previous hooks", async () => {
  await using backends = await startEchoBackends("alpha", "beta");
  await using cfg = await configDir(config(backends, "./hooks.ts"));
  const hooksFile = `${cfg.dir}/hooks.ts`;
  await Deno.writeTextFile(hooksFile, versioned("1"));
  await using sluice = await startSluice(cfg.file);
  assert.equal((await ask(sluice.port, "/")).header("x-hooks-version"), "1");

  await Deno.writeTextFile(hooksFile, versioned("2"));
  await sighupReload(sluice);
  assert.equal((await ask(sluice.port, "/")).header("x-hooks-version"), "2");

  // A module that does not load, or exports the wrong shape: the reload is rejected.
  await Deno.writeTextFile(hooksFile, "export default {\n  onRequest(:\n};\n");
  sluice.kill("SIGHUP");
  await sluice.stderr.waitFor(/configuration rejected \(SIGHUP\)/);
  // (main.ts prints String(err): "Error: hooks: …"; the `Error: ` is tolerated here.)
  await sluice.stderr.waitFor(/invalid configuration: (Error: )?hooks: cannot load/);
  assert.equal((await ask(sluice.port, "/")).header("x-hooks-version"), "2");
  await Deno.writeTextFile(hooksFile, "export default { onRequest: 42 };\n");
  sluice.kill("SIGHUP");
  await sluice.stderr.waitFor(/configuration rejected \(SIGHUP\)/, 2);
  await sluice.stderr.waitFor(
    /invalid configuration: (Error: )?hooks: .*must default-export an object/,
  );
  assert.equal((await ask(sluice.port, "/")).header("x-hooks-version"), "2");

  // Fixed again: the next reload loads it (a failed import must not stick).
  await Deno.writeTextFile(hooksFile, versioned("3"));
  await sighupReload(sluice);
  assert.equal((await ask(sluice.port, "/")).header("x-hooks-version"), "3");

  // Dropping `hooks:` from the config turns them off.
  await cfg.write({ ...config(backends, "./hooks.ts"), hooks: undefined });
  await sighupReload(sluice);
  assert.equal((await ask(sluice.port, "/")).header("x-hooks-version"), null);
});

Deno.test("hooks with workers: 2: every worker runs them, and a SIGHUP reloads them in each", async () => {
  await using backends = await startEchoBackends("alpha", "beta");
  await using cfg = await configDir(config(backends, "./hooks.ts", { workers: 2 }));
  const hooksFile = `${cfg.dir}/hooks.ts`;
  await Deno.writeTextFile(hooksFile, versioned("1"));
  await using sluice = await startSluice(cfg.file);
  // Fresh connections spread over the workers (SO_REUSEPORT hashes the client port).
  const versions = async () =>
    new Set(
      await Promise.all(
        Array.from({ length: 16 }, async () =>
          (await ask(sluice.port, "/")).header("x-hooks-version")),
      ),
    );
  assert.deepEqual(await versions(), new Set(["1"]));
  await Deno.writeTextFile(hooksFile, versioned("2"));
  await sighupReload(sluice);
  assert.deepEqual(await versions(), new Set(["2"]));
});

// main.ts's --watch reacts to events on the config file only (and the `..data` symlink swap of
// a Kubernetes ConfigMap), so an edit to the hooks file alone does not reload, whether the hooks
// file sits next to the config or elsewhere. These tests state the wanted behaviour; they are
// ignored until main.ts also watches the hooks file (see the notes for the change).
const WATCHES_HOOKS = true;

for (const where of ["next to the config", "in another folder"] as const) {
  Deno.test({
    name: `hooks: --watch reloads when only the hooks file (${where}) is edited`,
    ignore: !WATCHES_HOOKS,
    async fn() {
      await using backends = await startEchoBackends("alpha", "beta");
      const elsewhere = where === "in another folder"
        ? await Deno.makeTempDir({ prefix: "sluice_hooks_" })
        : undefined;
      try {
        await using cfg = await configDir(config(backends, ""));
        const hooksFile = `${elsewhere ?? cfg.dir}/hooks.ts`;
        await Deno.writeTextFile(hooksFile, versioned("1"));
        await cfg.write(config(backends, hooksFile));
        await using sluice = await startSluice(cfg.file, ["--watch"]);
        assert.equal((await ask(sluice.port, "/")).header("x-hooks-version"), "1");
        await Deno.writeTextFile(hooksFile, versioned("2"));
        await sluice.stderr.waitFor(/configuration reloaded \(file changed\)/, 1, PATIENCE);
        assert.equal((await ask(sluice.port, "/")).header("x-hooks-version"), "2");
      } finally {
        if (elsewhere) await Deno.remove(elsewhere, { recursive: true });
      }
    },
  });
}

Deno.test("hooks: a module that does not load or has the wrong shape stops the start with a hooks: line", async () => {
  await using backends = await startEchoBackends("alpha", "beta");
  await using cfg = await configDir(config(backends, "./hooks.ts"));
  const run = () =>
    runDeno([
      "run",
      "--allow-net",
      "--allow-read",
      "--allow-env=LOG_TOKENS,LOG_STREAM",
      "main.ts",
      "-c",
      cfg.file,
    ]);
  let r = await run();
  assert.equal(r.code, 1);
  // The file is checked with the rest of the configuration, before anything starts.
  assert.match(r.stderr, /invalid configuration in .*\nhooks: cannot load .*hooks\.ts/);
  assert.doesNotMatch(r.stderr, /\?v=/, "the error names the file, not an internal URL");
  await Deno.writeTextFile(`${cfg.dir}/hooks.ts`, "export const onRequest = () => {};\n");
  r = await run();
  assert.equal(r.code, 1);
  assert.match(r.stderr, /invalid configuration in .*\nhooks: .*must default-export an object/);
  assert.doesNotMatch(r.stderr, /sluice listening/);
});

// `--check` validates the file but does not import the hooks module, so a hooks module that
// cannot load passes --check and then stops the start (or is rejected on reload). This test
// states the wanted behaviour and is ignored until --check loads the hooks (see the notes).
const CHECK_LOADS_HOOKS = true;

Deno.test({
  name: "hooks: --check rejects a hooks module that does not default-export hooks",
  ignore: !CHECK_LOADS_HOOKS,
  async fn() {
    await using backends = await startEchoBackends("alpha", "beta");
    await using cfg = await configDir(config(backends, "./hooks.ts"));
    await Deno.writeTextFile(`${cfg.dir}/hooks.ts`, "export default { onRequest: 42 };\n");
    const { code, stderr } = await checkConfig(cfg.file);
    assert.equal(code, 1);
    assert.ok(
      stderr.split("\n").some((l) => /^hooks: .*must default-export an object/.test(l)),
      stderr,
    );
  },
});

Deno.test("hooks: deno check passes a correct module and fails wrong uses of the API", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sluice_hooks_types_" });
  try {
    const write = async (name: string, body: string) => {
      const path = `${dir}/${name}`;
      await Deno.writeTextFile(path, `import type { Hooks } from "${MOD}";\n${body}`);
      return path;
    };
    const good = await write(
      "good.ts",
      `export default {
  async onRequest(req, ctx) {
    if (req.path === "/ping") return new Response("pong");
    if (req.header("x-tenant") === "beta") ctx.pool = "beta";
    req.setHeader("x-seen", req.ip);
    ctx.state.started = performance.now();
  },
  onResponse(res, ctx) {
    res.headers.set("x-served-by", ctx.backend.name);
  },
} satisfies Hooks;
`,
    );
    const badPool = await write(
      "bad_pool.ts",
      `export default {
  onRequest(_req, ctx) {
    ctx.pool = 1;
  },
} satisfies Hooks;
`,
    );
    const badHeader = await write(
      "bad_header.ts",
      `export default {
  onResponse(res) {
    res.headers.set(1, "x");
  },
} satisfies Hooks;
`,
    );
    const badReturn = await write(
      "bad_return.ts",
      `export default {
  onRequest() {
    return "not a Response";
  },
} satisfies Hooks;
`,
    );
    // Run where a user keeps their hooks: outside the repository, without its deno.json, so
    // mod.ts must type-check on its own (no import-map names such as "zod" in its graph).
    const check = async (...files: string[]) => {
      const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
        args: ["check", "--quiet", ...files],
        cwd: dir,
        stdin: "null",
      }).output();
      return { code, out: new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr) };
    };
    const ok = await check(good);
    assert.equal(ok.code, 0, ok.out);
    const bad = await check(badPool, badHeader, badReturn);
    assert.equal(bad.code, 1, bad.out);
    // deno prints each error followed by its place (file:line:column).
    // deno-lint-ignore no-control-regex
    const plain = bad.out.replace(/\x1b\[[0-9;]*m/g, "");
    assert.match(
      plain,
      /TS2322[\s\S]*?'number' is not assignable to type 'string'[\s\S]*?bad_pool\.ts:4/,
    );
    assert.match(
      plain,
      /TS2345[\s\S]*?'number' is not assignable to parameter of type 'string'[\s\S]*?bad_header\.ts:4/,
    );
    assert.match(plain, /bad_return\.ts:/);
    assert.doesNotMatch(plain, /good\.ts/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
