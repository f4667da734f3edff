/** The admin JSON API: status views of the pool and the operations that change it. */
import { z } from "zod";
import { type Balancer, UnknownBackend } from "../balancer.ts";
import {
  backendId,
  backendSchema,
  ConfigError,
  issueLines,
  naturalMessage,
  validateBackend,
} from "../config.ts";
import type { Backend, BackendState } from "../pool.ts";

const patchSchema = z.strictObject({ weight: backendSchema.shape.weight.removeDefault() });

/** Bodies larger than this are refused: a backend entry is a few hundred bytes. */
const MAX_BODY = 64 * 1024;

/** A backend as `GET /api/status` shows it. */
export interface BackendView {
  id: string;
  url: string;
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

/** The body of `GET /api/status`. */
export interface StatusView {
  uptimeSeconds: number;
  startedAt: string;
  configVersion: number;
  strategy: string;
  backends: BackendView[];
}

/** Describes one backend for the API. */
export function backendView(balancer: Balancer, b: Backend, now = Date.now()): BackendView {
  const r = b.responses;
  const probe = b.lastProbe;
  const view: BackendView = {
    id: b.id,
    url: b.url,
    state: b.state,
    reason: b.reason,
    since: new Date(b.since).toISOString(),
    weight: b.weight,
    effectiveWeight: Math.round(balancer.pool.effectiveWeight(b, now) * 1000) / 1000,
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

/** Describes the whole balancer for the API. */
export function statusView(balancer: Balancer, now = Date.now()): StatusView {
  return {
    uptimeSeconds: Math.floor((now - balancer.startedAt) / 1000),
    startedAt: new Date(balancer.startedAt).toISOString(),
    configVersion: balancer.version,
    strategy: balancer.config.strategy,
    backends: balancer.pool.backends.map((b) => backendView(balancer, b, now)),
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

type Handler = (req: Request, id: string) => Response | Promise<Response>;
interface Route {
  pattern: RegExp;
  methods: Record<string, Handler>;
}

/** Routes `/api/...` requests (except the event stream) to their handlers. */
export function apiRoutes(balancer: Balancer): (req: Request, path: string) => Promise<Response> {
  const find = (id: string): Backend | undefined => balancer.pool.get(id);
  const view = (b: Backend) => backendView(balancer, b);
  const unknown = (id: string) => apiError(404, `no backend with id ${id}`);
  // Balancer methods throw UnknownBackend when the id vanished between lookup and call.
  const act = (id: string, status: number, fn: () => void): Response => {
    try {
      fn();
    } catch (err) {
      if (err instanceof UnknownBackend) return unknown(id);
      throw err;
    }
    const b = find(id);
    return b ? json(status, view(b)) : unknown(id);
  };

  const routes: Route[] = [
    {
      pattern: /^\/api\/status$/,
      methods: { GET: () => json(200, statusView(balancer)) },
    },
    {
      pattern: /^\/api\/backends$/,
      methods: {
        GET: () => json(200, statusView(balancer).backends),
        POST: async (req) => {
          const body = await readJson(req);
          if (body instanceof Response) return body;
          let entry;
          try {
            entry = validateBackend(body);
          } catch (err) {
            if (err instanceof ConfigError) return apiError(400, problems(err.problems));
            throw err;
          }
          const id = backendId(entry);
          if (find(id)) return apiError(409, `backend ${id} already exists`);
          const backend = balancer.addBackend(entry);
          return json(201, view(backend), {
            location: `/api/backends/${encodeURIComponent(backend.id)}`,
          });
        },
      },
    },
    {
      pattern: /^\/api\/backends\/([^/]+)$/,
      methods: {
        GET: (_req, id) => {
          const b = find(id);
          return b ? json(200, view(b)) : unknown(id);
        },
        PATCH: async (req, id) => {
          if (!find(id)) return unknown(id);
          const body = await readJson(req);
          if (body instanceof Response) return body;
          const parsed = patchSchema.safeParse(body, { error: naturalMessage });
          if (!parsed.success) {
            return apiError(400, problems(issueLines(parsed.error.issues)));
          }
          return act(id, 200, () => balancer.setWeight(id, parsed.data.weight));
        },
        DELETE: (_req, id) => {
          if (!balancer.removeBackend(id)) return unknown(id);
          return json(200, { removed: id });
        },
      },
    },
    {
      pattern: /^\/api\/backends\/([^/]+)\/drain$/,
      methods: {
        POST: (_req, id) =>
          act(id, 202, () => {
            // The balancer logs when the drain completes; the status shows `drained`.
            balancer.drain(id).catch(() => {});
          }),
      },
    },
    {
      pattern: /^\/api\/backends\/([^/]+)\/enable$/,
      methods: {
        POST: (_req, id) =>
          act(id, 200, () => {
            balancer.enable(id);
            balancer.log.info(`backend ${id} enabled by operator`);
          }),
      },
    },
    {
      pattern: /^\/api\/backends\/([^/]+)\/disable$/,
      methods: {
        POST: (_req, id) =>
          act(id, 200, () => {
            balancer.disable(id);
            balancer.log.info(`backend ${id} disabled by operator`);
          }),
      },
    },
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
      let id = "";
      try {
        id = match[1] === undefined ? "" : decodeURIComponent(match[1]);
      } catch {
        return apiError(400, "malformed backend id in the path");
      }
      return await handler(req, id);
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
