/**
 * Helpers for the strategy, failover and resilience tests: controllable backends that
 * name themselves in every answer, count real (non-health) requests, can hold responses
 * open, answer with a chosen status or delay, and restart on the same port; a small
 * concurrent load generator; and a Pool built directly for pure strategy tests.
 */
import type { BackendConfig } from "../lib/config.ts";
import { type Backend, Pool } from "../lib/pool.ts";
import { SharedCounters } from "../lib/shared.ts";
import type { SelectContext } from "../lib/select/types.ts";
import { clientRequest, rawServer, startTestBalancer, type TestBalancer } from "./helpers.ts";

/** A backend under the test's control. */
export interface TestBackend {
  readonly name: string;
  readonly port: number;
  readonly url: string;
  /** Requests other than health probes, by arrival order: "METHOD /path". */
  readonly seen: string[];
  /** Requests other than health probes answered or held so far. */
  readonly hits: number;
  /** Health probes received. */
  readonly probes: number;
  /** What /health answers: 200 when true, 503 when false. */
  healthy: boolean;
  /** Status of every other answer. */
  status: number;
  /** Delay before every other answer (ms). */
  delay: number;
  /** Requests to a path starting with /hold wait until {@linkcode TestBackend.release}. */
  readonly held: number;
  /** Answers every held request. */
  release(): void;
  /** Stops the server (releasing held requests first); resolves once it is closed. */
  stop(): Promise<void>;
  /** Starts again on the same port after {@linkcode TestBackend.stop}. */
  restart(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Starts a named backend on 127.0.0.1 (port 0 picks a free one). Answers its name as the body. */
export async function startTestBackend(
  name: string,
  options: { port?: number; status?: number; delay?: number } = {},
): Promise<TestBackend> {
  let server: Deno.HttpServer<Deno.NetAddr> | undefined;
  let port = options.port ?? 0;
  let hits = 0;
  let probes = 0;
  const seen: string[] = [];
  let waiting: (() => void)[] = [];

  const handler = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    if (url.pathname === "/health") {
      probes++;
      return new Response(backend.healthy ? "ok" : "unhealthy", {
        status: backend.healthy ? 200 : 503,
      });
    }
    hits++;
    seen.push(`${req.method} ${url.pathname}`);
    const body = req.body ? await req.text() : "";
    if (url.pathname.startsWith("/hold")) {
      await new Promise<void>((resolve) => waiting.push(resolve));
    }
    if (backend.delay > 0) await new Promise((r) => setTimeout(r, backend.delay));
    return new Response(body ? `${name} ${body}` : name, {
      status: backend.status,
      headers: { "x-backend": name },
    });
  };

  const listen = () => {
    const { promise, resolve } = Promise.withResolvers<void>();
    server = Deno.serve({
      hostname: "127.0.0.1",
      port,
      onListen(addr) {
        port = addr.port;
        resolve();
      },
    }, handler);
    return promise;
  };

  const backend: TestBackend = {
    name,
    get port() {
      return port;
    },
    get url() {
      return `http://127.0.0.1:${port}`;
    },
    seen,
    get hits() {
      return hits;
    },
    get probes() {
      return probes;
    },
    healthy: true,
    status: options.status ?? 200,
    delay: options.delay ?? 0,
    get held() {
      return waiting.length;
    },
    release() {
      const list = waiting;
      waiting = [];
      for (const resolve of list) resolve();
    },
    async stop() {
      backend.release();
      const s = server;
      server = undefined;
      await s?.shutdown();
    },
    async restart() {
      if (server) throw new Error(`${name} is already running`);
      await listen();
    },
    [Symbol.asyncDispose]() {
      return backend.stop();
    },
  };
  await listen();
  return backend;
}

/** Starts one backend per name. */
export function startTestBackends(
  names: string[],
  options: { status?: number; delay?: number } = {},
): Promise<TestBackend[]> {
  return Promise.all(names.map((n) => startTestBackend(n, options)));
}

/** Stops every backend in the list. */
export async function stopAll(backends: TestBackend[]): Promise<void> {
  await Promise.all(backends.map((b) => b.stop()));
}

/** Config entries for backends, named after them. */
export function entries(
  backends: TestBackend[],
  extra: (b: TestBackend, i: number) => Record<string, unknown> = () => ({}),
): Record<string, unknown>[] {
  return backends.map((b, i) => ({ url: b.url, name: b.name, ...extra(b, i) }));
}

/** One GET (or other request): the status, the answering backend's name and body, fully read. */
export async function hit(
  url: string,
  init?: RequestInit,
): Promise<{ status: number; backend: string | null; body: string; headers: Headers }> {
  const res = await fetch(url, init);
  const body = await res.text();
  return { status: res.status, backend: res.headers.get("x-backend"), body, headers: res.headers };
}

/** Sends `n` GETs one after another; returns the answering backend of each. */
export async function sequence(url: string, n: number, init?: RequestInit): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await hit(url, init);
    if (r.status !== 200) throw new Error(`request ${i} got ${r.status}: ${r.body}`);
    out.push(r.backend ?? "?");
  }
  return out;
}

/** Counts occurrences of each value. */
export function tally(values: Iterable<string>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[v] = (out[v] ?? 0) + 1;
  return out;
}

/** Result of a load run. */
export interface LoadResult {
  /** Answers by backend name. */
  byBackend: Record<string, number>;
  /** Requests that got no 200 answer, with what they got instead. */
  failures: string[];
  total: number;
}

/**
 * Runs `clients` concurrent request loops against `url` until `stop()` returns true or
 * `maxMs` passes (bounded in time), or `maxRequests` were sent (bounded in count).
 * `onAnswer` sees each answer's backend name as it arrives.
 */
export async function runLoad(
  url: string,
  options: {
    clients: number;
    maxMs: number;
    maxRequests?: number;
    stop?: () => boolean;
    onAnswer?: (backend: string) => void;
    /** Pause between one client's requests (ms), to keep the load gentle. */
    pauseMs?: number;
  },
): Promise<LoadResult> {
  const result: LoadResult = { byBackend: {}, failures: [], total: 0 };
  const deadline = Date.now() + options.maxMs;
  const maxRequests = options.maxRequests ?? Infinity;
  const loop = async () => {
    while (Date.now() < deadline && result.total < maxRequests && !options.stop?.()) {
      result.total++;
      try {
        const r = await hit(url);
        if (r.status !== 200) {
          result.failures.push(`status ${r.status}: ${r.body.slice(0, 80)}`);
          continue;
        }
        const name = r.backend ?? "?";
        result.byBackend[name] = (result.byBackend[name] ?? 0) + 1;
        options.onAnswer?.(name);
      } catch (err) {
        result.failures.push(String(err));
      }
      if (options.pauseMs) await new Promise((r) => setTimeout(r, options.pauseMs));
    }
  };
  await Promise.all(Array.from({ length: options.clients }, loop));
  return result;
}

/** A pool built directly (a real object, no sockets until a request is sent), for strategy unit tests. */
export function poolOf(
  spec: { name: string; weight?: number }[],
  slowStart = 0,
): { pool: Pool; byName: Record<string, Backend> } {
  const counters = new SharedCounters();
  const pool = new Pool(
    "test",
    { maxConnections: Infinity, idleTimeout: 1_000, connectTimeout: 1_000 },
    counters,
    counters.allocatePool(),
  );
  pool.slowStart = slowStart;
  const byName: Record<string, Backend> = {};
  spec.forEach((s, i) => {
    const entry: BackendConfig = {
      url: `http://127.0.0.1:${20_000 + i}`,
      name: s.name,
      weight: s.weight ?? 1,
    };
    // Tests that do not look at slow start start them long ago.
    byName[s.name] = pool.add(entry, { started: true });
  });
  return { pool, byName };
}

/** A selection context for a GET of `target` from `ip` with `headers`. */
export function ctxOf(
  target = "/",
  options: { ip?: string; headers?: Record<string, string> } = {},
): SelectContext {
  const fields = Object.entries(options.headers ?? {}).map(([k, v]) => `${k}: ${v}\r\n`).join("");
  return {
    request: clientRequest(`GET ${target} HTTP/1.1\r\nHost: sluice.test\r\n${fields}\r\n`),
    ip: options.ip ?? "127.0.0.1",
    target,
  };
}

/** The first candidate's name for each of `n` selections. */
export function picks(
  select: { candidates(ctx: SelectContext): Iterable<Backend> },
  n: number,
  ctx: SelectContext = ctxOf(),
): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const first = select.candidates(ctx)[Symbol.iterator]().next();
    out.push(first.done ? "-" : first.value.id);
  }
  return out;
}

/** Sets a backend's health and recomputes its state, as the health checker would. */
export function setHealthy(pool: Pool, b: Backend, healthy: boolean): void {
  pool.setHealth(b, healthy, healthy ? "health check passed" : "health check failed");
}

/** Sets a backend's in-flight count (shared counter) as if `n` requests were running. */
export function setInflight(b: Backend, n: number): void {
  while (b.inflight < n) b.tryAcquire();
  while (b.inflight > n) b.release();
}

/** A request a {@linkcode dropServer} received before it dropped the connection. */
export interface Dropped {
  method: string;
  target: string;
  /** Body bytes read before closing. */
  bodyLength: number;
}

/**
 * A raw backend that answers `GET /health` with 200 but reads every other request
 * (head and whole Content-Length body, unless `readBody` is false) and then closes the
 * connection without a response, as a backend that crashes mid-request would.
 * `received` is its own record.
 */
export function dropServer(
  options: { readBody?: boolean } = {},
): { port: number; url: string; received: Dropped[]; close(): void } {
  const readBody = options.readBody ?? true;
  const received: Dropped[] = [];
  const encoder = new TextEncoder();
  const server = rawServer(async (conn) => {
    const buf = new Uint8Array(256 * 1024);
    let len = 0;
    let headEnd = -1;
    while (headEnd === -1) {
      const n = await conn.read(buf.subarray(len));
      if (n === null) return;
      len += n;
      headEnd = new TextDecoder().decode(buf.subarray(0, len)).indexOf("\r\n\r\n");
    }
    const head = new TextDecoder().decode(buf.subarray(0, headEnd));
    const [method, target] = head.split(" ");
    if (method === "GET" && target === "/health") {
      await conn.write(
        encoder.encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"),
      );
      return;
    }
    const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
    let body = len - (headEnd + 4);
    while (readBody && body < length) {
      const n = await conn.read(buf);
      if (n === null) break;
      body += n;
    }
    received.push({ method, target, bodyLength: body });
    // Returning closes the connection: no response at all.
  });
  return { ...server, received };
}

/**
 * {@linkcode startTestBalancer} with health probes on `/health` (which test backends
 * answer apart from their configured status), so a backend told to fail its traffic
 * is not also marked down by the first probe.
 */
export function startBalancer(raw: Record<string, unknown>): Promise<TestBalancer> {
  return startTestBalancer({
    ...raw,
    health: { path: "/health", ...(raw.health as Record<string, unknown> ?? {}) },
  });
}
