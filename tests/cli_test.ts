/** main.ts and backend.ts as users run them: real subprocesses, real sockets, real signals. */
import assert from "node:assert/strict";
import { type DemoBackend, startBackends, withFile } from "./helpers.ts";
import { mainArgs, ROOT, spawn, startMain } from "./process_helpers.ts";

// Deno's start-up on a busy 2-core machine can take seconds; generous, since waits end on events.
const STARTUP = 60_000;

/** Runs `deno <args>` in the repository root to completion; returns its exit code and output. */
async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), { args, cwd: ROOT, stdin: "null" }).output();
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

/** Runs main.ts to completion and returns its exit code and output. */
function sluice(...args: string[]) {
  return run([...mainArgs(), ...args]);
}

/**
 * Starts main.ts on 127.0.0.1 port 0 in front of `backends` and waits for its "listening on"
 * line; returns the process and the port.
 */
function startSluice(backends: DemoBackend[], ...args: string[]) {
  const urls = backends.flatMap((b) => ["--backend", `http://127.0.0.1:${b.port}`]);
  return startMain(["--host", "127.0.0.1", "--port", "0", ...urls, ...args], {
    timeout: STARTUP,
  });
}

async function text(url: string, init?: RequestInit): Promise<{ status: number; body: string }> {
  const res = await fetch(url, init);
  return { status: res.status, body: await res.text() };
}

Deno.test("--help and -h print the usage with every flag and exit 0", async () => {
  for (const flag of ["--help", "-h"]) {
    const { code, stdout, stderr } = await sluice(flag);
    assert.equal(code, 0, stderr);
    assert.match(stdout, /^sluice \d+\.\d+\.\d+: an HTTP load balancer\n/);
    for (
      const name of [
        "-c, --config FILE",
        "--host HOST",
        "--port PORT",
        "--backend URL",
        "--strategy NAME",
        "--health-path PATH",
        "--health-interval DUR",
        "--health-timeout DUR",
        "--log-level LEVEL",
        "--log-format FORMAT",
        "--check",
        "--watch",
        "-h, --help",
        "-V, --version",
      ]
    ) {
      assert.ok(stdout.includes(name), `usage lists ${name}`);
    }
  }
});

Deno.test("--version and -V print deno.json's version and exit 0", async () => {
  const { version } = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  for (const flag of ["--version", "-V"]) {
    const { code, stdout } = await sluice(flag);
    assert.equal(code, 0);
    assert.equal(stdout, `sluice ${version}\n`);
  }
});

Deno.test("--check prints sluice.yaml's effective config as JSON and exits 0", async () => {
  const { code, stdout, stderr } = await sluice("--check", "--config", "sluice.yaml");
  assert.equal(code, 0, stderr);
  const config = JSON.parse(stdout);
  assert.deepEqual(config.listen, { host: "0.0.0.0", port: 8080 });
  assert.equal(config.strategy, "round-robin");
  assert.equal(config.backends.length, 3);
  assert.deepEqual(config.health, {
    path: "/health",
    interval: "10s",
    timeout: "2s",
    healthyThreshold: 2,
    unhealthyThreshold: 3,
    expectStatus: "200-399",
  });
  assert.deepEqual(config.timeouts, {
    connect: "3s",
    response: "30s",
    idle: "1m",
    drain: "30s",
    clientHeader: "10s",
    clientIdle: "75s",
    client: "1m",
    tunnel: "1h",
  });
});

Deno.test("--check: flags override the file; repeated --backend replaces its list", async () => {
  const { code, stdout, stderr } = await sluice(
    "--check",
    "-c",
    "sluice.yaml",
    "--host",
    "127.0.0.1",
    "--port",
    "9999",
    "--backend",
    "http://127.0.0.1:9001",
    "--backend",
    "http://127.0.0.1:9002",
    "--strategy",
    "least-connections",
    "--health-path",
    "/ready",
    "--health-interval",
    "5s",
    "--health-timeout",
    "250ms",
    "--log-level",
    "debug",
    "--log-format",
    "json",
  );
  assert.equal(code, 0, stderr);
  const config = JSON.parse(stdout);
  assert.deepEqual(config.listen, { host: "127.0.0.1", port: 9999 });
  assert.deepEqual(config.backends, [
    { url: "http://127.0.0.1:9001", weight: 1 },
    { url: "http://127.0.0.1:9002", weight: 1 },
  ]);
  assert.equal(config.strategy, "least-connections");
  assert.deepEqual(
    [config.health.path, config.health.interval, config.health.timeout],
    ["/ready", "5s", "250ms"],
  );
  assert.deepEqual(config.log, { level: "debug", format: "json" });
  assert.deepEqual(config.timeouts.idle, "1m", "what no flag covers still comes from the file");
});

Deno.test("--check without a file: --health-interval 250ms alone is valid", async () => {
  const { code, stdout, stderr } = await sluice(
    "--check",
    "--backend",
    "http://127.0.0.1:9001",
    "--health-interval",
    "250ms",
  );
  assert.equal(code, 0, stderr);
  const config = JSON.parse(stdout);
  assert.equal(config.health.interval, "250ms");
  assert.equal(config.health.timeout, "250ms", "the 2s default timeout shrinks to the interval");
  assert.deepEqual(config.listen, { host: "0.0.0.0", port: 8080 });
});

Deno.test("--check with a shorter --health-interval than the file's timeout names the conflict", async () => {
  const { code, stdout, stderr } = await sluice(
    "--check",
    "-c",
    "sluice.yaml",
    "--health-interval",
    "250ms",
  );
  assert.equal(code, 1);
  assert.equal(stdout, "");
  assert.equal(
    stderr,
    "sluice: invalid configuration in sluice.yaml:\n" +
      "health.timeout: must not be longer than health.interval\n",
  );
});

Deno.test("--check with a bad file exits 1 and prints every error, one per line", async () => {
  const file = "helth: { path: /x }\nstrategy: fastest\nlisten: { port: 70000 }\nbackends:\n" +
    "  - url: http://127.0.0.1:8081\n  - url: ftp://127.0.0.1:21\n    weight: heavy\n" +
    "health: { interval: 10 sec }\n";
  await withFile("bad.yaml", file, async (path) => {
    const { code, stdout, stderr } = await sluice("--check", "--config", path);
    assert.equal(code, 1);
    assert.equal(stdout, "");
    const lines = stderr.trimEnd().split("\n");
    assert.equal(lines[0], `sluice: invalid configuration in ${path}:`);
    assert.deepEqual(lines.slice(1).toSorted(), [
      "backends[1].url: must be an http:// or https:// URL",
      "backends[1].weight: must be a number",
      'health.interval: must be a duration such as 250ms, 2s or 1m (got "10 sec")',
      "helth: unknown key (did you mean health?)",
      "listen.port: must be at most 65535",
      'strategy: must be one of "round-robin", "weighted-round-robin", "least-connections", ' +
      '"random", "power-of-two", "latency", "consistent-hash", "maglev"',
    ]);
  });
});

Deno.test("--check with malformed YAML or JSON exits 1 with one line giving the place", async () => {
  await withFile("broken.yaml", "backends:\n  - url: [http://a:1\n", async (path) => {
    const { code, stderr } = await sluice("--check", "-c", path);
    assert.equal(code, 1);
    const lines = stderr.trimEnd().split("\n");
    assert.equal(lines.length, 2, stderr);
    assert.match(lines[1], new RegExp(`^${path}:\\d+:\\d+: \\S`));
  });
  await withFile("broken.json", '{"backends": [', async (path) => {
    const { code, stderr } = await sluice("--check", "-c", path);
    assert.equal(code, 1);
    const lines = stderr.trimEnd().split("\n");
    assert.equal(lines.length, 2, stderr);
    assert.ok(lines[1].startsWith(`${path}: `), lines[1]);
  });
  const missing = await sluice("--check", "-c", "/nonexistent/sluice.yaml");
  assert.equal(missing.code, 1);
  assert.ok(missing.stderr.includes("/nonexistent/sluice.yaml: cannot read: no such file\n"));
});

Deno.test("unknown flags, stray arguments and missing values exit 1 pointing to --help", async () => {
  for (
    const [args, why] of [
      [["--bogus"], "--bogus"],
      [["--check", "extra"], "extra"],
      [["--port"], "--port"],
    ] as const
  ) {
    const { code, stdout, stderr } = await sluice(...args);
    assert.equal(code, 1, args.join(" "));
    assert.equal(stdout, "");
    assert.ok(stderr.startsWith("sluice: "), stderr);
    assert.ok(stderr.includes(why), stderr);
    assert.ok(stderr.includes("Run with --help for usage."), stderr);
  }
});

Deno.test("a bad configuration never starts listening", async () => {
  const { code, stdout, stderr } = await sluice(
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--backend",
    "http://127.0.0.1:9001",
    "--strategy",
    "fastest",
  );
  assert.equal(code, 1);
  assert.equal(stdout, "");
  assert.ok(!stderr.includes("listening"), stderr);
  assert.ok(stderr.includes("\nstrategy: must be one of"), stderr);
  const noBackends = await sluice("--host", "127.0.0.1", "--port", "0");
  assert.equal(noBackends.code, 1);
  assert.equal(noBackends.stderr, "sluice: invalid configuration:\nbackends: is required\n");
});

Deno.test("a port already in use is reported and exits 1", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { code, stderr } = await sluice(
    "--host",
    "127.0.0.1",
    "--port",
    String(taken.addr.port),
    "--backend",
    "http://127.0.0.1:9001",
  );
  assert.equal(code, 1);
  assert.match(stderr, /ERROR cannot start: .*in use/i);
});

Deno.test("an admin port already in use is reported before any traffic port opens, and it exits 1", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const config = [
    "listen: { host: 127.0.0.1, port: 0 }",
    "backends: [{ url: http://127.0.0.1:9001 }]",
    `admin: { host: 127.0.0.1, port: ${taken.addr.port} }`,
  ].join("\n");
  await withFile("admin.yaml", config, async (path) => {
    const { code, stderr } = await sluice("--config", path);
    assert.equal(code, 1);
    assert.match(stderr, /ERROR cannot start the admin listener: .*in use/i);
    assert.doesNotMatch(stderr, /sluice listening on/);
  });
});

Deno.test("a real run on port 0 rotates requests across the backends and exits 0 on SIGTERM", async () => {
  const backends = await startBackends(3);
  try {
    const { proc, port } = await startSluice(backends, "--health-interval", "1m");
    await using _ = proc;
    const seen: string[] = [];
    for (let i = 0; i < 6; i++) {
      const { status, body } = await text(`http://127.0.0.1:${port}/`);
      assert.equal(status, 200);
      seen.push(body);
    }
    const ports = backends.map((b) => `Hello from backend server on port: ${b.port}\n`);
    assert.deepEqual(new Set(seen.slice(0, 3)), new Set(ports), "each backend once per round");
    assert.deepEqual(seen.slice(3), seen.slice(0, 3), "the same order the next round");
    assert.ok(backends.every((b) => b.requests >= 2));

    proc.kill("SIGTERM");
    const status = await proc.status;
    assert.equal(status.code, 0);
    await proc.stderr.done;
    assert.ok(
      proc.stderr.lines.some((l) => l.endsWith(" INFO  stopped")),
      proc.stderr.lines.join("\n"),
    );
  } finally {
    await Promise.all(backends.map((b) => b.shutdown()));
  }
});

Deno.test("--log-format json writes JSON lines; SIGINT also exits 0", async () => {
  const [backend] = await startBackends(1);
  try {
    const { proc, port } = await startSluice(
      [backend],
      "--log-format",
      "json",
      "--log-level",
      "debug",
    );
    await using _ = proc;
    assert.equal((await text(`http://127.0.0.1:${port}/x`)).status, 200);
    proc.kill("SIGINT");
    assert.equal((await proc.status).code, 0);
    await proc.stderr.done;
    const records = proc.stderr.lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
    const listening = records.find((r) => /^sluice listening on /.test(r.msg));
    assert.deepEqual(listening && [listening.level, listening.msg, listening.strategy], [
      "info",
      `sluice listening on http://127.0.0.1:${port}`,
      "round-robin",
    ]);
    assert.ok(records.every((r) => typeof r.time === "string" && typeof r.level === "string"));
    assert.ok(records.some((r) => r.msg === "stopped"));
    assert.ok(
      !proc.stderr.lines.some((l) => /^\d{4}-\d\d-\d\dT\S+ (DEBUG|INFO |WARN |ERROR) /.test(l)),
      "no text-format lines",
    );
  } finally {
    await backend.shutdown();
  }
});

Deno.test("backend.ts --ports serves hello, /echo and switchable /health", async () => {
  await using proc = spawn(["run", "--allow-net", "backend.ts", "--ports", "0,0"]);
  const listening = /^backend listening on http:\/\/127\.0\.0\.1:(\d+)$/;
  const matches = await proc.stdout.waitFor(listening, 2, STARTUP);
  const [a, b] = matches.map((l) => Number(listening.exec(l)![1]));
  assert.notEqual(a, b);
  for (const port of [a, b]) {
    assert.deepEqual(await text(`http://127.0.0.1:${port}/any/path`), {
      status: 200,
      body: `Hello from backend server on port: ${port}\n`,
    });
  }

  const echo = await fetch(`http://127.0.0.1:${a}/echo?x=1`, {
    method: "POST",
    headers: { "x-test": "yes" },
    body: "payload",
  });
  const seen = await echo.json();
  assert.equal(seen.method, "POST");
  assert.equal(seen.target, "/echo?x=1");
  assert.equal(seen.body, "payload");
  assert.equal(seen.bodyLength, 7);
  assert.ok(seen.headers.some(([k, v]: string[]) => k === "x-test" && v === "yes"));

  assert.equal((await text(`http://127.0.0.1:${a}/health`)).status, 200);
  assert.equal((await text(`http://127.0.0.1:${a}/health/off`)).status, 200);
  assert.deepEqual(await text(`http://127.0.0.1:${a}/health`), {
    status: 503,
    body: "unhealthy\n",
  });
  assert.equal(
    (await text(`http://127.0.0.1:${b}/health`)).status,
    200,
    "each port has its own switch",
  );
  await text(`http://127.0.0.1:${a}/health/on`);
  assert.equal((await text(`http://127.0.0.1:${a}/health`)).status, 200);

  proc.kill("SIGTERM");
  assert.equal((await proc.status).success, false, "killed by the signal");
});

Deno.test("backend.ts rejects a bad --ports list", async () => {
  const out = await run(["run", "--allow-net", "backend.ts", "--ports", "8081,http"]);
  assert.equal(out.code, 1);
  assert.match(out.stderr, /--ports: must be a comma-separated list of ports/);
});
