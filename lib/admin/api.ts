/** The admin JSON API: status views of pools, routes and backends, and the operations that change them. */
import { z } from "zod";
import { type Balancer, UnknownBackend, UnknownPool } from "../balancer.ts";
import {
  backendSchema,
  ConfigError,
  issueLines,
  naturalMessage,
  type RouteConfig,
  validateBackend,
} from "../config.ts";
import { backendId } from "../net.ts";
import type { Backend, BackendState, Pool } from "../pool.ts";

const patchSchema = z.strictObject({ weight: backendSchema.shape.weight.removeDefault() });

/** Bodies larger than this are refused: a backend entry is a few hundred bytes. */
const MAX_BODY = 64 * 1024;

/** A backend as `GET /api/status` shows it. */
export interface BackendView {
  id: string;
  /** The pool it belongs to. */
  pool: string;
  url: string;
  /** Where it came from: `config` (the file or the admin API) or `dns: NAME`. */
  source: string;
  state: BackendState;
  reason: string;
  /** When the state began (ISO 8601). */
  since: string;
  weight: number;
  effectiveWeight: number;
  inflight: number;
  /** null when unlimited. */
  maxConnections: number | null;
  responses: Record<"1xx" | "2xx" | "3xx" | "4xx" | "5xx" | "failed", number>;
  /** Peak-EWMA latency of upstream responses. */
  latencyMs: number;
  lastProbe: {
    ok: boolean;
    status: number | null;
    error: string | null;
    time: string;
    durationMs: number;
  } | null;
  /** Only while draining: true once the last in-flight request finished. */
  drained?: boolean;
}

/** A pool as the API shows it. */
export interface PoolView {
  name: string;
  strategy: string;
  backends: BackendView[];
}

/** A route as the API shows it: its conditions and its action, as configured. */
export interface RouteView {
  index: number;
  /** Its `name`, or its index as a string: the `route` label of metrics and the access log. */
  label: string;
  conditions: Partial<
    Pick<RouteConfig, "host" | "path" | "exact" | "methods" | "headers" | "clientIp">
  >;
  action:
    | { pool: string }
    | { redirect: { to: string; status: number } }
    | { respond: { status: number } };
}

/** The body of `GET /api/status`. */
export interface StatusView {
  uptimeSeconds: number;
  startedAt: string;
  configVersion: number;
  /** The default (first) pool's strategy. */
  strategy: string;
  ready: boolean;
  /** Every backend of every pool. */
  backends: BackendView[];
  pools: PoolView[];
  /** The routes, first match wins; empty without `routes:` (everything goes to the one pool). */
  routes: RouteView[];
}

/** Describes one backend for the API. */
export function backendView(
  balancer: Balancer,
  pool: Pool,
  b: Backend,
  now = Date.now(),
): BackendView {
  const r = balancer.stats.responsesOf(pool.name, b.id);
  const probe = b.lastProbe;
  const view: BackendView = {
    id: b.id,
    pool: pool.name,
    url: b.url,
    source: b.source ?? "config",
    state: b.state,
    reason: b.reason,
    since: new Date(b.since).toISOString(),
    weight: b.weight,
    effectiveWeight: Math.round(pool.effectiveWeight(b, now) * 1000) / 1000,
    inflight: b.inflight,
    maxConnections: Number.isFinite(b.maxConnections) ? b.maxConnections : null,
    responses: { "1xx": r[1], "2xx": r[2], "3xx": r[3], "4xx": r[4], "5xx": r[5], failed: r[0] },
    latencyMs: Math.round(b.ewma * 100) / 100,
    lastProbe: probe
      ? {
        ok: probe.ok,
        status: probe.status ?? null,
        error: probe.error ?? null,
        time: new Date(probe.time).toISOString(),
        durationMs: Math.round(probe.durationMs * 100) / 100,
      }
      : null,
  };
  if (b.state === "draining") view.drained = b.inflight === 0;
  return view;
}

/** Describes a pool for the API. */
export function poolView(balancer: Balancer, name: string, now = Date.now()): PoolView {
  const c = balancer.pools.get(name)!;
  return {
    name,
    strategy: c.config.strategy,
    backends: c.pool.backends.map((b) => backendView(balancer, c.pool, b, now)),
  };
}

/** Describes the routes for the API. */
export function routeViews(routes: readonly RouteConfig[] | undefined): RouteView[] {
  return (routes ?? []).map((r, index) => {
    const conditions: RouteView["conditions"] = {};
    for (const key of ["host", "path", "exact", "methods", "headers", "clientIp"] as const) {
      if (r[key] !== undefined && !(key === "exact" && r.exact === false)) {
        (conditions as Record<string, unknown>)[key] = r[key];
      }
    }
    const action: RouteView["action"] = r.pool !== undefined
      ? { pool: r.pool }
      : r.redirect
      ? { redirect: r.redirect }
      : { respond: { status: r.respond!.status } };
    return { index, label: r.name ?? String(index), conditions, action };
  });
}

/** Describes the whole balancer for the API. */
export function statusView(balancer: Balancer, now = Date.now()): StatusView {
  const pools = [...balancer.pools.keys()].map((name) => poolView(balancer, name, now));
  return {
    uptimeSeconds: Math.floor((now - balancer.startedAt) / 1000),
    startedAt: new Date(balancer.startedAt).toISOString(),
    configVersion: balancer.version,
    strategy: pools[0]?.strategy ?? "",
    ready: balancer.ready,
    backends: pools.flatMap((p) => p.backends),
    pools,
    routes: routeViews(balancer.config.routes),
  };
}

/** A JSON response with the headers every API answer carries. */
export function json(status: number, body: unknown, headers?: HeadersInit): Response {
  const response = new Response(JSON.stringify(body, null, 2) + "\n", { status, headers });
  response.headers.set("content-type", "application/json; charset=utf-8");
  response.headers.set("cache-control", "no-store");
  return response;
}

/** An error answer: `{ "error": message }`. */
export function apiError(status: number, message: string, headers?: HeadersInit): Response {
  return json(status, { error: message }, headers);
}

/** What a handler gets: the request, and the pool and backend id named in the path. */
interface Target {
  pool: string | undefined;
  id: string;
}
type Handler = (req: Request, target: Target) => Response | Promise<Response>;
interface Route {
  pattern: RegExp;
  methods: Record<string, Handler>;
}

/**
 * Routes `/api/...` requests (except the event stream) to their handlers. Backends are
 * addressed as `/api/pools/{pool}/backends/{id}`; `/api/backends/{id}` names the default
 * (first) pool's.
 */
export function apiRoutes(balancer: Balancer): (req: Request, path: string) => Promise<Response> {
  const poolOf = (name: string | undefined): Pool | undefined =>
    name === undefined ? balancer.pool : balancer.pools.get(name)?.pool;
  const unknownPool = (name: string) => apiError(404, `no pool named ${name}`);
  const unknown = (t: Target) =>
    apiError(404, `no backend with id ${t.id}${t.pool === undefined ? "" : ` in pool ${t.pool}`}`);
  const view = (pool: Pool, b: Backend) => backendView(balancer, pool, b);
  // Balancer methods throw when the id vanished between lookup and call.
  const act = async (t: Target, status: number, fn: () => void): Promise<Response> => {
    try {
      fn();
    } catch (err) {
      if (err instanceof UnknownBackend) return unknown(t);
      if (err instanceof UnknownPool) return unknownPool(t.pool!);
      throw err;
    }
    // Every worker applies the change before the API answers.
    await balancer.sync();
    const pool = poolOf(t.pool);
    const b = pool?.get(t.id);
    return pool && b ? json(status, view(pool, b)) : unknown(t);
  };
  const withBackend = (t: Target, fn: (pool: Pool, b: Backend) => Response | Promise<Response>) => {
    const pool = poolOf(t.pool);
    if (!pool) return unknownPool(t.pool!);
    const b = pool.get(t.id);
    return b ? fn(pool, b) : unknown(t);
  };

  const backendsList: Handler = async (_req, t) => {
    const pool = poolOf(t.pool);
    if (!pool) return unknownPool(t.pool!);
    await balancer.collect();
    return json(200, pool.backends.map((b) => view(pool, b)));
  };
  const addBackend: Handler = async (req, t) => {
    const pool = poolOf(t.pool);
    if (!pool) return unknownPool(t.pool!);
    const body = await readJson(req);
    if (body instanceof Response) return body;
    let entry;
    try {
      entry = validateBackend(body);
    } catch (err) {
      if (err instanceof ConfigError) return apiError(400, problems(err.problems));
      throw err;
    }
    if (entry.url === undefined) {
      return apiError(400, "url: is required (dns entries go in the file)");
    }
    const id = backendId({ url: entry.url, name: entry.name });
    if (pool.get(id)) return apiError(409, `backend ${id} already exists in pool ${pool.name}`);
    let backend: Backend;
    try {
      backend = balancer.addBackend(entry, pool.name);
    } catch (err) {
      return apiError(409, (err as Error).message);
    }
    await balancer.sync();
    const prefix = t.pool === undefined
      ? "/api/backends"
      : `/api/pools/${encodeURIComponent(pool.name)}/backends`;
    return json(201, view(pool, backend), {
      location: `${prefix}/${encodeURIComponent(backend.id)}`,
    });
  };
  const one: Record<string, Handler> = {
    GET: (_req, t) => withBackend(t, (pool, b) => json(200, view(pool, b))),
    PATCH: (req, t) =>
      withBackend(t, async (pool) => {
        const body = await readJson(req);
        if (body instanceof Response) return body;
        const parsed = patchSchema.safeParse(body, { error: naturalMessage });
        if (!parsed.success) return apiError(400, problems(issueLines(parsed.error.issues)));
        return act(t, 200, () => balancer.setWeight(t.id, parsed.data.weight, pool.name));
      }),
    DELETE: (_req, t) =>
      withBackend(t, async (pool) => {
        if (!balancer.removeBackend(t.id, pool.name)) return unknown(t);
        await balancer.sync();
        return json(
          200,
          t.pool === undefined ? { removed: t.id } : { removed: t.id, pool: pool.name },
        );
      }),
  };
  const operation = (
    fn: (t: Target, pool: string) => void,
    status: number,
  ): Record<string, Handler> => ({
    POST: (_req, t) => withBackend(t, (pool) => act(t, status, () => fn(t, pool.name))),
  });
  const drain = operation((t, pool) => {
    // The balancer logs when the drain completes; the status shows `drained`.
    balancer.drain(t.id, pool).catch(() => {});
  }, 202);
  const enable = operation((t, pool) => {
    balancer.enable(t.id, pool);
    balancer.log.info(`backend ${t.id} enabled by operator`, { pool });
  }, 200);
  const disable = operation((t, pool) => {
    balancer.disable(t.id, pool);
    balancer.log.info(`backend ${t.id} disabled by operator`, { pool });
  }, 200);

  const P = "/api/pools/([^/]+)";
  const routes: Route[] = [
    {
      pattern: /^\/api\/status$/,
      methods: {
        GET: async () => {
          await balancer.collect();
          return json(200, statusView(balancer));
        },
      },
    },
    {
      pattern: /^\/api\/pools$/,
      methods: {
        GET: () => json(200, [...balancer.pools.keys()].map((n) => poolView(balancer, n))),
      },
    },
    {
      pattern: new RegExp(`^${P}$`),
      methods: {
        GET: (_req, t) =>
          balancer.pools.has(t.pool!)
            ? json(200, poolView(balancer, t.pool!))
            : unknownPool(t.pool!),
      },
    },
    {
      pattern: /^\/api\/routes$/,
      methods: { GET: () => json(200, routeViews(balancer.config.routes)) },
    },
    { pattern: /^\/api\/backends$/, methods: { GET: backendsList, POST: addBackend } },
    { pattern: new RegExp(`^${P}/backends$`), methods: { GET: backendsList, POST: addBackend } },
    { pattern: /^\/api\/backends\/([^/]+)$/, methods: one },
    { pattern: new RegExp(`^${P}/backends/([^/]+)$`), methods: one },
    { pattern: /^\/api\/backends\/([^/]+)\/drain$/, methods: drain },
    { pattern: new RegExp(`^${P}/backends/([^/]+)/drain$`), methods: drain },
    { pattern: /^\/api\/backends\/([^/]+)\/enable$/, methods: enable },
    { pattern: new RegExp(`^${P}/backends/([^/]+)/enable$`), methods: enable },
    { pattern: /^\/api\/backends\/([^/]+)\/disable$/, methods: disable },
    { pattern: new RegExp(`^${P}/backends/([^/]+)/disable$`), methods: disable },
  ];

  return async (req, path) => {
    for (const route of routes) {
      const match = route.pattern.exec(path);
      if (!match) continue;
      const method = req.method === "HEAD" ? "GET" : req.method;
      const handler = route.methods[method];
      if (!handler) {
        const allow = Object.keys(route.methods);
        if (allow.includes("GET")) allow.push("HEAD");
        return apiError(405, `method ${req.method} not allowed on ${path}`, {
          allow: allow.join(", "),
        });
      }
      let parts: string[];
      try {
        parts = match.slice(1).map((p) => decodeURIComponent(p));
      } catch {
        return apiError(400, "malformed pool or backend id in the path");
      }
      const inPool = path.startsWith("/api/pools/");
      const target: Target = inPool
        ? { pool: parts[0], id: parts[1] ?? "" }
        : { pool: undefined, id: parts[0] ?? "" };
      return await handler(req, target);
    }
    return apiError(404, `no such endpoint: ${path}`);
  };
}

/** Reads a JSON body, or returns the error response to send. */
async function readJson(req: Request): Promise<unknown | Response> {
  const declared = Number(req.headers.get("content-length") ?? 0);
  if (declared > MAX_BODY) {
    await req.body?.cancel();
    return apiError(413, `request body is larger than ${MAX_BODY} bytes`);
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    for await (const chunk of req.body) {
      size += chunk.length;
      if (size > MAX_BODY) return apiError(413, `request body is larger than ${MAX_BODY} bytes`);
      chunks.push(chunk);
    }
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const c of chunks) {
    bytes.set(c, offset);
    offset += c.length;
  }
  const text = new TextDecoder().decode(bytes).trim();
  if (!text) return apiError(400, "expected a JSON body");
  try {
    return JSON.parse(text);
  } catch (err) {
    return apiError(400, `invalid JSON: ${(err as Error).message}`);
  }
}

/** Validation problems as one message; the whole body is "body", not "(config)". */
function problems(lines: string[]): string {
  return lines.map((line) => line.replace(/^\(config\)/, "body")).join("; ");
}
