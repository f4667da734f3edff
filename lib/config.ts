/**
 * The configuration: its zod schema, defaults, named pools and routes, file loading,
 * command-line overrides and error reporting (`path: reason`, every problem at once).
 */
import { isAbsolute, resolve } from "node:path";
import { z } from "zod";
import { parse as parseYaml } from "yaml";
import { cidrMatcher } from "./cidr.ts";
import { DURATION_PATTERN, formatDuration, MAX_DURATION, parseDuration } from "./duration.ts";
import { backendId, isLoopback, isWildcard } from "./net.ts";
import { normalizeName, parseNameServer } from "./discovery/names.ts";
import { checkFiles } from "./config_files.ts";

/** Selection strategies accepted by `strategy:`. */
export const STRATEGIES = [
  "round-robin",
  "weighted-round-robin",
  "least-connections",
  "random",
  "power-of-two",
  "latency",
  "consistent-hash",
  "maglev",
] as const;

/** The pool that top-level `backends` form. */
export const DEFAULT_POOL = "default";

const DURATION_HINT = "must be a duration such as 250ms, 2s or 1m";

/** A duration in ms; `min` (ms) rejects 0 and other values too short to make sense. */
function duration(min = 0) {
  return z
    .union([z.number(), z.string()], { error: DURATION_HINT })
    .transform((value, ctx) => {
      const ms = parseDuration(value);
      if (ms === undefined) {
        ctx.addIssue({
          code: "custom",
          message: `${DURATION_HINT} (got ${JSON.stringify(value)})`,
        });
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
      if (ms < min) {
        ctx.addIssue({
          code: "custom",
          message: `must be at least ${formatDuration(min)} (got ${JSON.stringify(value)})`,
        });
        return z.NEVER;
      }
      return ms;
    })
    .meta({
      description: "A duration: 250ms, 2s, 1m, 1h; a bare number is milliseconds.",
      pattern: DURATION_PATTERN,
      minimum: min,
    });
}

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
const NAME = /^[A-Za-z0-9._-]+$/;
const name = z.string().regex(NAME, "must use only letters, digits and . _ -");
const headerName = z.string().regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, "must be a header name");

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

/** TLS settings for connections to HTTPS backends. */
const backendTlsSchema = z.strictObject({
  ca: z.string().min(1).optional()
    .meta({ description: "PEM file of the CA that signs the backend's certificate." }),
  serverName: z.string().min(1).optional()
    .meta({ description: "Name sent by SNI and checked in the backend's certificate." }),
  insecureSkipVerify: z.boolean().default(false)
    .meta({ description: "Accept any certificate name (for testing only)." }),
}).meta({ description: "TLS to the backend: private CA, server name, verification." });

/** The zod schema of one `backends:` entry (also validates admin API `POST` bodies). */
export const backendSchema = z.strictObject({
  url: httpUrl.optional().meta({ description: "http://host:port or https://host:port" }),
  dns: z.string().min(1).optional()
    .meta({ description: "A DNS name to resolve into backends instead of one url." }),
  port: port.optional().meta({ description: "Port of the backends a dns entry resolves to." }),
  type: z.enum(["A", "AAAA", "A+AAAA", "SRV"]).optional()
    .meta({ description: "Record type of a dns entry (default A); SRV gives ports too." }),
  name: z.string().regex(/^[A-Za-z0-9._:-]+$/, "must use only letters, digits and . _ : -")
    .optional().meta({ description: "Stable id shown by the admin API; defaults to host:port." }),
  weight: z.number().int().min(0).max(1000).default(1),
  maxConnections: z.number().int().positive().optional()
    .meta({ description: "Concurrent requests this backend accepts; overrides limits." }),
  tls: backendTlsSchema.optional(),
  proxyProtocol: z.enum(["v1", "v2"]).optional()
    .meta({ description: "Send a PROXY protocol header on each new connection." }),
}).superRefine((b, ctx) => {
  if ((b.url === undefined) === (b.dns === undefined)) {
    ctx.addIssue({
      code: "custom",
      path: ["url"],
      message: b.url === undefined
        ? "is required (or dns: NAME)"
        : "set either url or dns, not both",
    });
    return;
  }
  if (b.url !== undefined) {
    for (const key of ["port", "type"] as const) {
      if (b[key] !== undefined) {
        ctx.addIssue({ code: "custom", path: [key], message: "applies to dns entries only" });
      }
    }
    if (b.tls && !b.url.startsWith("https:")) {
      ctx.addIssue({ code: "custom", path: ["tls"], message: "needs an https:// url" });
    }
  } else {
    try {
      normalizeName(b.dns!);
    } catch (err) {
      ctx.addIssue({ code: "custom", path: ["dns"], message: (err as Error).message });
    }
    if (b.type !== "SRV" && b.port === undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["port"],
        message: "is required for dns entries of type A, AAAA and A+AAAA",
      });
    }
    if (b.type === "SRV" && b.port !== undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["port"],
        message: "must not be set for SRV entries: the records carry the ports",
      });
    }
    if (b.name !== undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["name"],
        message: "dns entries name their backends by address",
      });
    }
  }
});

const HASH_KEY = /^(ip|path|(header|cookie|query):[^\s:]+)$/;

// ---------------------------------------------------------------- per-pool settings

// Each setting is written once without its default: pools take it as optional, and the top
// level adds the default, so a pool inherits the top level's value, then the default.

const healthPath = z.string().startsWith("/", "must start with /");
const healthInterval = duration(100);
const healthTimeout = duration(1)
  .meta({ description: "Probe timeout; defaults to 2s, or health.interval if shorter." });
const threshold = z.number().int().min(1);
const retryPercent = z.number().min(0).max(100)
  .meta({ description: "Retries in flight, as a share of requests in flight." });
const retryMin = z.number().int().min(0)
  .meta({ description: "Retries that may always be in flight, however light the traffic." });
const consecutiveFailures = z.number().int().min(0);
const ejection = duration(1);
const maxEjection = duration(1).meta({
  description: "Upper bound on one ejection, however often the backend was ejected.",
});
const percent = z.number().min(0).max(100);
const maxConnections = z.number().int().positive();
const maxPending = z.number().int().min(0);
const strategy = z.enum(STRATEGIES).meta({
  description: "How a backend is chosen for each request.",
});
const hashKey = z.string()
  .regex(HASH_KEY, "must be ip, path, header:NAME, cookie:NAME or query:NAME")
  .meta({
    description: "What consistent-hash and maglev hash: ip, path, header:NAME, cookie:NAME, " +
      "query:NAME.",
  });
const retries = z.number().int().min(0).max(10)
  .meta({ description: "Further attempts, on other backends, after a failed attempt." });
const retryOn = z.array(
  z.union([z.literal(502), z.literal(503), z.literal(504)], { error: "must be 502, 503 or 504" }),
).meta({ description: "Backend statuses that are retried (idempotent methods only)." });
const slowStart = duration()
  .meta({ description: "Ramp a recovered backend's weight up over this time; 0 is off." });
const stickySchema = z.strictObject({
  cookie: z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, "must be a cookie name"),
  ttl: duration(1000).optional().meta({
    description: "Cookie lifetime; a session cookie if unset.",
  }),
}).meta({ description: "Pin each client to a backend with a cookie." });

/** Pool keys as the top level writes them (with defaults): the defaults of every pool. */
const poolKeys = {
  strategy: strategy.default("round-robin"),
  hashKey: hashKey.default("ip"),
  sticky: stickySchema.optional(),
  health: z.strictObject({
    path: healthPath.default("/"),
    interval: healthInterval.default(10_000),
    timeout: healthTimeout.optional(),
    healthyThreshold: threshold.default(2),
    unhealthyThreshold: threshold.default(3),
    expectStatus: statusRanges.default("200-399"),
  }).prefault({}).meta({ description: "Active health checks: GET path on every backend." }),
  retries: retries.default(2),
  retryOn: retryOn.default([]),
  retryBudget: z.strictObject({
    percent: retryPercent.default(20),
    minConcurrent: retryMin.default(3),
  }).prefault({}).meta({
    description:
      "Retries in flight at most: percent of requests in flight, at least minConcurrent.",
  }),
  outlier: z.strictObject({
    consecutiveFailures: consecutiveFailures.default(5),
    baseEjection: ejection.default(30_000),
    maxEjection: maxEjection.default(300_000),
    maxEjectionPercent: percent.default(50),
  }).prefault({}).meta({ description: "Passive checks: eject a backend after failures in a row." }),
  slowStart: slowStart.default(0),
};

/** One entry of `pools:`: every pool key optional, the top level filling in the rest. */
const poolSchema = z.strictObject({
  backends: z.array(backendSchema).min(1, "at least one backend is required"),
  strategy: strategy.optional(),
  hashKey: hashKey.optional(),
  sticky: stickySchema.optional(),
  health: z.strictObject({
    path: healthPath.optional(),
    interval: healthInterval.optional(),
    timeout: healthTimeout.optional(),
    healthyThreshold: threshold.optional(),
    unhealthyThreshold: threshold.optional(),
    expectStatus: statusRanges.optional(),
  }).optional(),
  retries: retries.optional(),
  retryOn: retryOn.optional(),
  retryBudget: z.strictObject({
    percent: retryPercent.optional(),
    minConcurrent: retryMin.optional(),
  })
    .optional(),
  outlier: z.strictObject({
    consecutiveFailures: consecutiveFailures.optional(),
    baseEjection: ejection.optional(),
    maxEjection: maxEjection.optional(),
    maxEjectionPercent: percent.optional(),
  }).optional(),
  limits: z.strictObject({
    maxConnections: maxConnections.optional(),
    maxPending: maxPending.optional(),
    queueTimeout: duration(1).optional(),
  }).optional(),
  slowStart: slowStart.optional(),
  timeouts: z.strictObject({
    connect: duration(1).optional(),
    response: duration(1).optional(),
    idle: duration(1).optional(),
  }).optional(),
  tls: backendTlsSchema.optional()
    .meta({ description: "Default TLS settings for this pool's https backends." }),
}).meta({ description: "A named set of backends with its own balancing settings." });

// ---------------------------------------------------------------- routes

const headerEdits = z.strictObject({
  set: z.record(headerName, z.string()).optional()
    .meta({ description: "Headers to set (replacing any of the same name)." }),
  remove: z.array(headerName).optional().meta({ description: "Headers to remove." }),
});

const routeSchema = z.strictObject({
  name: name.optional().meta({
    description: "Label in metrics and the admin API (default: index).",
  }),
  host: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional().meta({
    description: "Host (port ignored, any case) or *.domain (one or more labels); or a list.",
  }),
  path: z.string().startsWith("/", "must start with /").optional()
    .meta({ description: "Path prefix on a segment boundary (/v1 matches /v1 and /v1/x)." }),
  exact: z.boolean().default(false).meta({ description: "The path must equal `path`." }),
  stripPrefix: z.boolean().default(false)
    .meta({ description: "Remove `path` from the target sent to the backend." }),
  methods: z.array(z.string().regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, "must be a method"))
    .min(1).optional(),
  headers: z.record(headerName, z.string()).optional()
    .meta({ description: "Headers that must equal these values (names in any case)." }),
  clientIp: z.union([z.string(), z.array(z.string()).min(1)]).optional()
    .meta({ description: "Client address in one of these CIDRs." }),
  pool: name.optional().meta({ description: "Send matching requests to this pool." }),
  redirect: z.strictObject({
    to: z.string().min(1),
    status: z.union([z.literal(301), z.literal(302), z.literal(307), z.literal(308)], {
      error: "must be 301, 302, 307 or 308",
    }).default(302),
  }).optional().meta({ description: "Answer with a redirect (the query is kept)." }),
  respond: z.strictObject({
    status: z.number().int().min(200).max(599).default(200),
    body: z.string().default(""),
    contentType: z.string().default("text/plain; charset=utf-8"),
  }).optional().meta({ description: "Answer directly, without a backend." }),
  requestHeaders: headerEdits.optional(),
  responseHeaders: headerEdits.optional(),
  rateLimit: z.strictObject({
    perSecond: z.number().positive(),
    burst: z.number().int().min(1).optional()
      .meta({ description: "Requests allowed at once (default: perSecond, at least 1)." }),
    key: z.string().regex(/^(ip|header:[!#$%&'*+\-.^_`|~0-9A-Za-z]+)$/, "must be ip or header:NAME")
      .default("ip"),
  }).optional().meta({ description: "Over the limit: 429 with Retry-After." }),
}).meta({ description: "A route: conditions, then one action (pool, redirect or respond)." });

// ---------------------------------------------------------------- listeners

const listenSchema = z.strictObject({
  host: host.default("0.0.0.0"),
  port: port.default(8080),
  tls: z.strictObject({
    certificates: z.array(z.strictObject({ cert: z.string().min(1), key: z.string().min(1) }))
      .min(1, "at least one certificate is required").meta({
        description: "PEM certificate and key files; chosen by SNI, the first is the default.",
      }),
    minVersion: z.enum(["1.2", "1.3"]).default("1.2"),
  }).optional().meta({ description: "Terminate TLS on this listener." }),
  http2: z.boolean().optional()
    .meta({ description: "Offer HTTP/2 (h2 by ALPN with tls, h2c prior knowledge without)." }),
  redirectHttps: port.optional()
    .meta({ description: "Answer every request with 308 to https://<host>:PORT<target>." }),
  proxyProtocol: z.boolean().optional()
    .meta({
      description: "Require a PROXY protocol header from trustedProxies peers (default false).",
    }),
});

// ---------------------------------------------------------------- the whole file

/** The zod schema of the configuration file (camelCase keys, unknown keys rejected). */
export const configSchema = z.strictObject({
  $schema: z.string().optional(),
  listen: z.union([listenSchema, z.array(listenSchema).min(1)], {
    error: (issue) =>
      issue.code === "invalid_union"
        ? "must be a mapping (one listener) or a list of them"
        : undefined,
  }).prefault({}).meta({
    description: "Where clients connect (one mapping or a list); port 0 picks a free port.",
  }),
  workers: z.union([z.number().int().min(1).max(256), z.literal("auto")], {
    error: 'must be a number of workers or "auto"',
  }).default(1).meta({ description: "Threads serving traffic; auto is one per core." }),
  backends: z.array(backendSchema).min(1, "at least one backend is required").optional()
    .meta({ description: "The servers of the default pool." }),
  pools: z.record(name, poolSchema).optional()
    .meta({ description: "Named pools; each takes the pool keys, defaulting to the top level's." }),
  routes: z.array(routeSchema).min(1).optional()
    .meta({ description: "Routes, first match wins; requests matching none get 404." }),
  hooks: z.string().min(1).optional()
    .meta({ description: "A TypeScript module of request hooks (relative to the config file)." }),
  ...poolKeys,
  timeouts: z.strictObject({
    connect: duration(1).default(3_000),
    response: duration(1).default(30_000),
    idle: duration(1).default(60_000),
    drain: duration().default(30_000),
    clientHeader: duration(1).default(10_000),
    clientIdle: duration(1).default(75_000),
    client: duration(1).default(60_000),
    tunnel: duration(1).default(3_600_000),
  }).prefault({}).meta({
    description: "connect: TCP connect; response: until the response head; idle: pooled " +
      "upstream connections; drain: in-flight requests at shutdown; clientHeader: a client's " +
      "request head, from its first byte; clientIdle: a client's idle keep-alive connection; " +
      "client: a request in progress, each wait for more of its body or for the client to take " +
      "more of the response; tunnel: an idle upgraded (WebSocket) connection.",
  }),
  limits: z.strictObject({
    maxConnections: maxConnections.optional(),
    maxPending: maxPending.default(0),
    queueTimeout: duration(1).default(1_000),
    maxHeaderBytes: size.default(65_536).meta({ description: "Request head size (then 431)." }),
    maxHeaders: z.number().int().min(1).default(100)
      .meta({ description: "Request header lines (then 431)." }),
    maxUriLength: size.default(8_192).meta({ description: "Request target length (then 414)." }),
    maxBodySize: size.optional()
      .meta({ description: "Request body size (then 413); unlimited if unset." }),
  }).prefault({}).meta({
    description: "Per-backend concurrency limit, its queue, and limits on client requests.",
  }),
  retryBuffer: size.default(65_536)
    .meta({ description: "Request body bytes kept so the request can be retried." }),
  requestBuffering: size.default(0).meta({
    description: "Bodies up to this size are read whole before a backend is chosen (0: stream).",
  }),
  trustedProxies: z.array(z.string()).default([])
    .meta({ description: "CIDRs whose X-Forwarded-For and PROXY headers are believed." }),
  discovery: z.strictObject({
    interval: duration(1000).default(30_000),
    nameServer: z.string().superRefine((value, ctx) => {
      try {
        parseNameServer(value);
      } catch (err) {
        ctx.addIssue({ code: "custom", message: (err as Error).message });
      }
    }).optional().meta({ description: "DNS server as address:port; the system's if unset." }),
  }).prefault({}).meta({ description: "How dns backend entries are resolved." }),
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
});

type Parsed = z.output<typeof configSchema>;
/** One validated backend entry. */
export type BackendConfig = z.output<typeof backendSchema>;
/** One validated listener. */
export type ListenConfig = z.output<typeof listenSchema>;
/** One validated route, as written. */
export type RouteConfig = z.output<typeof routeSchema>;
/** TLS settings for HTTPS backends. */
export type BackendTls = z.output<typeof backendTlsSchema>;

/** Settings of `health:`, with the timeout resolved. */
export interface HealthConfig {
  path: string;
  interval: number;
  timeout: number;
  healthyThreshold: number;
  unhealthyThreshold: number;
  expectStatus: string;
}

/** A pool's effective settings: its own keys over the top level's over the defaults. */
export interface PoolConfig {
  name: string;
  backends: BackendConfig[];
  strategy: typeof STRATEGIES[number];
  hashKey: string;
  sticky: { cookie: string; ttl?: number } | undefined;
  health: HealthConfig;
  retries: number;
  retryOn: number[];
  retryBudget: { percent: number; minConcurrent: number };
  outlier: {
    consecutiveFailures: number;
    baseEjection: number;
    maxEjection: number;
    maxEjectionPercent: number;
  };
  limits: { maxConnections?: number; maxPending: number; queueTimeout: number };
  slowStart: number;
  timeouts: { connect: number; response: number; idle: number };
  tls: BackendTls | undefined;
}

/** The validated configuration, with defaults filled in, durations in ms, pools resolved. */
export type Config = Omit<Parsed, "health" | "pools"> & {
  health: HealthConfig;
  /** Every pool in order: `default` (from top-level backends) first, then `pools:`. */
  pools: PoolConfig[];
  /** `pools:` as written, for printing. */
  poolsInput?: Parsed["pools"];
};

/** The listeners of a config as a list (`listen` may be one mapping). */
export function listenersOf(config: Pick<Config, "listen">): ListenConfig[] {
  return Array.isArray(config.listen) ? config.listen : [config.listen];
}

/** Thrown with every problem found, one line each, when a configuration is invalid. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join("\n"));
    this.name = "ConfigError";
  }
}

/** Thrown when the config file itself cannot be read (missing, no permission): not a config problem. */
export class ConfigFileError extends ConfigError {
  constructor(readonly path: string, readonly reason: string) {
    super([`${path}: cannot read: ${reason}`]);
    this.name = "ConfigFileError";
  }
}

/** How to validate: where relative paths in the file point. */
export interface ValidateOptions {
  /** Folder that relative `hooks` and certificate paths resolve against. @default Deno.cwd() */
  baseDir?: string;
}

/** Validates raw (already parsed) input and returns the effective config, or throws {@linkcode ConfigError}. */
export function validateConfig(input: unknown, options: ValidateOptions = {}): Config {
  const result = configSchema.safeParse(input, { error: naturalMessage, reportInput: true });
  // Cross-field checks read the raw input, so they report alongside field errors, not after.
  const cross = crossChecks(input);
  if (!result.success || cross.length) {
    const lines = result.success ? [] : issueLines(result.error.issues);
    throw new ConfigError([...lines, ...cross.filter((line) => !lines.includes(line))]);
  }
  return resolveConfig(result.data, options.baseDir ?? Deno.cwd());
}

/** Validates one backend entry (e.g. an admin API body), or throws {@linkcode ConfigError} with `field: reason` lines. */
export function validateBackend(input: unknown): BackendConfig {
  const result = backendSchema.safeParse(input, { error: naturalMessage, reportInput: true });
  if (result.success) return result.data;
  throw new ConfigError(issueLines(result.error.issues, backendSchema));
}

function resolveHealth(h: Partial<HealthConfig>): HealthConfig {
  const interval = h.interval!;
  // A fixed 2s default would make `--health-interval 1s` alone invalid.
  return { ...h, timeout: h.timeout ?? Math.min(2_000, interval) } as HealthConfig;
}

function defined<T extends object>(o: T | undefined): Partial<T> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o ?? {})) if (v !== undefined) out[k] = v;
  return out as Partial<T>;
}

function resolveConfig(parsed: Parsed, baseDir: string): Config {
  const top = parsed;
  const pool = (name: string, own: z.output<typeof poolSchema> | undefined): PoolConfig => {
    const tls = own?.tls;
    return {
      name,
      backends: own?.backends ?? top.backends ?? [],
      strategy: own?.strategy ?? top.strategy,
      hashKey: own?.hashKey ?? top.hashKey,
      sticky: own ? own.sticky : top.sticky,
      health: resolveHealth({
        ...defined(top.health),
        // An inherited timeout too long for this pool's interval gives way to the default.
        ...(own?.health?.interval !== undefined && own.health.timeout === undefined &&
            (top.health.timeout ?? 0) > own.health.interval
          ? { timeout: undefined }
          : {}),
        ...defined(own?.health),
      }),
      retries: own?.retries ?? top.retries,
      retryOn: own?.retryOn ?? top.retryOn,
      retryBudget: { ...top.retryBudget, ...defined(own?.retryBudget) },
      outlier: { ...top.outlier, ...defined(own?.outlier) },
      limits: {
        maxConnections: own?.limits?.maxConnections ?? top.limits.maxConnections,
        maxPending: own?.limits?.maxPending ?? top.limits.maxPending,
        queueTimeout: own?.limits?.queueTimeout ?? top.limits.queueTimeout,
      },
      slowStart: own?.slowStart ?? top.slowStart,
      timeouts: {
        connect: own?.timeouts?.connect ?? top.timeouts.connect,
        response: own?.timeouts?.response ?? top.timeouts.response,
        idle: own?.timeouts?.idle ?? top.timeouts.idle,
      },
      tls: tls ? { ...tls, ca: tls.ca && absolute(tls.ca, baseDir) } : undefined,
    };
  };
  const pools: PoolConfig[] = [];
  if (top.backends) pools.push(pool(DEFAULT_POOL, undefined));
  for (const [name, own] of Object.entries(top.pools ?? {})) pools.push(pool(name, own));
  for (const p of pools) {
    p.backends = p.backends.map((b) =>
      b.tls?.ca ? { ...b, tls: { ...b.tls, ca: absolute(b.tls.ca, baseDir) } } : b
    );
  }
  const listen = Array.isArray(top.listen)
    ? top.listen.map((l) => withCertPaths(l, baseDir))
    : withCertPaths(top.listen, baseDir);
  const { pools: poolsInput, ...rest } = top;
  return {
    ...rest,
    listen,
    health: resolveHealth(top.health),
    ...(top.hooks === undefined ? {} : { hooks: absolute(top.hooks, baseDir) }),
    pools,
    ...(poolsInput ? { poolsInput } : {}),
  };
}

function absolute(path: string, baseDir: string): string {
  return isAbsolute(path) ? path : resolve(baseDir, path);
}

function withCertPaths(l: ListenConfig, baseDir: string): ListenConfig {
  if (!l.tls) return l;
  return {
    ...l,
    tls: {
      ...l.tls,
      certificates: l.tls.certificates.map((c) => ({
        cert: absolute(c.cert, baseDir),
        key: absolute(c.key, baseDir),
      })),
    },
  };
}

// ---------------------------------------------------------------- cross-field checks

type Raw = Record<string, unknown>;
const isObject = (v: unknown): v is Raw => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Checks that span fields, on the raw input, each only where the values involved are well
 * formed (their own errors come from the schema): pool and route references, duplicate
 * backends, timeouts within intervals, ports that collide, the admin token off loopback.
 */
function crossChecks(input: unknown): string[] {
  if (!isObject(input)) return [];
  const out: string[] = [];
  const topBackends = Array.isArray(input.backends) ? input.backends : undefined;
  const pools = isObject(input.pools) ? input.pools : undefined;
  const routes = Array.isArray(input.routes) ? input.routes : undefined;

  if (!topBackends && !pools && input.backends === undefined) {
    out.push("backends: is required");
  }
  if (pools && topBackends && DEFAULT_POOL in pools) {
    out.push(`pools.${DEFAULT_POOL}: is the name of the top-level backends' pool; choose another`);
  }
  const poolNames = new Set<string>([
    ...(topBackends ? [DEFAULT_POOL] : []),
    ...Object.keys(pools ?? {}),
  ]);
  if (!routes && poolNames.size > 1) {
    out.push("routes: are required when there is more than one pool (which pool gets what?)");
  }

  duplicateBackends(topBackends, "backends", out);
  for (const [name, p] of Object.entries(pools ?? {})) {
    if (isObject(p)) duplicateBackends(p.backends, `pools.${name}.backends`, out);
  }

  // health.timeout must fit health.interval, wherever each was written.
  const health = (raw: unknown) => (isObject(raw) ? raw : {});
  const ms = (v: unknown) => (v === undefined ? undefined : parseDuration(v as string));
  const topHealth = health(input.health);
  const checkHealth = (own: Raw, path: string, inherited: Raw) => {
    // Only a timeout written here is checked: an inherited one too long for this interval
    // gives way to the default.
    const timeout = ms(own.timeout);
    const interval = ms(own.interval ?? inherited.interval) ?? 10_000;
    if (timeout !== undefined && timeout > interval) {
      out.push(`${path}.timeout: must not be longer than health.interval`);
    }
  };
  checkHealth(topHealth, "health", {});
  for (const [name, p] of Object.entries(pools ?? {})) {
    if (isObject(p) && isObject(p.health)) checkHealth(p.health, `pools.${name}.health`, topHealth);
  }

  if (Array.isArray(input.trustedProxies)) {
    input.trustedProxies.forEach((c, i) => {
      if (typeof c !== "string") return;
      try {
        cidrMatcher([c]);
      } catch (err) {
        out.push(`trustedProxies[${i}]: ${(err as Error).message}`);
      }
    });
  }

  routes?.forEach((r, i) => {
    if (!isObject(r)) return;
    const at = `routes[${i}]`;
    const actions = ["pool", "redirect", "respond"].filter((a) => r[a] !== undefined);
    if (actions.length === 0) out.push(`${at}: needs an action: pool, redirect or respond`);
    if (actions.length > 1) out.push(`${at}: has ${actions.join(" and ")}; choose one action`);
    if (typeof r.pool === "string" && !poolNames.has(r.pool)) {
      out.push(
        `${at}.pool: no pool named ${JSON.stringify(r.pool)}${
          poolNames.size ? ` (pools: ${[...poolNames].join(", ")})` : ""
        }`,
      );
    }
    for (const key of ["requestHeaders", "responseHeaders"]) {
      const edits = r[key];
      if (!isObject(edits)) continue;
      const names = [
        ...(isObject(edits.set) ? Object.keys(edits.set) : []),
        ...(Array.isArray(edits.remove) ? edits.remove.filter((n) => typeof n === "string") : []),
      ];
      for (const n of names) {
        if (BALANCER_HEADERS.has(n.toLowerCase())) {
          out.push(`${at}.${key}: ${n} is framing or hop-by-hop: the balancer sets it`);
        }
      }
    }
    if (r.pool === undefined) {
      for (const key of ["requestHeaders", "responseHeaders", "stripPrefix"]) {
        if (r[key] !== undefined && r[key] !== false) {
          out.push(`${at}.${key}: applies to routes with a pool only`);
        }
      }
    }
    const cidrs = typeof r.clientIp === "string"
      ? [r.clientIp]
      : Array.isArray(r.clientIp)
      ? r.clientIp
      : [];
    cidrs.forEach((c, j) => {
      if (typeof c !== "string") return;
      try {
        cidrMatcher([c]);
      } catch (err) {
        const path = typeof r.clientIp === "string" ? `${at}.clientIp` : `${at}.clientIp[${j}]`;
        out.push(`${path}: ${(err as Error).message}`);
      }
    });
    if (typeof r.host === "string" || Array.isArray(r.host)) {
      const hosts = typeof r.host === "string" ? [r.host] : r.host;
      hosts.forEach((h, j) => {
        if (typeof h !== "string") return;
        const problem = hostPatternProblem(h);
        if (problem) {
          out.push(`${typeof r.host === "string" ? `${at}.host` : `${at}.host[${j}]`}: ${problem}`);
        }
      });
    }
    if (isObject(r.redirect) && typeof r.redirect.to === "string") {
      try {
        new URL(r.redirect.to, "http://x");
      } catch {
        out.push(`${at}.redirect.to: must be a URL or a path`);
      }
    }
    // A route after one that matches everything is never reached.
    const earlier = routes.slice(0, i).findIndex((e) => isObject(e) && matchesEverything(e));
    if (earlier !== -1) {
      out.push(`${at}: is unreachable: routes[${earlier}] before it matches every request`);
    }
  });

  const admin = isObject(input.admin) ? input.admin : undefined;
  if (admin) {
    const adminHost = typeof admin.host === "string" ? admin.host : "127.0.0.1";
    if (admin.token === undefined && !isLoopback(adminHost)) {
      out.push(
        "admin.token: is required when the admin listener is bound to a non-loopback address",
      );
    }
    const adminPort = typeof admin.port === "number" ? admin.port : 9090;
    const listens = Array.isArray(input.listen)
      ? input.listen
      : [isObject(input.listen) ? input.listen : {}];
    listens.forEach((l, i) => {
      if (!isObject(l)) return;
      const p = typeof l.port === "number" ? l.port : 8080;
      const h = typeof l.host === "string" ? l.host : "0.0.0.0";
      if (
        adminPort !== 0 && adminPort === p &&
        (adminHost === h || isWildcard(adminHost) || isWildcard(h))
      ) {
        const which = Array.isArray(input.listen) ? `listen[${i}].port` : "listen.port";
        out.push(`admin.port: must differ from ${which} (${p})`);
      }
    });
  }
  if (Array.isArray(input.listen)) {
    const seen = new Map<number, number>();
    input.listen.forEach((l, i) => {
      if (!isObject(l) || typeof l.port !== "number" || l.port === 0) return;
      if (seen.has(l.port)) {
        out.push(`listen[${i}].port: ${l.port} is also listen[${seen.get(l.port)}]'s port`);
      } else seen.set(l.port, i);
    });
  }
  const listens = Array.isArray(input.listen) ? input.listen : [input.listen];
  const trusting = Array.isArray(input.trustedProxies) && input.trustedProxies.length > 0;
  listens.forEach((l, i) => {
    if (!isObject(l)) return;
    const at = Array.isArray(input.listen) ? `listen[${i}]` : "listen";
    if (l.redirectHttps !== undefined && l.tls !== undefined) {
      out.push(`${at}.redirectHttps: is for plain listeners; this one has tls`);
    }
    if (l.proxyProtocol === true && !trusting) {
      out.push(
        `${at}.proxyProtocol: needs trustedProxies: the addresses allowed to send PROXY headers`,
      );
    }
  });
  return out;
}

/** Headers the balancer owns: routes may not set or remove them. */
const BALANCER_HEADERS = new Set([
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "upgrade",
]);

function duplicateBackends(list: unknown, path: string, out: string[]): void {
  if (!Array.isArray(list)) return;
  const ids = new Map<string, number>();
  const urls = new Map<string, number>();
  list.forEach((b, i) => {
    if (!isObject(b) || typeof b.url !== "string") return;
    let id: string;
    let url: string;
    try {
      id = backendId({ url: b.url, name: typeof b.name === "string" ? b.name : undefined });
      url = new URL(b.url).origin;
    } catch {
      return;
    }
    if (ids.has(id)) {
      out.push(
        `${path}[${i}].${b.name ? "name" : "url"}: duplicates ${path}[${ids.get(id)}] (id ${id})`,
      );
    } else if (urls.has(url)) {
      out.push(`${path}[${i}].url: duplicates ${path}[${urls.get(url)}] (${url})`);
    }
    ids.set(id, ids.get(id) ?? i);
    urls.set(url, urls.get(url) ?? i);
  });
}

/** A route with no condition (or only the prefix `/`) takes every request. */
function matchesEverything(r: Raw): boolean {
  const conditional = ["host", "methods", "headers", "clientIp"].some((k) => r[k] !== undefined);
  if (conditional) return false;
  return r.path === undefined || (r.path === "/" && r.exact !== true);
}

function hostPatternProblem(h: string): string | undefined {
  const name = h.startsWith("*.") ? h.slice(2) : h;
  if (
    !/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$/.test(
      name,
    )
  ) {
    return `must be a host name or *.domain (got ${JSON.stringify(h)})`;
  }
  return undefined;
}

/** Problems worth a warning that do not stop the config: a pool no route uses. */
export function configWarnings(config: Config): string[] {
  // Hooks may choose any pool, so an unrouted pool is not a mistake then.
  if (!config.routes || config.hooks) return [];
  const used = new Set(config.routes.map((r) => r.pool).filter((p) => p !== undefined));
  return config.pools.filter((p) => !used.has(p.name)).map((p) =>
    `${p.name === DEFAULT_POOL ? "backends" : `pools.${p.name}`}: no route uses this pool`
  );
}

// ---------------------------------------------------------------- error lines

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

/** Keys that moved or only make sense elsewhere, with the hint an operator needs. */
const MOVED: Record<string, string> = {
  minPerSecond: "renamed to minConcurrent: the retry budget counts retries in flight",
};

/** One `path: reason` line per problem, e.g. `backends[1].url: must be an http:// or https:// URL`. */
export function issueLines(
  issues: readonly z.core.$ZodIssue[],
  root: z.core.SomeType = configSchema,
): string[] {
  return issues.flatMap(unwrapUnion).flatMap((issue) => {
    let path = "";
    for (const key of issue.path) {
      path += typeof key === "number" ? `[${key}]` : path ? `.${String(key)}` : String(key);
    }
    if (issue.code === "unrecognized_keys") {
      const known = knownKeys(root, issue.path);
      return issue.keys.map((k) => {
        const hint = MOVED[k] ?? (known.length ? suggestion(k, known, issue.path) : "");
        return `${path ? path + "." : ""}${k}: unknown key${hint ? ` (${hint})` : ""}`;
      });
    }
    return [`${path || "(config)"}: ${issue.message}`];
  });
}

/**
 * A union (a listener or a list of them) fails as a whole; when exactly one of its branches
 * got past the type check, that branch's own problems are the ones worth reporting.
 */
function unwrapUnion(issue: z.core.$ZodIssue): z.core.$ZodIssue[] {
  if (issue.code !== "invalid_union") return [issue];
  const deep = issue.errors.filter((branch) => branch.some((i) => i.path.length > 0));
  if (deep.length !== 1) return [issue];
  return deep[0].flatMap((inner) => {
    const message = naturalMessage(inner as unknown as z.core.$ZodRawIssue) ?? inner.message;
    return unwrapUnion({ ...inner, message, path: [...issue.path, ...inner.path] });
  });
}

function suggestion(key: string, known: string[], path: readonly PropertyKey[]): string {
  let best = "";
  let bestDistance = Infinity;
  for (const k of known) {
    const d = editDistance(key.toLowerCase(), k.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  if (bestDistance <= Math.max(1, Math.floor(key.length / 3))) return `did you mean ${best}?`;
  // A balancer-wide key written inside a pool.
  if (path[0] === "pools" && path.length >= 2) {
    const topSection = knownKeys(configSchema, path.slice(2));
    if (topSection.includes(key)) return "a balancer-wide setting: set it at the top level";
  }
  return "";
}

/** Edit distance counting a swap of neighbours as one edit (`prot` → `port`). */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => {
    const row = new Array<number>(b.length + 1).fill(0);
    row[0] = i;
    return row;
  });
  for (let j = 0; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/** The keys an object schema at `path` accepts (through optionals, defaults, unions, lists). */
function knownKeys(schema: z.core.SomeType, path: readonly PropertyKey[]): string[] {
  const objects = (s: z.core.SomeType, rest: readonly PropertyKey[]): z.core.SomeType[] => {
    // deno-lint-ignore no-explicit-any
    const def = (s as any)._zod.def;
    switch (def.type) {
      case "optional":
      case "default":
      case "prefault":
      case "nullable":
        return objects(def.innerType, rest);
      case "pipe":
        return objects(def.in, rest);
      case "union":
        return def.options.flatMap((o: z.core.SomeType) => objects(o, rest));
      case "array":
        return rest.length && typeof rest[0] === "number"
          ? objects(def.element, rest.slice(1))
          : [];
      case "record":
        return rest.length ? objects(def.valueType, rest.slice(1)) : [];
      case "object":
        if (!rest.length) return [s];
        return def.shape[rest[0] as string]
          ? objects(def.shape[rest[0] as string], rest.slice(1))
          : [];
    }
    return [];
  };
  // deno-lint-ignore no-explicit-any
  return [...new Set(objects(schema, path).flatMap((o) => Object.keys((o as any)._zod.def.shape)))];
}

// ---------------------------------------------------------------- files and flags

/** Reads a YAML or JSON config file into raw input; throws ConfigError on unreadable or malformed files. */
export async function readConfigFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw new ConfigFileError(path, fileError(err));
  }
  return parseConfigText(text, path);
}

/** A short reason a file could not be read. */
export function fileError(err: unknown): string {
  return err instanceof Deno.errors.NotFound
    ? "no such file"
    : err instanceof Deno.errors.NotCapable
    ? "not allowed (run Deno with --allow-read)"
    : err instanceof Deno.errors.PermissionDenied
    ? "permission denied"
    : err instanceof Deno.errors.IsADirectory
    ? "is a directory"
    : (err as Error).message;
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
  workers?: string;
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
  if (o.host !== undefined || o.port !== undefined) {
    // --host and --port change the first listener.
    const list = Array.isArray(out.listen);
    const first = list ? (out.listen as unknown[])[0] : out.listen;
    const copy: Record<string, unknown> = isObject(first) ? { ...first } : {};
    if (o.host !== undefined) copy.host = o.host;
    if (o.port !== undefined) copy.port = /^\d+$/.test(o.port) ? Number(o.port) : o.port;
    out.listen = list ? [copy, ...(out.listen as unknown[]).slice(1)] : copy;
  }
  if (o.backends?.length) out.backends = o.backends.map((url) => ({ url }));
  if (o.strategy !== undefined) out.strategy = o.strategy;
  if (o.healthPath !== undefined) section("health").path = o.healthPath;
  if (o.healthInterval !== undefined) section("health").interval = o.healthInterval;
  if (o.healthTimeout !== undefined) section("health").timeout = o.healthTimeout;
  if (o.logLevel !== undefined) section("log").level = o.logLevel;
  if (o.logFormat !== undefined) section("log").format = o.logFormat;
  if (o.workers !== undefined) {
    out.workers = /^\d+$/.test(o.workers) ? Number(o.workers) : o.workers;
  }
  return out;
}

/**
 * Loads the effective config: defaults, then the file (if any), then overrides; then checks
 * the files it names (hooks, certificates), reporting their problems like the config's own.
 */
export async function loadConfig(path: string | undefined, overrides: Overrides): Promise<Config> {
  const raw = path ? await readConfigFile(path) : {};
  const config = validateConfig(applyOverrides(raw, overrides), {
    baseDir: path ? resolve(path, "..") : Deno.cwd(),
  });
  const problems = await checkFiles(config);
  if (problems.length) throw new ConfigError(problems);
  return config;
}

const DURATIONS = new Set([
  "interval",
  "timeout",
  "connect",
  "response",
  "idle",
  "drain",
  "clientHeader",
  "clientIdle",
  "client",
  "tunnel",
  "ttl",
  "baseEjection",
  "maxEjection",
  "queueTimeout",
  "slowStart",
]);

/**
 * Renders an effective config back to readable JSON that validates to the same config:
 * durations as strings, `pools` as written (each inherits the top level), the admin token
 * redacted.
 */
export function formatConfig(config: Config): string {
  const { pools: _, poolsInput, ...rest } = config;
  const shown = {
    ...rest,
    ...(rest.admin?.token ? { admin: { ...rest.admin, token: "(redacted)" } } : {}),
    ...(poolsInput ? { pools: poolsInput } : {}),
  };
  return JSON.stringify(
    shown,
    (key, value) => DURATIONS.has(key) && typeof value === "number" ? formatDuration(value) : value,
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

export { backendId, isLoopback };
