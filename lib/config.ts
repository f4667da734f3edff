/** The configuration: its zod schema, defaults, file loading, command-line overrides and error reporting. */
import { z } from "zod";
import { parse as parseYaml } from "yaml";
import { DURATION_PATTERN, formatDuration, MAX_DURATION, parseDuration } from "./duration.ts";

/** Selection strategies accepted by `strategy:`. */
export const STRATEGIES = [
  "round-robin",
  "weighted-round-robin",
  "least-connections",
  "random",
  "power-of-two",
  "latency",
  "consistent-hash",
] as const;

const DURATION_HINT = "must be a duration such as 250ms, 2s or 1m";
const duration = z
  .union([z.number(), z.string()], { error: DURATION_HINT })
  .transform((value, ctx) => {
    const ms = parseDuration(value);
    if (ms === undefined) {
      ctx.addIssue({ code: "custom", message: `${DURATION_HINT} (got ${JSON.stringify(value)})` });
      return z.NEVER;
    }
    if (ms > MAX_DURATION) {
      // Timers fire immediately past 2^31-1 ms, which would turn a long interval into a busy loop.
      ctx.addIssue({
        code: "custom",
        message: `must be at most 596h (got ${JSON.stringify(value)})`,
      });
      return z.NEVER;
    }
    return ms;
  })
  .meta({
    description: "A duration: 250ms, 2s, 1m, 1h; a bare number is milliseconds.",
    pattern: DURATION_PATTERN,
    minimum: 0,
  });

const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };
const SIZE_HINT = "must be a size such as 65536, 64KB or 1MB";
const size = z
  .union([z.number().int().nonnegative(), z.string()], { error: SIZE_HINT })
  .transform((value, ctx) => {
    if (typeof value === "number") return value;
    const match = /^(\d+)\s*(b|kb|mb|gb)?$/i.exec(value.trim());
    if (!match) {
      ctx.addIssue({ code: "custom", message: `${SIZE_HINT} (got ${JSON.stringify(value)})` });
      return z.NEVER;
    }
    return Number(match[1]) * SIZE_UNITS[(match[2] ?? "").toLowerCase()];
  })
  .meta({
    description: "A size in bytes: 65536, 64KB, 1MB.",
    pattern: "^\\s*\\d+\\s*([bB]|[kKmMgG][bB])?\\s*$",
  });

const port = z.number().int().min(0).max(65535);
const host = z.string().min(1);

const httpUrl = z.string().refine((value) => {
  try {
    const url = new URL(value);
    return (url.protocol === "http:" || url.protocol === "https:") && url.hostname !== "";
  } catch {
    return false;
  }
}, "must be an http:// or https:// URL").refine((value) => {
  try {
    const url = new URL(value);
    return (url.pathname === "/" || url.pathname === "") && !url.search && !url.hash &&
      !url.username;
  } catch {
    return true;
  }
}, "must be scheme://host:port with no path, query or credentials");

const statusRanges = z.string().regex(
  /^\s*[1-5]\d\d(\s*-\s*[1-5]\d\d)?(\s*,\s*[1-5]\d\d(\s*-\s*[1-5]\d\d)?)*\s*$/,
  'must be status codes or ranges such as "200-399" or "200,204"',
);

/** The zod schema of one `backends:` entry (also validates admin API `POST /api/backends` bodies). */
export const backendSchema = z.strictObject({
  url: httpUrl.meta({ description: "http://host:port or https://host:port" }),
  name: z.string().regex(/^[A-Za-z0-9._:-]+$/, "must use only letters, digits and . _ : -")
    .optional().meta({ description: "Stable id shown by the admin API; defaults to host:port." }),
  weight: z.number().int().min(0).max(1000).default(1),
  maxConnections: z.number().int().positive().optional()
    .meta({ description: "Concurrent requests this backend accepts; overrides limits." }),
});

const HASH_KEY = /^(ip|path|(header|cookie|query):[^\s:]+)$/;

/** The zod schema of the configuration file (camelCase keys, unknown keys rejected). */
export const configSchema = z.strictObject({
  $schema: z.string().optional(),
  listen: z.strictObject({
    host: host.default("0.0.0.0"),
    port: port.default(8080),
  }).prefault({}).meta({ description: "Where clients connect; port 0 picks a free port." }),
  strategy: z.enum(STRATEGIES).default("round-robin")
    .meta({ description: "How a backend is chosen for each request." }),
  hashKey: z.string().regex(HASH_KEY, "must be ip, path, header:NAME, cookie:NAME or query:NAME")
    .default("ip").meta({
      description: "What consistent-hash hashes: ip, path, header:NAME, cookie:NAME, query:NAME.",
    }),
  sticky: z.strictObject({
    cookie: z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, "must be a cookie name"),
    ttl: duration.optional().meta({ description: "Cookie lifetime; a session cookie if unset." }),
  }).optional().meta({ description: "Pin each client to a backend with a cookie." }),
  backends: z.array(backendSchema).min(1, "at least one backend is required")
    .meta({ description: "The servers requests are balanced across." }),
  health: z.strictObject({
    path: z.string().startsWith("/", "must start with /").default("/"),
    interval: duration.default(10_000),
    timeout: duration.optional()
      .meta({ description: "Probe timeout; defaults to 2s, or health.interval if shorter." }),
    healthyThreshold: z.number().int().min(1).default(2),
    unhealthyThreshold: z.number().int().min(1).default(3),
    expectStatus: statusRanges.default("200-399"),
  }).superRefine((h, ctx) => {
    if (typeof h.timeout === "number" && h.timeout > h.interval) {
      ctx.addIssue({
        code: "custom",
        path: ["timeout"],
        message: "must not be longer than health.interval",
      });
    }
  }).transform(({ path, interval, timeout, ...rest }) => ({
    path,
    interval,
    // A fixed 2s default would make `--health-interval 1s` alone invalid.
    timeout: timeout ?? Math.min(2_000, interval),
    ...rest,
  })).prefault({}).meta({ description: "Active health checks: GET path on every backend." }),
  timeouts: z.strictObject({
    connect: duration.default(3_000),
    response: duration.default(30_000),
    idle: duration.default(60_000),
    drain: duration.default(30_000),
    clientHeader: duration.default(10_000),
    clientIdle: duration.default(75_000),
    client: duration.default(60_000),
  }).prefault({}).meta({
    description: "connect: TCP connect; response: until the response head; idle: pooled " +
      "upstream connections; drain: in-flight requests at shutdown; clientHeader: a client's " +
      "request head, from its first byte; clientIdle: a client's idle keep-alive connection; " +
      "client: a request in progress, each wait for more of its body or for the client to take " +
      "more of the response.",
  }),
  retries: z.number().int().min(0).max(10).default(2)
    .meta({ description: "Further attempts, on other backends, after a failed attempt." }),
  retryOn: z.array(
    z.union([z.literal(502), z.literal(503), z.literal(504)], { error: "must be 502, 503 or 504" }),
  ).default([]).meta({
    description: "Backend statuses that are retried (idempotent methods only).",
  }),
  retryBudget: z.strictObject({
    percent: z.number().min(0).max(100).default(20),
    minPerSecond: z.number().min(0).default(3),
  }).prefault({}).meta({
    description: "Retries per second: percent of requests, at least minPerSecond.",
  }),
  retryBuffer: size.default(65_536)
    .meta({ description: "Request body bytes kept so the request can be retried." }),
  outlier: z.strictObject({
    consecutiveFailures: z.number().int().min(0).default(5),
    baseEjection: duration.default(30_000),
    maxEjection: duration.default(300_000).meta({
      description: "Upper bound on one ejection, however often the backend was ejected.",
    }),
    maxEjectionPercent: z.number().min(0).max(100).default(50),
  }).prefault({}).meta({ description: "Passive checks: eject a backend after failures in a row." }),
  limits: z.strictObject({
    maxConnections: z.number().int().positive().optional(),
    maxPending: z.number().int().min(0).default(0),
    queueTimeout: duration.default(1_000),
  }).prefault({}).meta({
    description: "Per-backend concurrency limit and the queue for a free slot.",
  }),
  slowStart: duration.default(0)
    .meta({ description: "Ramp a recovered backend's weight up over this time; 0 is off." }),
  admin: z.strictObject({
    host: host.default("127.0.0.1"),
    port: port.default(9090),
    token: z.string().min(16, "must be at least 16 characters").optional(),
  }).optional().meta({ description: "Admin API and dashboard listener; off if unset." }),
  accessLog: z.strictObject({
    format: z.enum(["json", "combined"]).default("json"),
    path: z.string().min(1).optional().meta({ description: "File to append to; stdout if unset." }),
  }).optional().meta({ description: "One line per request; off if unset." }),
  log: z.strictObject({
    level: z.enum(["debug", "info", "warn", "error"]).default("info"),
    format: z.enum(["text", "json"]).default("text"),
  }).prefault({}).meta({ description: "The balancer's own log, on stderr." }),
}).superRefine((config, ctx) => {
  // Zod runs this even when fields failed their own checks, so skip what is not well formed.
  const seen = new Map<string, number>();
  const backends = Array.isArray(config.backends) ? config.backends : [];
  backends.forEach((b, i) => {
    let id: string;
    try {
      id = backendId(b);
    } catch {
      return;
    }
    if (seen.has(id)) {
      ctx.addIssue({
        code: "custom",
        path: ["backends", i, b.name ? "name" : "url"],
        message: `duplicates backends[${seen.get(id)}] (id ${id})`,
      });
    } else seen.set(id, i);
  });
  const admin = config.admin;
  if (admin && !admin.token && typeof admin.host === "string" && !isLoopback(admin.host)) {
    ctx.addIssue({
      code: "custom",
      path: ["admin", "token"],
      message: `is required when the admin listener is bound to a non-loopback address`,
    });
  }
  const listen = config.listen;
  if (
    admin && listen && admin.port !== 0 && admin.port === listen.port &&
    (admin.host === listen.host || isWildcard(admin.host) || isWildcard(listen.host))
  ) {
    ctx.addIssue({
      code: "custom",
      path: ["admin", "port"],
      message: `must differ from listen.port (${listen.port})`,
    });
  }
});

/** The validated configuration, with defaults filled in and durations in milliseconds. */
export type Config = z.output<typeof configSchema>;
/** One validated backend entry. */
export type BackendConfig = Config["backends"][number];

/** A backend's stable id: its name, or host:port. */
export function backendId(b: { url: string; name?: string }): string {
  if (b.name) return b.name;
  const url = new URL(b.url);
  return `${url.hostname.includes(":") ? `[${url.hostname}]` : url.hostname}:${
    url.port || (url.protocol === "https:" ? 443 : 80)
  }`.replace("[[", "[").replace("]]", "]");
}

/** Whether a host name or address only listens on the loopback interface. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h);
}

function isWildcard(host: unknown): boolean {
  return host === "0.0.0.0" || host === "::" || host === "[::]";
}

/** Thrown with every problem found, one line each, when a configuration is invalid. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join("\n"));
    this.name = "ConfigError";
  }
}

/** Validates raw (already parsed) input and returns the effective config, or throws {@linkcode ConfigError}. */
export function validateConfig(input: unknown): Config {
  const result = configSchema.safeParse(input, { error: naturalMessage });
  if (result.success) return result.data;
  throw new ConfigError(issueLines(result.error.issues));
}

/** Validates one backend entry (e.g. an admin API body), or throws {@linkcode ConfigError} with `field: reason` lines. */
export function validateBackend(input: unknown): BackendConfig {
  const result = backendSchema.safeParse(input, { error: naturalMessage });
  if (result.success) return result.data;
  throw new ConfigError(issueLines(result.error.issues));
}

/**
 * Error map for zod's built-in checks, used where a schema gives no message of its own:
 * "must be a number", "is required", "must be at most 65535".
 */
export function naturalMessage(issue: z.core.$ZodRawIssue): string | undefined {
  switch (issue.code) {
    case "invalid_type":
      if (issue.input === undefined) return "is required";
      if (issue.expected === "int") return "must be an integer";
      if (issue.expected === "object") return "must be a mapping";
      if (issue.expected === "array") return "must be a list";
      return `must be ${/^[aeiou]/.test(issue.expected) ? "an" : "a"} ${issue.expected}`;
    case "too_big": {
      const what = unitOf(issue.origin);
      return issue.inclusive === false
        ? `must be less than ${issue.maximum}${what}`
        : `must be at most ${issue.maximum}${what}`;
    }
    case "too_small": {
      const what = unitOf(issue.origin);
      if (issue.origin === "string" && issue.minimum === 1) return "must not be empty";
      return issue.inclusive === false
        ? `must be greater than ${issue.minimum}${what}`
        : `must be at least ${issue.minimum}${what}`;
    }
    case "invalid_value":
      return issue.values.length === 1
        ? `must be ${JSON.stringify(issue.values[0])}`
        : `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
    case "invalid_union":
      return "has an invalid value";
    case "invalid_format":
      return `must be a valid ${issue.format}`;
  }
  return undefined;
}

function unitOf(origin: string): string {
  return origin === "array" ? " items" : origin === "string" ? " characters" : "";
}

/** One `path: reason` line per problem, e.g. `backends[1].url: must be an http:// or https:// URL`. */
export function issueLines(issues: readonly z.core.$ZodIssue[]): string[] {
  return issues.flatMap((issue) => {
    let path = "";
    for (const key of issue.path) {
      path += typeof key === "number" ? `[${key}]` : path ? `.${String(key)}` : String(key);
    }
    if (issue.code === "unrecognized_keys") {
      return issue.keys.map((k) => `${path ? path + "." : ""}${k}: unknown key`);
    }
    return [`${path || "(config)"}: ${issue.message}`];
  });
}

/** Reads a YAML or JSON config file into raw input; throws ConfigError on unreadable or malformed files. */
export async function readConfigFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    const reason = err instanceof Deno.errors.NotFound
      ? "no such file"
      : err instanceof Deno.errors.PermissionDenied
      ? "permission denied (run with --allow-read)"
      : err instanceof Deno.errors.IsADirectory
      ? "is a directory"
      : (err as Error).message;
    throw new ConfigError([`${path}: cannot read: ${reason}`]);
  }
  return parseConfigText(text, path);
}

/** Parses YAML or JSON text (JSON for `.json` files) into raw input. */
export function parseConfigText(text: string, path = "config"): Record<string, unknown> {
  let data: unknown;
  try {
    data = path.endsWith(".json") ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new ConfigError([syntaxError(path, err as Error)]);
  }
  if (data === null || data === undefined) return {};
  if (typeof data !== "object" || Array.isArray(data)) {
    throw new ConfigError([`${path}: must be a mapping of settings`]);
  }
  return data as Record<string, unknown>;
}

/** One line for a YAML or JSON syntax error: `file:line:column: reason` when the position is known. */
function syntaxError(
  path: string,
  err: Error & { linePos?: { line: number; col: number }[] },
): string {
  // The yaml package appends a source excerpt after the first line and repeats the position in it.
  const reason = err.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
  const pos = err.linePos?.[0];
  return pos ? `${path}:${pos.line}:${pos.col}: ${reason}` : `${path}: ${reason}`;
}

/** Command-line settings that override the file. */
export interface Overrides {
  host?: string;
  port?: string;
  backends?: string[];
  strategy?: string;
  healthPath?: string;
  healthInterval?: string;
  healthTimeout?: string;
  logLevel?: string;
  logFormat?: string;
}

/** Applies command-line overrides to raw config input (flags win over the file). */
export function applyOverrides(
  raw: Record<string, unknown>,
  o: Overrides,
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...raw };
  const section = (key: string) => {
    const value = out[key];
    const copy = value && typeof value === "object" && !Array.isArray(value) ? { ...value } : {};
    out[key] = copy;
    return copy as Record<string, unknown>;
  };
  if (o.host !== undefined) section("listen").host = o.host;
  if (o.port !== undefined) section("listen").port = /^\d+$/.test(o.port) ? Number(o.port) : o.port;
  if (o.backends?.length) out.backends = o.backends.map((url) => ({ url }));
  if (o.strategy !== undefined) out.strategy = o.strategy;
  if (o.healthPath !== undefined) section("health").path = o.healthPath;
  if (o.healthInterval !== undefined) section("health").interval = o.healthInterval;
  if (o.healthTimeout !== undefined) section("health").timeout = o.healthTimeout;
  if (o.logLevel !== undefined) section("log").level = o.logLevel;
  if (o.logFormat !== undefined) section("log").format = o.logFormat;
  return out;
}

/** Loads the effective config: defaults, then the file (if any), then overrides. */
export async function loadConfig(path: string | undefined, overrides: Overrides): Promise<Config> {
  const raw = path ? await readConfigFile(path) : {};
  return validateConfig(applyOverrides(raw, overrides));
}

/** Renders an effective config back to readable JSON, durations as strings. */
export function formatConfig(config: Config): string {
  const durations = new Set([
    "interval",
    "timeout",
    "connect",
    "response",
    "idle",
    "drain",
    "clientHeader",
    "clientIdle",
    "client",
    "ttl",
    "baseEjection",
    "maxEjection",
    "queueTimeout",
    "slowStart",
  ]);
  return JSON.stringify(
    config,
    (key, value) => durations.has(key) && typeof value === "number" ? formatDuration(value) : value,
    2,
  );
}

/** The JSON Schema of the config file, for editors. */
export function configJsonSchema(): unknown {
  return z.toJSONSchema(configSchema, { io: "input", unrepresentable: "any" });
}

/** Parses `expectStatus` ("200-399", "200,204") into a predicate. */
export function statusMatcher(spec: string): (status: number) => boolean {
  const ranges = spec.split(",").map((part) => {
    const [lo, hi] = part.split("-").map((s) => Number(s.trim()));
    return [lo, hi ?? lo] as const;
  });
  return (status) => ranges.some(([lo, hi]) => status >= lo && status <= hi);
}
