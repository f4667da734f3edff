/** The admin listener: JSON API, Prometheus metrics and the live dashboard, on their own port. */
import type { Balancer } from "../balancer.ts";
import { formatHost, isLoopback } from "../net.ts";
import { apiError, apiRoutes, json } from "./api.ts";
import { listenError } from "../assemble.ts";
import { bearerMatches } from "./auth.ts";
import { EventStreams } from "./events.ts";
import { TimeSeries } from "./timeseries.ts";

/** Settings of `admin:`. */
export interface AdminOptions {
  host: string;
  port: number;
  /** Required for writes; required for everything on a non-loopback address. */
  token?: string;
}

/** A running admin listener. */
export interface AdminServer {
  readonly addr: Deno.NetAddr;
  shutdown(): Promise<void>;
}

/** Dashboard files, served from lib/admin/dashboard (embedded by `deno compile --include`). */
const ASSETS: Record<string, { file: string; type: string }> = {
  "/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/app.js": { file: "app.js", type: "text/javascript; charset=utf-8" },
  "/style.css": { file: "style.css", type: "text/css; charset=utf-8" },
};
const ASSET_HEADERS = {
  "cache-control": "no-cache",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
};
const WRITE_DISABLED =
  "writes are disabled: set admin.token in the configuration to change backends through the admin API";

/**
 * Throws (as {@linkcode startAdmin} would) when the admin address cannot be listened on now: a
 * port in use then stops sluice before any traffic port opens. The listener itself needs the
 * balancer, so it opens after them.
 */
export function checkAdminAddress(options: AdminOptions): void {
  const { host, port } = options;
  if (port === 0) return;
  try {
    Deno.listen({ hostname: host, port }).close();
  } catch (err) {
    throw listenError(err, { host, port });
  }
}

/** Starts the admin listener for `balancer`; refuses a non-loopback address without a token. */
export async function startAdmin(balancer: Balancer, options: AdminOptions): Promise<AdminServer> {
  const { host, port, token } = options;
  const everything = !isLoopback(host);
  if (everything && !token) {
    throw new Error(
      `admin.token is required when the admin listener is bound to a non-loopback address (${host})`,
    );
  }
  if (port !== 0 && balancer.addrs.some((a) => a.port === port)) {
    throw new Error(`admin.port ${port} is a traffic port; choose another`);
  }

  const series = new TimeSeries();
  const streams = new EventStreams(balancer, series, token !== undefined);
  const api = apiRoutes(balancer);
  const assets = new Map<string, string>();
  const log = balancer.log;

  const authorized = (req: Request) =>
    token === undefined
      ? Promise.resolve(false)
      : bearerMatches(req.headers.get("authorization"), token);
  const challenge = (message: string) =>
    apiError(401, message, { "www-authenticate": 'Bearer realm="sluice admin"' });

  const handle = async (req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>) => {
    const path = new URL(req.url).pathname;
    const read = req.method === "GET" || req.method === "HEAD";
    // Probes for an outer balancer or Kubernetes: no token, no data beyond yes or no.
    if (path === "/live" && read) return json(200, { live: true });
    if (path === "/ready" && read) {
      const ready = balancer.ready;
      return json(ready ? 200 : 503, { ready });
    }
    const asset = ASSETS[path];
    // The dashboard's files hold no data and a browser cannot attach a bearer token to a
    // page load; the page sends the token with every API call it makes.
    if (asset && read) return await serveAsset(asset, assets);
    if (!read) {
      if (token === undefined) return apiError(403, WRITE_DISABLED);
      if (!(await authorized(req))) {
        log.warn(`admin: refused ${req.method} ${path}: missing or wrong token`, {
          from: info.remoteAddr.hostname,
        });
        return challenge("a valid bearer token is required for changes");
      }
    } else if (everything && !(await authorized(req))) {
      return challenge("a valid bearer token is required");
    }
    let response: Response;
    if (path === "/metrics") {
      if (read) await balancer.collect();
      response = read
        ? new Response(balancer.stats.render(), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        })
        : apiError(405, `method ${req.method} not allowed on /metrics`, { allow: "GET, HEAD" });
    } else if (path === "/api/events") {
      response = read
        ? streams.open()
        : apiError(405, `method ${req.method} not allowed on /api/events`, {
          allow: "GET, HEAD",
        });
    } else if (asset) {
      response = apiError(405, `method ${req.method} not allowed on ${path}`, {
        allow: "GET, HEAD",
      });
    } else if (path.startsWith("/api/")) {
      response = await api(req, path);
    } else {
      response = apiError(404, `no such endpoint: ${path}`);
    }
    if (!read && response.ok) {
      log.info(`admin: ${req.method} ${path} -> ${response.status}`, {
        from: info.remoteAddr.hostname,
      });
    }
    return response;
  };

  const { promise: listening, resolve: onListen } = Promise.withResolvers<Deno.NetAddr>();
  let server: Deno.HttpServer;
  try {
    server = Deno.serve({
      hostname: host,
      port,
      onListen: onListen as (addr: Deno.Addr) => void,
      onError(err) {
        log.error("admin request failed", { error: String(err) });
        return apiError(500, "internal error");
      },
    }, handle);
  } catch (err) {
    throw listenError(err, { host, port });
  }
  const addr = await listening;
  // Only once listening: nothing to undo if the port was taken.
  const unobserve = balancer.addObserver(series);
  log.info(
    `admin listening on http://${formatHost(addr.hostname)}:${addr.port}`,
    {
      token: token ? "required for writes" + (everything ? " and reads" : "") : "none: read-only",
    },
  );

  let stopping: Promise<void> | undefined;
  return {
    addr,
    shutdown() {
      stopping ??= (async () => {
        unobserve();
        streams.closeAll();
        await server.shutdown();
      })();
      return stopping;
    },
  };
}

async function serveAsset(
  asset: { file: string; type: string },
  cache: Map<string, string>,
): Promise<Response> {
  let text = cache.get(asset.file);
  if (text === undefined) {
    try {
      text = await Deno.readTextFile(new URL(`./dashboard/${asset.file}`, import.meta.url));
    } catch (err) {
      return apiError(500, `dashboard file ${asset.file} is missing: ${(err as Error).message}`);
    }
    cache.set(asset.file, text);
  }
  return new Response(text, { headers: { ...ASSET_HEADERS, "content-type": asset.type } });
}
