/**
 * HTTP/2 to clients: one accepted connection (TLS that negotiated `h2` by ALPN, or plain with
 * the h2c prior-knowledge preface) served by Deno's built-in hyper server, each stream turned
 * into a plain request object for the proxy and each reply back into a `Response`.
 *
 * Built on `Deno[Deno.internal].serveHttpOnConnection` (Deno 2.9): the same code `Deno.serve`
 * runs per connection, so streams are served concurrently and flow control, HPACK and GOAWAY
 * are hyper's. `node:http2` is avoided on purpose: it crashed under light load in Deno 2.9.
 */

import { DENO_INTERNALS } from "../http1/direct_io.ts";
import { closeQuietly, pump, writeAll } from "../http1/io.ts";
import { isField } from "../http1/wire.ts";

/** The HTTP/2 connection preface a client sends first (RFC 9113 §3.4). */
export const H2_PREFACE: Uint8Array = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** One request stream, shaped like the HTTP/1.1 listener's `ClientRequest` plus `protocol`. */
export interface H2Request {
  readonly protocol: "HTTP/2";
  readonly method: string;
  /** Path and query as sent in `:path` (no normalisation). */
  readonly target: string;
  /** Always 1: an HTTP/2 request is forwarded upstream as HTTP/1.1. */
  readonly minor: 1;
  /** Header names, lower-case as HTTP/2 requires; `names` and `keys` are the same array. */
  readonly names: readonly string[];
  readonly keys: readonly string[];
  /** Values at the same index; repeats are joined (", ", or "; " for cookie, RFC 9113 §8.2.3). */
  readonly values: readonly string[];
  /** `:authority` (or the Host header when a client sent that instead). */
  readonly host: string | undefined;
  readonly absoluteForm: false;
  /** Content-Length when the client gave one, else -1. */
  readonly length: number;
  /** True when there is a body of unknown length: send it upstream chunked. */
  readonly chunked: boolean;
  readonly close: false;
  readonly expectContinue: false;
  /** The client's address and port. */
  readonly ip: string;
  readonly port: number;
  /** The address the client connected to, when known. */
  readonly local?: { readonly ip: string; readonly port: number };
  /** Arrived over TLS (h2 by ALPN); false for h2c. */
  readonly tls: boolean;
  /** The body, or null when the request has none (END_STREAM on its HEADERS). */
  body: ReadableStream<Uint8Array> | null;
  /** A header's value, undefined if absent; `key` lower-case. */
  header(key: string): string | undefined;
}

/** What the handler answers; the listener's HTTP/1.1 `Reply` fits (its `reason` is ignored). */
export interface H2Reply {
  status: number;
  /** Header fields; connection-specific ones (RFC 9113 §8.2.2) are dropped here. */
  headers: [string, string][];
  /** The Content-Length to send, or -1/undefined when unknown. @default -1 */
  length?: number;
  body: Uint8Array | ReadableStream<Uint8Array> | null;
  /** Called once the body bytes are copied or dropped (see `Reply.release`): when the `Response` is made. */
  release?: (() => void) | undefined;
  /** A backend connection to tunnel to: HTTP/2 cannot, so it is closed and the client gets 502. */
  tunnel?: { done(toBackend: number, toClient: number, error?: string): void } | undefined;
}

/** Answers one HTTP/2 request. */
export type H2Handler = (request: H2Request) => H2Reply | Promise<H2Reply>;

/** What {@linkcode serveHttp2} needs. */
export interface H2Options {
  handler: H2Handler;
  /** Told about a handler that threw (the client gets a 500 on that stream). */
  onError(err: unknown): void;
  /** The client's address when `conn.remoteAddr` is not it (a loopback bridge). @default conn.remoteAddr */
  client?: { ip: string; port: number };
  /** The address the client connected to, passed on as `H2Request.local`. @default unknown */
  local?: { readonly ip: string; readonly port: number };
  /** The connection is TLS (sets `H2Request.tls`). @default false */
  tls?: boolean;
}

/** One HTTP/2 connection being served. */
export interface H2Session {
  /** Resolves once the connection is closed. */
  readonly finished: Promise<void>;
  /** Sends GOAWAY, lets open streams finish, then closes. */
  shutdown(): Promise<void>;
  /** Closes the connection now, resetting open streams. */
  close(): void;
}

interface ServeInternals {
  serveHttpOnConnection(
    conn: Deno.Conn,
    signal: AbortSignal,
    handler: (request: Request) => Response | Promise<Response>,
    onError: (err: unknown) => Response | Promise<Response>,
    onListen: (scheme: string) => void,
  ): { finished: Promise<void>; shutdown(): Promise<void> };
}

const internals = DENO_INTERNALS as ServeInternals | undefined;

/** True when this Deno has the per-connection hyper server this module needs. */
export const HTTP2_AVAILABLE: boolean = typeof internals?.serveHttpOnConnection === "function";

/**
 * Headers HTTP/2 forbids in a message (RFC 9113 §8.2.2) plus Proxy-Connection; `te` is
 * allowed only as "trailers", which a response never needs.
 */
const CONNECTION_SPECIFIC = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
  "te",
]);

const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304]);

/**
 * Serves `conn` (already past its TLS handshake if any) as HTTP/2 — or as HTTP/1.1 through
 * Deno's own parser when it turns out not to start with the preface, so hand it only
 * connections that chose h2.
 */
export function serveHttp2(conn: Deno.Conn, options: H2Options): H2Session {
  if (!HTTP2_AVAILABLE) throw new Error("this Deno has no serveHttpOnConnection");
  const remote = conn.remoteAddr as Deno.NetAddr;
  const ip = options.client?.ip ?? remote.hostname;
  const port = options.client?.port ?? remote.port;
  const abort = new AbortController();
  const tls = options.tls ?? false;
  const local = options.local;
  const handle = async (request: Request): Promise<Response> => {
    const h2 = toH2Request(request, ip, port, tls, local);
    let reply: H2Reply;
    try {
      reply = await options.handler(h2);
    } catch (err) {
      options.onError(err);
      return new Response("Internal Server Error\n", { status: 500 });
    }
    if (reply.tunnel !== undefined) {
      // Only an HTTP/1.1 connection can become a tunnel (RFC 8441 is not spoken here).
      reply.tunnel.done(0, 0, "an HTTP/2 client cannot switch protocols");
      return new Response("Bad Gateway\n", { status: 502 });
    }
    try {
      return toResponse(reply, request.method);
    } catch (err) {
      // A backend header value or status hyper cannot carry: the client gets a clean 502.
      if (reply.body instanceof ReadableStream) reply.body.cancel().catch(() => {});
      options.onError(err);
      return new Response("Bad Gateway\n", { status: 502 });
    } finally {
      reply.release?.();
    }
  };
  const server = internals!.serveHttpOnConnection(
    conn,
    abort.signal,
    handle,
    (err) => {
      options.onError(err);
      return new Response("Internal Server Error\n", { status: 500 });
    },
    () => {},
  );
  let done = false;
  const finished = server.finished.catch(() => {}).finally(() => {
    done = true;
    closeQuietly(conn);
  });
  return {
    finished,
    shutdown: () => done ? finished : server.shutdown().catch(() => {}).then(() => finished),
    close() {
      // Aborting once Deno closed the server's resource throws from inside Deno's own abort
      // listener (BadResource, uncatchable here). It closes it a few microtasks before
      // `finished` settles, so look again after them.
      setTimeout(() => {
        if (!done && !abort.signal.aborted) abort.abort();
      }, 0);
    },
  };
}

/** The request as the proxy takes it: names lower-case, target as sent, body as a stream. */
export function toH2Request(
  request: Request,
  ip: string,
  port: number,
  tls = false,
  local?: { readonly ip: string; readonly port: number },
): H2Request {
  const url = request.url;
  // "scheme://authority/path?query": Deno keeps :path as sent, so slice rather than parse.
  const slash = url.indexOf("/", url.indexOf("//") + 2);
  const target = slash === -1 ? "/" : url.slice(slash);
  const authority = url.slice(url.indexOf("//") + 2, slash === -1 ? url.length : slash);
  const keys: string[] = [];
  const values: string[] = [];
  let host: string | undefined;
  let length = -1;
  for (const [key, value] of request.headers) {
    if (key === "host") {
      host = value;
      continue; // HTTP/1.1 upstream gets one Host line, from :authority
    }
    if (key === "content-length") length = Number(value);
    keys.push(key);
    values.push(value);
  }
  const body = request.body;
  return {
    protocol: "HTTP/2",
    method: request.method,
    target,
    minor: 1,
    names: keys,
    keys,
    values,
    host: authority || host,
    absoluteForm: false,
    length: body === null ? -1 : length,
    chunked: body !== null && length < 0,
    close: false,
    expectContinue: false,
    ip,
    port,
    local,
    tls,
    body,
    header(key: string): string | undefined {
      if (key === "host") return this.host;
      const i = keys.indexOf(key);
      return i === -1 ? undefined : values[i];
    },
  };
}

/**
 * The reply as a `Response` for hyper: connection-specific headers (and those `Connection`
 * names) dropped, Content-Length from `length` kept, no body for HEAD/204/304.
 */
export function toResponse(reply: H2Reply, method: string): Response {
  let body = reply.body;
  if (method === "HEAD" || NULL_BODY_STATUS.has(reply.status)) {
    if (body instanceof ReadableStream) body.cancel().catch(() => {});
    body = null;
  }
  // A Uint8Array body is copied by the Response constructor (Fetch: "a copy of the bytes"), so
  // lent bytes may be released as soon as this returns.
  const response = new Response(body as BodyInit | null, { status: reply.status });
  // Appended to the Response's own headers: a Headers object given to the constructor is read
  // back through its iterator (sorted and combined) and every field validated a second time.
  const headers = response.headers;
  const fields = reply.headers;
  let named: Set<string> | undefined;
  for (let i = 0; i < fields.length; i++) {
    const name = fields[i][0];
    if (isField(name, "connection")) {
      for (const token of fields[i][1].split(",")) {
        (named ??= new Set()).add(token.trim().toLowerCase());
      }
    }
  }
  let hasLength = false;
  for (let i = 0; i < fields.length; i++) {
    const key = fields[i][0].toLowerCase();
    if (CONNECTION_SPECIFIC.has(key) || named?.has(key)) continue;
    if (key === "content-length") hasLength = true;
    headers.append(key, fields[i][1]);
  }
  const length = reply.length ?? -1;
  if (length >= 0 && !hasLength) headers.set("content-length", String(length));
  return response;
}

/**
 * Where `buf[start, end)` stands against the h2c preface: "h2" when it starts with it, "http1"
 * when it cannot, "more" when it is a prefix of it so far.
 */
export function detectPreface(
  buf: Uint8Array,
  start: number,
  end: number,
): "h2" | "http1" | "more" {
  const n = Math.min(end - start, H2_PREFACE.length);
  for (let i = 0; i < n; i++) if (buf[start + i] !== H2_PREFACE[i]) return "http1";
  return n === H2_PREFACE.length ? "h2" : "more";
}

/** Per-connection settings of {@linkcode H2cBridge.serve}. */
export interface H2cServeOptions {
  /** The client's address, when not `conn`'s peer (a PROXY header's source). */
  client?: { ip: string; port: number };
  /** The address the client connected to. */
  local?: { readonly ip: string; readonly port: number };
  /** This connection's handler. @default the bridge's */
  handler?: H2Handler;
}

/** A loopback hop into the hyper server for h2c connections whose first bytes we already read. */
export interface H2cBridge {
  /**
   * Serves `conn` (whose first bytes, at least the preface, are `consumed`) as HTTP/2 by
   * pumping it into an internal loopback connection that hyper serves.
   */
  serve(conn: Deno.Conn, consumed: Uint8Array, options?: H2cServeOptions): H2Session;
  /** Closes the internal listener (open bridged connections go on). */
  close(): void;
}

/**
 * Makes the h2c bridge for a plain listener: an internal listener on 127.0.0.1 (random port),
 * each bridged client paired with its loopback connection by port so the handler sees the real
 * client address. Costs two extra socket hops per byte, so only h2c connections take it.
 */
export function openH2cBridge(options: Omit<H2Options, "client">): H2cBridge {
  const internal = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const waiting = new Map<number, (inner: Deno.Conn) => void>();
  const early = new Map<number, Deno.Conn>();
  (async () => {
    for (;;) {
      let inner: Deno.Conn;
      try {
        inner = await internal.accept();
      } catch {
        return;
      }
      const key = (inner.remoteAddr as Deno.NetAddr).port;
      const take = waiting.get(key);
      if (take) {
        waiting.delete(key);
        take(inner);
      } else early.set(key, inner);
    }
  })();
  const address = internal.addr as Deno.NetAddr;
  return {
    serve(conn, consumed, own = {}) {
      const remote = own.client ? undefined : conn.remoteAddr as Deno.NetAddr;
      const client = own.client ?? { ip: remote!.hostname, port: remote!.port };
      const { local, handler = options.handler } = own;
      let session: H2Session | undefined;
      let closed = false;
      const finished = (async () => {
        const outer = await Deno.connect({ hostname: "127.0.0.1", port: address.port });
        outer.setNoDelay(true);
        const key = (outer.localAddr as Deno.NetAddr).port;
        const inner = early.get(key) ?? await new Promise<Deno.Conn>((resolve) => {
          waiting.set(key, resolve);
        });
        early.delete(key);
        (inner as Deno.TcpConn).setNoDelay(true);
        session = serveHttp2(inner, { ...options, handler, client, local });
        if (closed) session.close();
        await writeAll(outer, consumed);
        await Promise.all([pump(conn, outer), pump(outer, conn), session.finished]);
      })().catch(() => {}).finally(() => {
        closeQuietly(conn);
      });
      return {
        finished,
        shutdown: async () => {
          await session?.shutdown();
          await finished;
        },
        close() {
          closed = true;
          session?.close();
          closeQuietly(conn);
        },
      };
    },
    close: () => closeQuietly(internal),
  };
}
