/**
 * Routing: an immutable table built from `routes:` at load time and swapped whole on reload.
 * Matching is a function from a request to the first route whose conditions all hold.
 */
import { cidrMatcher } from "./cidr.ts";
import { FRAMING } from "./hooks.ts";
import type { RouteConfig } from "./config.ts";
import type { ClientRequest } from "./message.ts";
import { RateLimiter } from "./rate_limit.ts";

/** What a matched route does. */
export type RouteAction =
  | { kind: "pool"; pool: string }
  | { kind: "redirect"; to: string; status: number }
  | { kind: "respond"; status: number; body: Uint8Array; contentType: string };

/** Header changes, ready to apply: names lower-case. */
export interface HeaderEdits {
  set: [string, string][];
  /** Names removed, including those `set` replaces. */
  remove: ReadonlySet<string>;
}

/** One compiled route. */
export interface Route {
  readonly index: number;
  /** Its `name`, or its index: the `route` label of metrics and the access log. */
  readonly label: string;
  readonly action: RouteAction;
  /** The prefix `stripPrefix` removes, if it is set. */
  readonly strip: string | undefined;
  readonly requestHeaders: HeaderEdits | undefined;
  readonly responseHeaders: HeaderEdits | undefined;
  readonly rateLimit: { limiter: RateLimiter; key: string | undefined } | undefined;
  /** The configuration it was built from (the admin API shows it). */
  readonly config: RouteConfig | undefined;
  readonly hosts: ((host: string) => boolean) | undefined;
  readonly path: string | undefined;
  readonly exact: boolean;
  readonly methods: ReadonlySet<string> | undefined;
  readonly headers: readonly (readonly [string, string])[] | undefined;
  readonly clientIp: ((ip: string) => boolean) | undefined;
}

/** The routes of one configuration, in order. */
export class Router {
  readonly routes: readonly Route[];
  readonly #needPath: boolean;
  readonly #needHost: boolean;

  /**
   * `routes` undefined means "everything to `fallbackPool`". Rate-limit tables of an earlier
   * router are reused for routes whose limit did not change, so a reload does not reset them;
   * `shared` gives each route's table by index (another thread's router's `limiterBuffers()`),
   * so every worker enforces one limit.
   */
  constructor(
    routes: RouteConfig[] | undefined,
    fallbackPool: string,
    previous?: Router,
    shared?: readonly (SharedArrayBuffer | undefined)[],
  ) {
    if (!routes) {
      this.routes = [{
        index: 0,
        label: "",
        action: { kind: "pool", pool: fallbackPool },
        strip: undefined,
        requestHeaders: undefined,
        responseHeaders: undefined,
        rateLimit: undefined,
        config: undefined,
        hosts: undefined,
        path: undefined,
        exact: false,
        methods: undefined,
        headers: undefined,
        clientIp: undefined,
      }];
    } else {
      const limiters = new Map<string, RateLimiter>();
      for (const r of previous?.routes ?? []) {
        if (r.rateLimit && r.config) limiters.set(limitKey(r.config), r.rateLimit.limiter);
      }
      this.routes = routes.map((r, i) => compile(r, i, limiters, shared?.[i]));
    }
    this.#needPath = this.routes.some((r) => r.path !== undefined);
    this.#needHost = this.routes.some((r) => r.hosts !== undefined);
  }

  /** Each route's rate-limit table (undefined for routes without a limit), by index. */
  limiterBuffers(): (SharedArrayBuffer | undefined)[] {
    return this.routes.map((r) => r.rateLimit?.limiter.buffer);
  }

  /** The first route `req` (from client address `ip`) matches, or undefined. */
  match(req: ClientRequest, ip: string): Route | undefined {
    const path = this.#needPath ? routingPath(req.target) : "";
    const host = this.#needHost ? routingHost(req.host) : "";
    const routes = this.routes;
    for (let i = 0; i < routes.length; i++) {
      const r = routes[i];
      if (r.hosts !== undefined && !r.hosts(host)) continue;
      if (r.path !== undefined && !(r.exact ? path === r.path : underPrefix(path, r.path))) {
        continue;
      }
      if (r.methods !== undefined && !r.methods.has(req.method)) continue;
      if (r.headers !== undefined && !r.headers.every(([k, v]) => req.header(k) === v)) continue;
      if (r.clientIp !== undefined && !r.clientIp(ip)) continue;
      return r;
    }
    return undefined;
  }
}

function compile(
  r: RouteConfig,
  index: number,
  limiters: Map<string, RateLimiter>,
  shared: SharedArrayBuffer | undefined,
): Route {
  const action: RouteAction = r.pool !== undefined
    ? { kind: "pool", pool: r.pool }
    : r.redirect
    ? { kind: "redirect", to: r.redirect.to, status: r.redirect.status }
    : {
      kind: "respond",
      status: r.respond!.status,
      body: new TextEncoder().encode(r.respond!.body),
      contentType: r.respond!.contentType,
    };
  let rateLimit: Route["rateLimit"];
  if (r.rateLimit) {
    const options = {
      perSecond: r.rateLimit.perSecond,
      burst: r.rateLimit.burst ?? Math.max(1, Math.ceil(r.rateLimit.perSecond)),
    };
    rateLimit = {
      limiter: shared
        ? new RateLimiter(options, shared)
        : takeLimiter(limiters, limitKey(r)) ?? new RateLimiter(options),
      key: r.rateLimit.key === "ip" ? undefined : r.rateLimit.key.slice(7).toLowerCase(),
    };
  }
  const hosts = r.host === undefined
    ? undefined
    : hostMatcher(typeof r.host === "string" ? [r.host] : r.host);
  return {
    index,
    label: r.name ?? String(index),
    action,
    strip: r.stripPrefix && r.path !== undefined ? r.path : undefined,
    requestHeaders: edits(r.requestHeaders),
    responseHeaders: edits(r.responseHeaders),
    rateLimit,
    config: r,
    hosts,
    path: r.path,
    exact: r.exact,
    methods: r.methods ? new Set(r.methods.map((m) => m.toUpperCase())) : undefined,
    headers: r.headers
      ? Object.entries(r.headers).map(([k, v]) => [k.toLowerCase(), v] as const)
      : undefined,
    clientIp: r.clientIp === undefined
      ? undefined
      : cidrMatcher(typeof r.clientIp === "string" ? [r.clientIp] : r.clientIp),
  };
}

/**
 * Identifies a rate limit across reloads: the whole route as written (conditions, key and
 * numbers), wherever it moved in the list. Two routes that differ only in, say, `methods`
 * keep a bucket each.
 */
function limitKey(r: RouteConfig): string {
  return JSON.stringify(r);
}

/** The previous router's limiter for `key`, once: a duplicate route gets a table of its own. */
function takeLimiter(limiters: Map<string, RateLimiter>, key: string): RateLimiter | undefined {
  const limiter = limiters.get(key);
  limiters.delete(key);
  return limiter;
}

function edits(spec: RouteConfig["requestHeaders"]): HeaderEdits | undefined {
  if (!spec) return undefined;
  const set = Object.entries(spec.set ?? {})
    .filter(([k]) => !FRAMING.has(k.toLowerCase()))
    .map(([k, v]) => [k, v] as [string, string]);
  const remove = new Set(
    (spec.remove ?? []).map((k) => k.toLowerCase()).filter((k) => !FRAMING.has(k)),
  );
  for (const [k] of set) remove.add(k.toLowerCase());
  return { set, remove };
}

/** Matches host names: exact (any case) or `*.domain` (one or more labels before the domain). */
export function hostMatcher(patterns: readonly string[]): (host: string) => boolean {
  const exact = new Set<string>();
  const suffixes: string[] = [];
  for (const p of patterns) {
    const h = p.toLowerCase().replace(/\.$/, "");
    if (h.startsWith("*.")) suffixes.push(h.slice(1));
    else exact.add(h);
  }
  return (host) => {
    if (exact.has(host)) return true;
    for (const s of suffixes) if (host.length > s.length && host.endsWith(s)) return true;
    return false;
  };
}

/** A Host value as routes compare it: lower-case, no port, no trailing dot. */
export function routingHost(host: string | undefined): string {
  if (!host) return "";
  let end = host.length;
  if (host.charCodeAt(0) === 91 /* [ */) {
    const close = host.indexOf("]");
    return (close === -1 ? host : host.slice(0, close + 1)).toLowerCase();
  }
  const colon = host.lastIndexOf(":");
  if (colon !== -1) end = colon;
  if (host.charCodeAt(end - 1) === 46 /* . */) end--;
  return (end === host.length ? host : host.slice(0, end)).toLowerCase();
}

/** Whether `path` is `prefix` or below it on a segment boundary (`/v1` covers `/v1/x`, not `/v10`). */
export function underPrefix(path: string, prefix: string): boolean {
  if (!path.startsWith(prefix)) return false;
  return path.length === prefix.length || prefix.endsWith("/") ||
    path.charCodeAt(prefix.length) === 47;
}

const UNRESERVED = /^[A-Za-z0-9\-._~]$/;

/**
 * The path routes match against: the target without its query, with percent-encoded
 * unreserved characters decoded, runs of slashes merged (as nginx's `merge_slashes`) and dot
 * segments removed (RFC 3986 §6.2.2), so `/%61pi`, `//api` and `/x/../api` cannot slip past
 * a route for `/api`. The target sent upstream is not changed.
 */
export function routingPath(target: string): string {
  const q = target.indexOf("?");
  let path = q === -1 ? target : target.slice(0, q);
  if (path.indexOf("%") === -1 && path.indexOf("/.") === -1 && path.indexOf("//") === -1) {
    return path;
  }
  path = path.replace(/%([0-9A-Fa-f]{2})/g, (m, hex) => {
    const c = String.fromCharCode(parseInt(hex, 16));
    return UNRESERVED.test(c) ? c : m.toUpperCase();
  });
  if (path.indexOf("//") !== -1) path = path.replace(/\/{2,}/g, "/");
  return removeDotSegments(path);
}

/** RFC 3986 §5.2.4. */
export function removeDotSegments(path: string): string {
  const out: string[] = [];
  const segments = path.split("/");
  for (let i = 1; i < segments.length; i++) {
    const s = segments[i];
    const last = i === segments.length - 1;
    if (s === ".") {
      if (last) out.push("");
    } else if (s === "..") {
      out.pop();
      if (last) out.push("");
    } else out.push(s);
  }
  return "/" + out.join("/");
}

/** The target a route sends upstream once `prefix` is stripped (`/v1/x?q` → `/x?q`, `/v1` → `/`). */
export function stripPrefix(target: string, prefix: string): string {
  const q = target.indexOf("?");
  const path = routingPath(target);
  let rest = path.slice(prefix.endsWith("/") ? prefix.length - 1 : prefix.length);
  if (rest === "" || rest.charCodeAt(0) !== 47) rest = "/" + rest;
  return q === -1 ? rest : rest + target.slice(q);
}
