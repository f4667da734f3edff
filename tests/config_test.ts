/** The configuration as users meet it: defaults, one clear line per mistake, files, flags and the JSON Schema. */
import assert from "node:assert/strict";
import { withFile } from "./helpers.ts";
import {
  applyOverrides,
  backendId,
  backendSchema,
  type Config,
  ConfigError,
  configJsonSchema,
  formatConfig,
  isLoopback,
  listenersOf,
  loadConfig,
  parseConfigText,
  statusMatcher,
  validateBackend,
  validateConfig,
} from "../lib/config.ts";
import { configSchemaText, SCHEMA_PATH } from "../lib/config_schema_export.ts";

const ONE = { backends: [{ url: "http://127.0.0.1:8081" }] };

/** The problem lines a raw config produces (fails if it is valid). */
function problems(raw: unknown): string[] {
  try {
    validateConfig(raw);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    assert.equal(err.message, err.problems.join("\n"));
    return err.problems;
  }
  assert.fail(`expected ${JSON.stringify(raw)} to be rejected`);
}

async function loadProblems(path: string | undefined, overrides = {}): Promise<string[]> {
  try {
    await loadConfig(path, overrides);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems;
  }
  assert.fail(`expected ${path} to be rejected`);
}

Deno.test("a single backend is enough; everything else has a default", () => {
  const config: Config = validateConfig(ONE);
  const pool = {
    strategy: "round-robin",
    hashKey: "ip",
    sticky: undefined,
    health: {
      path: "/",
      interval: 10_000,
      timeout: 2_000,
      healthyThreshold: 2,
      unhealthyThreshold: 3,
      expectStatus: "200-399",
    },
    retries: 2,
    retryOn: [],
    retryBudget: { percent: 20, minConcurrent: 3 },
    outlier: {
      consecutiveFailures: 5,
      baseEjection: 30_000,
      maxEjection: 300_000,
      maxEjectionPercent: 50,
    },
    slowStart: 0,
  };
  const { sticky: _, ...top } = pool;
  assert.deepEqual(config, {
    ...top,
    listen: { host: "0.0.0.0", port: 8080 },
    workers: 1,
    backends: [{ url: "http://127.0.0.1:8081", weight: 1 }],
    timeouts: {
      connect: 3_000,
      response: 30_000,
      idle: 60_000,
      drain: 30_000,
      clientHeader: 10_000,
      clientIdle: 75_000,
      client: 60_000,
      tunnel: 3_600_000,
    },
    retryBuffer: 65_536,
    requestBuffering: 0,
    trustedProxies: [],
    discovery: { interval: 30_000 },
    limits: {
      maxPending: 0,
      queueTimeout: 1_000,
      maxHeaderBytes: 65_536,
      maxHeaders: 100,
      maxUriLength: 8_192,
    },
    log: { level: "info", format: "text" },
    pools: [{
      ...pool,
      name: "default",
      backends: [{ url: "http://127.0.0.1:8081", weight: 1 }],
      limits: { maxConnections: undefined, maxPending: 0, queueTimeout: 1_000 },
      timeouts: { connect: 3_000, response: 30_000, idle: 60_000 },
      tls: undefined,
    }],
  });
});

Deno.test("durations and sizes are read in every accepted spelling", () => {
  const config = validateConfig({
    ...ONE,
    health: { interval: "1.5s", timeout: 250 },
    timeouts: {
      connect: "250ms",
      response: "1m",
      idle: "1h",
      drain: "0",
      clientHeader: "2s",
      clientIdle: 500,
      client: "90s",
    },
    retryBuffer: "64KB",
    sticky: { cookie: "sluice", ttl: "2h" },
  });
  assert.equal(config.health.interval, 1_500);
  assert.equal(config.health.timeout, 250);
  assert.deepEqual(config.timeouts, {
    connect: 250,
    response: 60_000,
    idle: 3_600_000,
    drain: 0,
    clientHeader: 2_000,
    clientIdle: 500,
    client: 90_000,
    tunnel: 3_600_000,
  });
  assert.equal(config.retryBuffer, 65_536);
  assert.equal(config.sticky?.ttl, 7_200_000);
  assert.equal(validateConfig({ ...ONE, retryBuffer: "1MB" }).retryBuffer, 1_048_576);
  assert.equal(validateConfig({ ...ONE, retryBuffer: "2 kb" }).retryBuffer, 2_048);
  assert.equal(validateConfig({ ...ONE, retryBuffer: 100 }).retryBuffer, 100);
});

Deno.test("health.timeout defaults to 2s, or to a shorter health.interval", () => {
  assert.equal(validateConfig({ ...ONE, health: { interval: "5s" } }).health.timeout, 2_000);
  assert.equal(validateConfig({ ...ONE, health: { interval: "500ms" } }).health.timeout, 500);
});

Deno.test("every hashKey form and a sticky cookie are accepted", () => {
  for (const key of ["ip", "path", "header:X-User", "cookie:session", "query:user"]) {
    assert.equal(validateConfig({ ...ONE, hashKey: key }).hashKey, key);
  }
  assert.deepEqual(validateConfig({ ...ONE, sticky: { cookie: "sluice_id" } }).sticky, {
    cookie: "sluice_id",
  });
});

// Each mistake yields exactly one line: the field's path, a colon, and the reason.
const MISTAKES: [string, unknown, string][] = [
  ["unknown top-level key", { ...ONE, helth: {} }, "helth: unknown key (did you mean health?)"],
  [
    "unknown nested key",
    { ...ONE, health: { intervall: "1s" } },
    "health.intervall: unknown key (did you mean interval?)",
  ],
  [
    "unknown key in a backend",
    { backends: [{ url: "http://a:1", wieght: 2 }] },
    "backends[0].wieght: unknown key (did you mean weight?)",
  ],
  ["string for a number", { ...ONE, retries: "three" }, "retries: must be a number"],
  ["float for an integer", { ...ONE, listen: { port: 80.5 } }, "listen.port: must be an integer"],
  ["number for a string", { backends: [{ url: 8081 }] }, "backends[0].url: must be a string"],
  ["scalar for a list", { backends: "http://a:1" }, "backends: must be a list"],
  [
    "scalar for a section",
    { ...ONE, listen: 8080 },
    "listen: must be a mapping (one listener) or a list of them",
  ],
  ["missing backends", {}, "backends: is required"],
  ["empty backends", { backends: [] }, "backends: at least one backend is required"],
  [
    "backend without url",
    { backends: [{ name: "a" }] },
    "backends[0].url: is required (or dns: NAME)",
  ],
  [
    "non-http URL",
    { backends: [{ url: "http://a:1" }, { url: "ftp://b:21" }] },
    "backends[1].url: must be an http:// or https:// URL",
  ],
  [
    "unparseable URL",
    { backends: [{ url: "http://a:1" }, { url: "not a url" }] },
    "backends[1].url: must be an http:// or https:// URL",
  ],
  [
    "URL with a path",
    { backends: [{ url: "http://a:1/api" }] },
    "backends[0].url: must be scheme://host:port with no path, query or credentials",
  ],
  [
    "URL with credentials",
    { backends: [{ url: "http://user:pw@a:1" }] },
    "backends[0].url: must be scheme://host:port with no path, query or credentials",
  ],
  [
    "bad duration",
    { ...ONE, health: { interval: "10 sec" } },
    'health.interval: must be a duration such as 250ms, 2s or 1m (got "10 sec")',
  ],
  [
    "negative duration",
    { ...ONE, timeouts: { connect: -5 } },
    "timeouts.connect: must be a duration such as 250ms, 2s or 1m (got -5)",
  ],
  [
    "boolean duration",
    { ...ONE, timeouts: { idle: true } },
    "timeouts.idle: must be a duration such as 250ms, 2s or 1m",
  ],
  [
    "duration past what timers can wait",
    { ...ONE, slowStart: "1000h" },
    'slowStart: must be at most 596h (got "1000h")',
  ],
  [
    "bad size",
    { ...ONE, retryBuffer: "1 TB" },
    'retryBuffer: must be a size such as 65536, 64KB or 1MB (got "1 TB")',
  ],
  [
    "unknown strategy",
    { ...ONE, strategy: "fastest" },
    'strategy: must be one of "round-robin", "weighted-round-robin", "least-connections", ' +
    '"random", "power-of-two", "latency", "consistent-hash", "maglev"',
  ],
  [
    "unknown log level",
    { ...ONE, log: { level: "verbose" } },
    'log.level: must be one of "debug", "info", "warn", "error"',
  ],
  ["port too high", { ...ONE, listen: { port: 65536 } }, "listen.port: must be at most 65535"],
  ["negative port", { ...ONE, admin: { port: -1 } }, "admin.port: must be at least 0"],
  [
    "weight too high",
    { backends: [{ url: "http://a:1", weight: 1001 }] },
    "backends[0].weight: must be at most 1000",
  ],
  [
    "negative weight",
    { backends: [{ url: "http://a:1", weight: -1 }] },
    "backends[0].weight: must be at least 0",
  ],
  ["too many retries", { ...ONE, retries: 11 }, "retries: must be at most 10"],
  [
    "zero maxConnections",
    { backends: [{ url: "http://a:1", maxConnections: 0 }] },
    "backends[0].maxConnections: must be greater than 0",
  ],
  [
    "retryOn outside 502-504",
    { ...ONE, retryOn: [502, 500] },
    "retryOn[1]: must be 502, 503 or 504",
  ],
  [
    "duplicate backend URL",
    { backends: [{ url: "http://a:1" }, { url: "http://b:2" }, { url: "http://a:1/" }] },
    "backends[2].url: duplicates backends[0] (id a:1)",
  ],
  [
    "duplicate default port",
    { backends: [{ url: "http://a" }, { url: "http://a:80" }] },
    "backends[1].url: duplicates backends[0] (id a:80)",
  ],
  [
    "duplicate backend name",
    { backends: [{ url: "http://a:1", name: "web" }, { url: "http://b:2", name: "web" }] },
    "backends[1].name: duplicates backends[0] (id web)",
  ],
  [
    "bad backend name",
    { backends: [{ url: "http://a:1", name: "web 1" }] },
    "backends[0].name: must use only letters, digits and . _ : -",
  ],
  [
    "health.timeout longer than interval",
    { ...ONE, health: { interval: "1s", timeout: "2s" } },
    "health.timeout: must not be longer than health.interval",
  ],
  ["health path", { ...ONE, health: { path: "health" } }, "health.path: must start with /"],
  [
    "expectStatus",
    { ...ONE, health: { expectStatus: "ok" } },
    'health.expectStatus: must be status codes or ranges such as "200-399" or "200,204"',
  ],
  [
    "non-loopback admin without a token",
    { ...ONE, admin: { host: "0.0.0.0" } },
    "admin.token: is required when the admin listener is bound to a non-loopback address",
  ],
  [
    "short admin token",
    { ...ONE, admin: { token: "secret" } },
    "admin.token: must be at least 16 characters",
  ],
  [
    "admin on the traffic port",
    { ...ONE, admin: { port: 8080 } },
    "admin.port: must differ from listen.port (8080)",
  ],
  [
    "bad hashKey",
    { ...ONE, hashKey: "headers:X-User" },
    "hashKey: must be ip, path, header:NAME, cookie:NAME or query:NAME",
  ],
  [
    "hashKey without a name",
    { ...ONE, hashKey: "cookie:" },
    "hashKey: must be ip, path, header:NAME, cookie:NAME or query:NAME",
  ],
  [
    "sticky cookie name",
    { ...ONE, sticky: { cookie: "my cookie" } },
    "sticky.cookie: must be a cookie name",
  ],
  ["sticky without a cookie", { ...ONE, sticky: {} }, "sticky.cookie: is required"],
  ["empty listen host", { ...ONE, listen: { host: "" } }, "listen.host: must not be empty"],
  ["not a mapping at all", [1, 2], "(config): must be a mapping"],
];

for (const [what, raw, line] of MISTAKES) {
  Deno.test(`config error: ${what} -> ${line.split(":")[0]}`, () => {
    assert.deepEqual(problems(raw), [line]);
  });
}

Deno.test("every problem is reported at once, one line each", () => {
  const lines = problems({
    helth: {},
    strategy: "fastest",
    listen: { port: "eighty" },
    backends: [{ url: "ftp://x" }, { url: "http://a:1", weight: 5000 }],
  });
  assert.equal(lines.length, 5, lines.join("\n"));
  for (
    const prefix of [
      "helth:",
      "strategy:",
      "listen.port:",
      "backends[0].url:",
      "backends[1].weight:",
    ]
  ) {
    assert.ok(lines.some((l) => l.startsWith(prefix + " ")), `${prefix} in ${lines.join("\n")}`);
  }
  assert.ok(lines.every((l) => !l.includes("\n")));
});

Deno.test("a loopback admin listener needs no token; any other one does", () => {
  for (const host of ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"]) {
    assert.equal(validateConfig({ ...ONE, admin: { host } }).admin?.host, host);
  }
  const token = "0123456789abcdef";
  assert.equal(validateConfig({ ...ONE, admin: { host: "0.0.0.0", token } }).admin?.token, token);
  assert.equal(isLoopback("10.0.0.1"), false);
  assert.equal(isLoopback("localhost.example.com"), false);
});

Deno.test("backendId is the name, or host:port with the scheme's default port", () => {
  assert.equal(backendId({ url: "http://127.0.0.1:8081" }), "127.0.0.1:8081");
  assert.equal(backendId({ url: "http://example.com" }), "example.com:80");
  assert.equal(backendId({ url: "https://example.com" }), "example.com:443");
  assert.equal(backendId({ url: "http://[::1]:9000" }), "[::1]:9000");
  assert.equal(backendId({ url: "http://a:1", name: "web-1" }), "web-1");
});

Deno.test("backendSchema validates one backend entry the way the file does", () => {
  assert.deepEqual(backendSchema.parse({ url: "http://127.0.0.1:9000" }), {
    url: "http://127.0.0.1:9000",
    weight: 1,
  });
  assert.deepEqual(validateBackend({ url: "http://a:1", name: "a", weight: 3 }), {
    url: "http://a:1",
    name: "a",
    weight: 3,
  });
  assert.equal(backendSchema.safeParse({ url: "ftp://a" }).success, false);
  assert.throws(
    () => validateBackend({ url: "ftp://a", weight: "heavy", extra: 1 }),
    (err: ConfigError) => {
      assert.deepEqual(err.problems.toSorted(), [
        "extra: unknown key",
        "url: must be an http:// or https:// URL",
        "weight: must be a number",
      ]);
      return true;
    },
  );
});

Deno.test("expectStatus ranges match the statuses they list", () => {
  const ok = statusMatcher("200-399");
  assert.deepEqual([199, 200, 302, 399, 400].map(ok), [false, true, true, true, false]);
  const some = statusMatcher(" 200 , 204, 300 - 301 ");
  assert.deepEqual([200, 201, 204, 300, 301, 302].map(some), [
    true,
    false,
    true,
    true,
    true,
    false,
  ]);
});

Deno.test("sluice.yaml loads as documented", async () => {
  const config = await loadConfig("sluice.yaml", {});
  assert.deepEqual(config.listen, { host: "0.0.0.0", port: 8080 });
  assert.deepEqual(config.backends!.map((b) => b.url), [
    "http://127.0.0.1:8081",
    "http://127.0.0.1:8082",
    "http://127.0.0.1:8083",
  ]);
  assert.equal(config.health.path, "/health");
  assert.equal(config.health.interval, 10_000);
  assert.equal(config.timeouts.idle, 60_000);
});

Deno.test("YAML (.yaml, .yml) and JSON files give the same config", async () => {
  const yaml = "listen:\n  port: 9000\nbackends:\n  - url: http://127.0.0.1:8081\n    weight: 3\n" +
    "health: { interval: 5s }\n";
  const json = JSON.stringify({
    listen: { port: 9000 },
    backends: [{ url: "http://127.0.0.1:8081", weight: 3 }],
    health: { interval: "5s" },
  });
  const fromYaml = await withFile("a.yaml", yaml, (p) => loadConfig(p, {}));
  const fromYml = await withFile("a.yml", yaml, (p) => loadConfig(p, {}));
  const fromJson = await withFile("a.json", json, (p) => loadConfig(p, {}));
  assert.deepEqual(fromYml, fromYaml);
  assert.deepEqual(fromJson, fromYaml);
  assert.equal(listenersOf(fromYaml)[0].port, 9000);
  assert.equal(fromYaml.backends![0].weight, 3);
  assert.equal(fromYaml.health.interval, 5_000);
});

Deno.test("malformed YAML is one line with file, line and column", async () => {
  const lines = await withFile(
    "bad.yaml",
    "backends:\n  - url: [http://a:1\n",
    (p) => loadProblems(p).then((lines) => lines.map((l) => l.replace(p, "FILE"))),
  );
  assert.equal(lines.length, 1);
  assert.match(lines[0], /^FILE:\d+:\d+: \S.*[^:]$/);
});

Deno.test("duplicate YAML keys are an error, not a silent override", async () => {
  const lines = await withFile(
    "dup.yaml",
    "strategy: random\nstrategy: latency\n",
    (p) => loadProblems(p).then((lines) => lines.map((l) => l.replace(p, "FILE"))),
  );
  assert.deepEqual(lines, ["FILE:2:1: Map keys must be unique"]);
});

Deno.test("malformed JSON is one line naming the file", async () => {
  const lines = await withFile(
    "bad.json",
    '{"backends": [}',
    (p) => loadProblems(p).then((lines) => lines.map((l) => l.replace(p, "FILE"))),
  );
  assert.equal(lines.length, 1);
  assert.match(lines[0], /^FILE: .*JSON/);
});

Deno.test("a file that is not a mapping, an empty file and a missing file are one line each", async () => {
  assert.deepEqual(
    await withFile(
      "list.yaml",
      "- http://a:1\n",
      (p) => loadProblems(p).then((l) => l.map((x) => x.replace(p, "FILE"))),
    ),
    ["FILE: must be a mapping of settings"],
  );
  assert.deepEqual(await withFile("empty.yaml", "", (p) => loadProblems(p)), [
    "backends: is required",
  ]);
  assert.deepEqual(await loadProblems("/nonexistent/sluice.yaml"), [
    "/nonexistent/sluice.yaml: cannot read: no such file",
  ]);
  assert.deepEqual(parseConfigText("# only a comment\n", "x.yaml"), {});
});

Deno.test("applyOverrides: flags win, sections merge, the input is untouched", () => {
  const raw = {
    listen: { host: "0.0.0.0", port: 8080 },
    backends: [{ url: "http://a:1", weight: 5 }],
    health: { path: "/health", interval: "10s" },
  };
  const frozen = structuredClone(raw);
  const out = applyOverrides(raw, {
    port: "9000",
    backends: ["http://b:2", "http://c:3"],
    strategy: "random",
    healthInterval: "250ms",
    healthTimeout: "100ms",
    logLevel: "debug",
    logFormat: "json",
  });
  assert.deepEqual(raw, frozen);
  assert.deepEqual(out, {
    listen: { host: "0.0.0.0", port: 9000 },
    backends: [{ url: "http://b:2" }, { url: "http://c:3" }],
    strategy: "random",
    health: { path: "/health", interval: "250ms", timeout: "100ms" },
    log: { level: "debug", format: "json" },
  });
  assert.deepEqual(applyOverrides(raw, {}), raw);
});

Deno.test("loadConfig: command-line overrides beat the file, and are validated like it", async () => {
  const file = "listen: { port: 8080 }\nstrategy: latency\nbackends:\n  - url: http://a:1\n" +
    "health: { path: /health, interval: 10s, timeout: 2s }\n";
  await withFile("s.yaml", file, async (p) => {
    const config = await loadConfig(p, {
      host: "127.0.0.1",
      port: "0",
      backends: ["http://b:2"],
      strategy: "random",
      healthPath: "/ready",
      healthInterval: "5s",
      logLevel: "warn",
    });
    assert.deepEqual(config.listen, { host: "127.0.0.1", port: 0 });
    assert.deepEqual(config.backends, [{ url: "http://b:2", weight: 1 }]);
    assert.equal(config.strategy, "random");
    assert.deepEqual([config.health.path, config.health.interval], ["/ready", 5_000]);
    assert.equal(config.health.timeout, 2_000, "the file's value stays where no flag is given");
    assert.equal(config.log.level, "warn");
    assert.deepEqual(await loadProblems(p, { port: "eighty" }), ["listen.port: must be a number"]);
    assert.deepEqual(await loadProblems(p, { strategy: "fastest" }), [
      'strategy: must be one of "round-robin", "weighted-round-robin", "least-connections", ' +
      '"random", "power-of-two", "latency", "consistent-hash", "maglev"',
    ]);
  });
  const noFile = await loadConfig(undefined, { backends: ["http://a:1"], healthInterval: "1s" });
  assert.deepEqual([noFile.health.interval, noFile.health.timeout], [1_000, 1_000]);
});

Deno.test("formatConfig prints durations as strings and reads back to the same config", () => {
  const config = validateConfig({
    ...ONE,
    health: { interval: "1.5s" },
    sticky: { cookie: "s", ttl: "1h" },
    slowStart: "30s",
  });
  const text = formatConfig(config);
  const printed = JSON.parse(text);
  assert.equal(printed.health.interval, "1500ms");
  assert.equal(printed.health.timeout, "1500ms");
  assert.deepEqual(printed.timeouts, {
    connect: "3s",
    response: "30s",
    idle: "1m",
    drain: "30s",
    clientHeader: "10s",
    clientIdle: "75s",
    client: "1m",
    tunnel: "1h",
  });
  assert.equal(printed.sticky.ttl, "1h");
  assert.equal(printed.slowStart, "30s");
  assert.equal(printed.outlier.baseEjection, "30s");
  assert.equal(printed.limits.queueTimeout, "1s");
  assert.equal(printed.retries, 2, "plain numbers stay numbers");
  assert.equal(printed.listen.port, 8080);
  assert.deepEqual(validateConfig(printed), config);
});

Deno.test("config.schema.json is up to date (regenerate with `deno task schema`)", async () => {
  const committed = await Deno.readTextFile(SCHEMA_PATH);
  assert.equal(committed, configSchemaText());
  assert.deepEqual(JSON.parse(committed), configJsonSchema());
});

Deno.test("config.schema.json accepts sluice.yaml and flags the mistakes editors should show", async () => {
  const schema = JSON.parse(await Deno.readTextFile(SCHEMA_PATH)) as JsonSchema;
  const sluice = parseConfigText(await Deno.readTextFile("sluice.yaml"), "sluice.yaml");
  assert.deepEqual(schemaErrors(schema, sluice), []);
  const full = JSON.parse(formatConfig(validateConfig({
    ...sluice,
    sticky: { cookie: "s", ttl: "1h" },
    admin: { port: 9090 },
    accessLog: { format: "combined" },
  })));
  assert.deepEqual(schemaErrors(schema, full), [], "the printed effective config is valid too");
  assert.deepEqual(schemaErrors(schema, { ...sluice, helth: {} }), ["/helth: unknown key"]);
  assert.deepEqual(schemaErrors(schema, { ...sluice, strategy: "fastest" }), [
    "/strategy: not one of the allowed values",
  ]);
  assert.deepEqual(schemaErrors(schema, { ...sluice, health: { interval: "10 sec" } }), [
    "/health/interval: does not match the pattern",
  ]);
  assert.deepEqual(schemaErrors(schema, { ...sluice, listen: { port: 70000 } }), [
    "/listen/port: above the maximum",
  ]);
  // "backends or pools" is for sluice itself to say; the schema cannot require one of two keys.
  assert.deepEqual(schemaErrors(schema, { listen: {} }), []);
});

// A JSON Schema checker for the keywords config.schema.json uses (no validator package is
// available offline); it fails loudly on any keyword it does not know so it cannot pass vacuously.
interface JsonSchema {
  [keyword: string]: unknown;
}
const ANNOTATIONS = new Set(["$schema", "description", "default", "title", "format"]);

function schemaErrors(schema: JsonSchema, value: unknown, at = ""): string[] {
  const errors: string[] = [];
  const where = at || "/";
  for (const [keyword, arg] of Object.entries(schema)) {
    if (ANNOTATIONS.has(keyword)) continue;
    switch (keyword) {
      case "type": {
        const types = Array.isArray(arg) ? arg : [arg];
        if (!types.some((t) => hasType(value, t))) errors.push(`${where}: not of type ${types}`);
        break;
      }
      case "enum":
        if (!(arg as unknown[]).includes(value)) {
          errors.push(`${where}: not one of the allowed values`);
        }
        break;
      case "const":
        if (value !== arg) errors.push(`${where}: not ${JSON.stringify(arg)}`);
        break;
      case "anyOf": {
        // Like editors, report the problems of the closest branch.
        const branches = (arg as JsonSchema[]).map((s) => schemaErrors(s, value, at));
        if (!branches.some((b) => b.length === 0)) {
          errors.push(...branches.reduce((a, b) => (b.length < a.length ? b : a)));
        }
        break;
      }
      case "pattern":
        if (typeof value === "string" && !new RegExp(arg as string, "u").test(value)) {
          errors.push(`${where}: does not match the pattern`);
        }
        break;
      case "minLength":
        if (typeof value === "string" && value.length < (arg as number)) {
          errors.push(`${where}: too short`);
        }
        break;
      case "minimum":
        if (typeof value === "number" && value < (arg as number)) {
          errors.push(`${where}: below the minimum`);
        }
        break;
      case "exclusiveMinimum":
        if (typeof value === "number" && value <= (arg as number)) {
          errors.push(`${where}: not above the exclusive minimum`);
        }
        break;
      case "maximum":
        if (typeof value === "number" && value > (arg as number)) {
          errors.push(`${where}: above the maximum`);
        }
        break;
      case "propertyNames":
        if (isObject(value)) {
          for (const key of Object.keys(value)) {
            errors.push(...schemaErrors(arg as JsonSchema, key, `${at}/${key}`));
          }
        }
        break;
      case "minItems":
        if (Array.isArray(value) && value.length < (arg as number)) {
          errors.push(`${where}: too few items`);
        }
        break;
      case "items":
        if (Array.isArray(value)) {
          value.forEach((v, i) => errors.push(...schemaErrors(arg as JsonSchema, v, `${at}/${i}`)));
        }
        break;
      case "required":
        if (isObject(value)) {
          for (const key of arg as string[]) {
            if (!(key in value)) errors.push(`${at}/${key}: is required`);
          }
        }
        break;
      case "properties":
        if (isObject(value)) {
          for (const [key, sub] of Object.entries(arg as Record<string, JsonSchema>)) {
            if (key in value) errors.push(...schemaErrors(sub, value[key], `${at}/${key}`));
          }
        }
        break;
      case "additionalProperties":
        if (arg !== false) {
          throw new Error(`unsupported additionalProperties ${JSON.stringify(arg)}`);
        }
        if (isObject(value)) {
          const known = Object.keys((schema.properties ?? {}) as object);
          for (const key of Object.keys(value)) {
            if (!known.includes(key)) errors.push(`${at}/${key}: unknown key`);
          }
        }
        break;
      default:
        throw new Error(`schemaErrors does not know the keyword ${keyword}`);
    }
  }
  return errors;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function hasType(value: unknown, type: unknown): boolean {
  switch (type) {
    case "object":
      return isObject(value);
    case "array":
      return Array.isArray(value);
    case "integer":
      return Number.isInteger(value);
    case "null":
      return value === null;
    case "string":
      return typeof value === "string";
    case "number":
      return typeof value === "number";
    case "boolean":
      return typeof value === "boolean";
    default:
      throw new Error(`hasType does not know the type ${type}`);
  }
}
