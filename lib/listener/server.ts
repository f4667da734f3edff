/**
 * The client-facing server: HTTP/1.1 over plain TCP or TLS (keep-alive, pipelining answered in
 * order, strict request parsing within configurable limits, slow-client timeouts, graceful
 * drain, the PROXY protocol behind a TCP proxy), HTTP/2 by ALPN on TLS and by prior knowledge
 * (h2c) on plain listeners that enable it, and byte tunnels for upgraded connections
 * (WebSocket and any other `Upgrade` a backend accepts with `101`). HTTP/1.1 headers pass
 * through as sent (case, order, repeats) and the backend's reason phrase reaches the client.
 */
import { MATCH_NONE } from "../cidr.ts";
import {
  BodyCutShort,
  BodyTooLarge,
  Connection,
  FramedBody,
  HeadTooLarge,
  isPieceStream,
  markPieceStream,
  recyclePiece,
} from "../http1/connection.ts";
import { Deadline } from "../http1/deadlines.ts";
import { closeQuietly } from "../http1/io.ts";
import { formatHost } from "../net.ts";
import { type Endpoint, parseProxyHeader } from "../http1/proxy_protocol.ts";
import { Relay, type TunnelEnd } from "../http1/tunnel.ts";
import { findHeadEnd, latin1Bytes, ParseError } from "../http1/wire.ts";
import {
  type ClientRequest,
  REASONS,
  type Reply,
  textReply,
  type TrailedStream,
  type Tunnel,
} from "../message.ts";
import type { LoadedCertificate } from "../tls/certificates.ts";
import { type AcceptedTls, handshake, openTlsListener, type TlsListener } from "../tls/listener.ts";
import {
  detectPreface,
  type H2cBridge,
  type H2Session,
  HTTP2_AVAILABLE,
  openH2cBridge,
  serveHttp2,
} from "./h2.ts";
import { DEFAULT_LIMITS, parseRequestHead, RequestError, type RequestLimits } from "./request.ts";

export { BodyTooLarge, DEFAULT_LIMITS, type RequestLimits };

export type { ClientRequest, Reply };
export { textReply };

/** Answers one request (a front end's request: HTTP/1.x, or HTTP/2 with `protocol`). */
export type Handler = (request: ClientRequest) => Reply | Promise<Reply>;

/** Client-side timeouts, ms; read at each use, so a reload applies to open connections too. */
export interface ClientTimeouts {
  /** From the first byte of a request head to its end. */
  header: number;
  /** An idle keep-alive connection waiting for its next request. */
  idle: number;
  /** A request in progress: the longest wait for more of its body, or for the client to take more of the response. */
  client: number;
  /** An upgraded connection (tunnel) with no byte either way; a tunnel open has no other limit. @default 3600000 */
  tunnel?: number;
}

/** TLS termination settings of a listener. */
export interface ServeTls {
  /** Loaded certificates (lib/tls/certificates.ts); chosen by SNI, the first is the default. */
  certificates: readonly LoadedCertificate[];
  /** Lowest TLS version accepted ("1.3" costs a ClientHello-reading front). @default "1.2" */
  minVersion?: "1.2" | "1.3";
  /** Force the TLS listener's mode (see lib/tls/listener.ts). @default by minVersion and proxyProtocol */
  mode?: "native" | "front";
}

/** How to listen and what to call. */
export interface ServeOptions {
  hostname: string;
  port: number;
  /** Share the port with other listeners (worker threads); needs `--unstable-net`. @default false */
  reusePort?: boolean;
  timeouts: ClientTimeouts;
  /** Request size limits, read per request (like `timeouts`). @default DEFAULT_LIMITS */
  limits?: RequestLimits;
  /**
   * Require a PROXY protocol header (v1 or v2) before HTTP on every connection, from peers
   * `trusted` accepts (others are closed at once); its source becomes the client's address
   * (`ClientRequest.ip`/`port`), its destination `ClientRequest.local`. Read per connection.
   * @default false
   */
  proxyProtocol?: boolean;
  /** The trusted proxies (`cidrMatcher(trustedProxies)`). @default nobody */
  trusted?: (ip: string) => boolean;
  /** Terminate TLS with these settings. @default plain TCP */
  tls?: ServeTls;
  /**
   * Serve HTTP/2 too: `h2` offered by ALPN next to `http/1.1` on TLS; on plain TCP, a
   * connection that starts with the HTTP/2 preface (prior knowledge, h2c) is served as HTTP/2.
   * @default false
   */
  http2?: boolean;
  handler: Handler;
  /** Told about a handler that threw (the client gets a 500) or a failed accept. */
  onError(err: unknown): void;
}

/** A running server. */
export interface Server {
  readonly addr: Deno.NetAddr;
  /** Client connections open now (HTTP/1.x, HTTP/2 and TLS handshakes in progress). */
  readonly connections: number;
  /** Tunnels (upgraded connections) open now. */
  readonly tunnels: number;
  /** The TLS listener (certificate reloads, TCP_NODELAY state), undefined on plain TCP. */
  readonly tls: TlsListener | undefined;
  /** Whether HTTP/2 is served (h2 by ALPN, or h2c). */
  readonly http2: boolean;
  /** Answers every request; read per request, so a reload may replace it. */
  handler: Handler;
  timeouts: ClientTimeouts;
  /** Read per request: a reload may replace it. */
  limits: RequestLimits;
  /** Read per new connection: a reload may change them. */
  proxyProtocol: boolean;
  trusted: (ip: string) => boolean;
  /** Resolves once the server has stopped and every connection is closed. */
  readonly finished: Promise<void>;
  /** Stops accepting, closes idle connections and resolves once the others have finished. */
  shutdown(): Promise<void>;
  /** Closes every connection now. */
  close(): void;
}

/**
 * Answers every request with `308 Permanent Redirect` to the same target over HTTPS on `port`
 * of the host the client asked for (`redirectHttps`); the default port 443 is left out.
 */
export function httpsRedirect(port: number): Handler {
  const suffix = port === 443 ? "" : ":" + port;
  return (req) => {
    req.body?.cancel().catch(() => {});
    const host = req.host !== undefined
      ? hostOf(req.host)
      : req.local !== undefined
      ? formatHost(req.local.ip)
      : "localhost";
    const location = "https://" + host + suffix + (req.target === "*" ? "/" : req.target);
    const reply = textReply(308, `Redirecting to ${location}\n`);
    reply.headers.push(["location", location]);
    return reply;
  };
}

/** `host` without its port: `example.com`, `[::1]`. */
function hostOf(authority: string): string {
  if (authority.startsWith("[")) return authority.slice(0, authority.indexOf("]") + 1);
  const colon = authority.indexOf(":");
  return colon === -1 ? authority : authority.slice(0, colon);
}

/** What an idle client connection's read buffer keeps: most request heads fit (else one more read). */
const IDLE_BUFFER = 1024;
const CONTINUE = new TextEncoder().encode("HTTP/1.1 100 Continue\r\n\r\n");
/** How long a closing connection keeps reading what the client still sends, so it sees our last response. */
const LINGER = 2_000;
/** `timeouts.tunnel` when unset. */
const TUNNEL_TIMEOUT = 3_600_000;

/** Starts the server, listening at once. */
export function serve(options: ServeOptions): Server {
  const http2 = (options.http2 ?? false) && HTTP2_AVAILABLE;
  const secure = options.tls;
  const tcp = secure ? undefined : Deno.listen({
    hostname: options.hostname,
    port: options.port,
    ...(options.reusePort ? { reusePort: true } : {}),
  });
  const sessions = new Set<Session>();
  /** HTTP/2 connections (h2 by ALPN, or h2c through the bridge). */
  const h2 = new Set<H2Conn>();
  /** TLS connections still in their handshake. */
  const handshaking = new Set<Deno.TlsConn>();
  let tunnels = 0;
  let draining = false;
  let closed: () => void;
  const finished = new Promise<void>((resolve) => closed = resolve);
  let accepting = true;
  let bridge: H2cBridge | undefined;
  let tls: TlsListener | undefined;
  const server: Server = {
    addr: undefined as unknown as Deno.NetAddr,
    get connections() {
      return sessions.size + h2.size + handshaking.size;
    },
    get tunnels() {
      return tunnels;
    },
    get tls() {
      return tls;
    },
    http2,
    get handler() {
      return context.handler;
    },
    set handler(handler: Handler) {
      context.handler = handler;
    },
    timeouts: options.timeouts,
    limits: options.limits ?? { ...DEFAULT_LIMITS },
    proxyProtocol: options.proxyProtocol ?? false,
    trusted: options.trusted ?? MATCH_NONE,
    finished,
    shutdown() {
      stopAccepting();
      draining = true;
      for (const s of sessions) if (s.waiting === "idle") s.conn.close();
      for (const c of handshaking) closeQuietly(c);
      for (const c of h2) c.shutdown();
      return settle();
    },
    close() {
      stopAccepting();
      draining = true;
      for (const s of sessions) s.closeNow();
      for (const c of handshaking) closeQuietly(c);
      for (const c of h2) c.session.close();
    },
  };
  const stopAccepting = () => {
    if (!accepting) return;
    accepting = false;
    if (tcp) closeQuietly(tcp);
    tls?.close();
    bridge?.close();
  };
  const settle = (): Promise<void> => {
    if (sessions.size === 0 && h2.size === 0 && handshaking.size === 0 && !accepting) closed();
    return finished;
  };
  const context: SessionContext = {
    server,
    handler: options.handler,
    onError: options.onError,
    h2c: http2 && !secure,
    get draining() {
      return draining;
    },
    tunnel(delta: number) {
      tunnels += delta;
    },
    ended(session) {
      sessions.delete(session);
      if (!accepting) settle();
    },
    serveH2c(conn, consumed, client, local) {
      bridge ??= openH2cBridge({
        handler: (req) => context.handler(req),
        onError: options.onError,
      });
      const c = new H2Conn(context);
      track(c, bridge.serve(conn, consumed, { client, local, handler: c.handler }));
    },
  };
  /** Counts an HTTP/2 connection until it ends. */
  const track = (c: H2Conn, session: H2Session) => {
    c.start(session);
    h2.add(c);
    session.finished.finally(() => {
      c.idle.disarm();
      h2.delete(c);
      if (!accepting) settle();
    });
  };
  const start = (session: Session) => {
    sessions.add(session);
    session.run();
  };
  /** A TLS connection: its handshake, then HTTP/2 or HTTP/1.1 as ALPN chose. */
  const serveTls = async (accepted: AcceptedTls) => {
    const { conn, remoteAddr } = accepted;
    handshaking.add(conn);
    let protocol: string | null;
    try {
      protocol = await handshake(conn, server.timeouts.header);
    } catch {
      return; // handshake() closed it
    } finally {
      handshaking.delete(conn);
      if (!accepting) settle();
    }
    if (!accepting && draining) {
      closeQuietly(conn);
      return;
    }
    const local: Endpoint = accepted.local ?? new LocalAddress(conn);
    if (protocol === "h2" && http2) {
      const c = new H2Conn(context);
      track(
        c,
        serveHttp2(conn, {
          handler: c.handler,
          onError: options.onError,
          client: { ip: remoteAddr.hostname, port: remoteAddr.port },
          local: { ip: local.ip, port: local.port },
          tls: true,
        }),
      );
      return;
    }
    start(new Session(conn, remoteAddr.hostname, remoteAddr.port, local, context, true));
  };

  if (secure) {
    tls = openTlsListener({
      hostname: options.hostname,
      port: options.port,
      certificates: secure.certificates,
      alpnProtocols: http2 ? ["h2", "http/1.1"] : ["http/1.1"],
      minVersion: secure.minVersion,
      mode: secure.mode,
      reusePort: options.reusePort,
      helloTimeout: options.timeouts.header,
      proxyProtocol: options.proxyProtocol
        ? { enabled: () => server.proxyProtocol, trusted: (ip) => server.trusted(ip) }
        : undefined,
      onError: options.onError,
    });
    (server as { addr: Deno.NetAddr }).addr = tls.addr;
    const listener = tls;
    (async () => {
      while (accepting) {
        let accepted: AcceptedTls;
        try {
          accepted = await listener.accept();
        } catch {
          break; // closed
        }
        serveTls(accepted);
      }
      settle();
    })();
    return server;
  }

  const listener = tcp!;
  (server as { addr: Deno.NetAddr }).addr = listener.addr as Deno.NetAddr;
  (async () => {
    while (accepting) {
      let raw: Deno.TcpConn;
      try {
        raw = await listener.accept();
      } catch (err) {
        if (!accepting) break;
        // A client that hung up before we got to it (its address can no longer be read): not
        // the listener's trouble, and no reason to pause.
        if (
          err instanceof Deno.errors.NotConnected || err instanceof Deno.errors.ConnectionReset ||
          err instanceof Deno.errors.ConnectionAborted
        ) continue;
        // Out of file descriptors and the like: keep serving the connections we have.
        options.onError(err);
        await new Promise((resolve) => setTimeout(resolve, 100));
        continue;
      }
      let session: Session;
      try {
        raw.setNoDelay(true);
        const addr = raw.remoteAddr as Deno.NetAddr;
        session = new Session(raw, addr.hostname, addr.port, new LocalAddress(raw), context, false);
      } catch {
        // Reset before we got to it.
        closeQuietly(raw);
        continue;
      }
      start(session);
    }
    settle();
  })();
  return server;
}

interface SessionContext {
  readonly server: Server;
  /** The handler in force (a reload may replace it). */
  handler: Handler;
  readonly draining: boolean;
  /** Plain TCP with HTTP/2: look for the h2c preface on each new connection. */
  readonly h2c: boolean;
  onError(err: unknown): void;
  /** A tunnel opened (+1) or closed (-1). */
  tunnel(delta: number): void;
  /** Serves a connection that began with the h2c preface (`consumed`: the bytes read so far). */
  serveH2c(conn: Deno.Conn, consumed: Uint8Array, client: Endpoint, local: Endpoint): void;
  /** A session is over (its run() calls this last: no closure per session). */
  ended(session: Session): void;
}

const shutdownH2 = (c: H2Conn) => c.shutdown();

/**
 * One HTTP/2 connection: its streams counted, so it can be closed once idle for
 * `timeouts.idle` (GOAWAY, then the close once open streams are through). One that never
 * opened a stream (a client that sent no preface, say) is closed outright: hyper's graceful
 * shutdown would wait for its preface forever.
 */
class H2Conn {
  session!: H2Session;
  readonly idle: Deadline<H2Conn>;
  #active = 0;
  #streams = 0;

  constructor(readonly context: SessionContext) {
    this.idle = new Deadline<H2Conn>(shutdownH2, this);
  }

  start(session: H2Session): void {
    this.session = session;
    this.idle.arm(this.context.server.timeouts.idle);
  }

  /** Serves one stream through the server's handler, keeping count. */
  handler = async (req: ClientRequest): Promise<Reply> => {
    this.#active++;
    this.#streams++;
    this.idle.disarm();
    try {
      return limitH2(req, this.context.server.limits) ?? await this.context.handler(req);
    } finally {
      if (--this.#active === 0 && !this.context.draining) {
        this.idle.arm(this.context.server.timeouts.idle);
      }
    }
  };

  /** Asks the client to go (GOAWAY) and closes once its streams are through. */
  shutdown(): void {
    if (this.#streams === 0) this.session.close();
    else this.session.shutdown();
  }
}

/**
 * Holds an HTTP/2 request to the limits HTTP/1.1 requests meet (hyper has its own, looser
 * ones): 414 for a long target, 431 for too many or too large header fields, 413 for a declared
 * length over `maxBodySize`; a body of unknown length is cut off with `BodyTooLarge` past it.
 * Undefined when the request may go on.
 */
function limitH2(req: ClientRequest, limits: RequestLimits): Reply | undefined {
  let refused: Reply | undefined;
  const { keys, values } = req;
  let size = req.method.length + req.target.length + 14;
  for (let i = 0; i < keys.length; i++) size += keys[i].length + values[i].length + 4;
  if (req.target.length > limits.maxUriLength) {
    refused = textReply(414, `request target longer than ${limits.maxUriLength} bytes\n`);
  } else if (keys.length > limits.maxHeaders) {
    refused = textReply(431, `more than ${limits.maxHeaders} header fields\n`);
  } else if (size > limits.maxHeaderBytes) {
    refused = textReply(431, `request head larger than ${limits.maxHeaderBytes} bytes\n`);
  } else if (req.length > limits.maxBodySize) {
    refused = textReply(413, `request body larger than ${limits.maxBodySize} bytes\n`);
  }
  if (refused) {
    req.body?.cancel().catch(() => {});
    return refused;
  }
  const max = limits.maxBodySize;
  if (req.body !== null && req.length < 0 && max !== Infinity) {
    let seen = 0;
    req.body = req.body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          seen += chunk.length;
          if (seen > max) controller.error(new BodyTooLarge(max));
          else controller.enqueue(chunk);
        },
      }),
    );
  }
  return undefined;
}

/** The address a client connected to, read from the socket only if someone asks. */
class LocalAddress implements Endpoint {
  #addr: Deno.NetAddr | undefined;
  constructor(readonly raw: Deno.Conn) {}
  get ip(): string {
    return (this.#addr ??= this.raw.localAddr as Deno.NetAddr).hostname;
  }
  get port(): number {
    return (this.#addr ??= this.raw.localAddr as Deno.NetAddr).port;
  }
}

/** One client connection, serving its requests one after another. */
class Session {
  readonly conn: Connection;
  /** What the connection's deadline is timing, if anything ("proxy": the PROXY header). */
  waiting: "proxy" | "idle" | "head" | "body" | "send" | "tunnel" | undefined;
  /** The head being read has a request-target within `maxUriLength` (checked once per head). */
  #targetChecked = false;
  /** The 408 being sent after a timeout; the connection closes once it is out. */
  #timedOut: Promise<void> | undefined;
  /** A response head has been written for the current request. */
  responded = false;
  /** The connection went to another server (h2c): it is not this session's to close. */
  #handedOff = false;
  /** The tunnel this connection became, while it lasts. */
  #relay: Relay | undefined;
  #tunnel: Tunnel | undefined;

  /**
   * `ip`/`port`: the client's address (the PROXY header's source may replace it); `local`: the
   * address it connected to; `tls`: the connection is TLS (requests are marked so).
   */
  constructor(
    raw: Deno.Conn,
    public ip: string,
    public port: number,
    public local: Endpoint,
    readonly context: SessionContext,
    readonly tls: boolean,
  ) {
    // Small: most heads fit, and idle keep-alive connections are many (bodies bypass it).
    this.conn = new Connection(raw, this.#expired, 4 * 1024, IDLE_BUFFER);
  }

  #expired = (): void => {
    const conn = this.conn;
    if (this.waiting === "head" || this.waiting === "body") {
      // The client still owes us its request: say why it is cut off.
      this.#timedOut = conn.write(refusal(408, "request not received in time"))
        .catch(() => {}).finally(() => conn.close());
    } else if (this.waiting === "tunnel" && this.#relay) {
      const idle = this.context.server.timeouts.tunnel ?? TUNNEL_TIMEOUT;
      this.#relay.abort(`tunnel idle for ${idle}ms (timeouts.tunnel)`);
    } else conn.close();
  };

  /** Closes the connection now; a tunnel is finished at once (its request is recorded now). */
  closeNow(): void {
    const relay = this.#relay;
    if (relay) {
      relay.abort("closed at shutdown");
      this.#tunnel!.done(relay.toBackend, relay.toClient, relay.error);
    }
    this.conn.close();
  }

  /** Times `what` (a wait on the client) from now; `disarm` ends it. */
  wait(what: "proxy" | "idle" | "head" | "body" | "send" | "tunnel", ms: number): void {
    this.waiting = what;
    this.conn.deadline.arm(ms);
  }

  disarm(): void {
    this.waiting = undefined;
    this.conn.deadline.disarm();
  }

  async run(): Promise<void> {
    const conn = this.conn;
    try {
      // On TLS, the listener's front reads the PROXY header (it comes before the handshake).
      if (!this.tls && this.context.server.proxyProtocol && !(await this.#readProxyHeader())) {
        return;
      }
      if (this.context.h2c && (await this.#h2c()) !== false) return;
      for (;;) {
        if (conn.start === conn.end) {
          // Idle: wait here rather than in #readHead, one suspended async frame less per idle
          // connection.
          this.wait("idle", this.context.server.timeouts.idle);
          let got: number;
          try {
            got = await conn.receive();
          } catch {
            return; // reset, or closed by the idle timeout
          }
          if (got === 0 || this.context.draining) return;
          conn.end += got;
          // No longer idle: a head arrives (#readHead times the rest) or is here already.
          this.disarm();
        }
        const request = this.#bufferedHead() ?? await this.#readHead();
        if (request === undefined) return;
        const reusable = await this.#exchange(request);
        if (!reusable) return this.#linger();
        if (this.context.draining) return;
      }
    } catch (err) {
      if (err instanceof HeadTooLarge) await this.#fail(431, "request head too large");
      else if (err instanceof BodyTooLarge) await this.#fail(413, err.message);
      else if (err instanceof ParseError) await this.#fail(400, err.message);
      else this.context.onError(err);
    } finally {
      this.disarm();
      await this.#timedOut;
      if (!this.#handedOff) conn.close();
      this.context.ended(this);
    }
  }

  /**
   * Reads the first bytes: true when they are the HTTP/2 preface (the connection then goes to
   * the h2c bridge), false for HTTP/1.x, undefined when the client left first. Once per
   * connection, on plain listeners with `http2` only.
   */
  async #h2c(): Promise<boolean | undefined> {
    const conn = this.conn;
    const timeouts = this.context.server.timeouts;
    if (conn.start === conn.end) this.wait("idle", timeouts.idle);
    else this.wait("head", timeouts.header);
    try {
      for (;;) {
        const seen = detectPreface(conn.buf, conn.start, conn.end);
        if (seen === "http1") return false;
        if (seen === "h2") break;
        if ((await conn.fill()) === null) return undefined;
        if (this.waiting === "idle") {
          if (this.context.draining) return undefined;
          this.wait("head", timeouts.header);
        }
      }
    } catch {
      return undefined; // reset, or closed by a timeout
    } finally {
      this.disarm();
    }
    this.#handedOff = true;
    this.context.serveH2c(
      conn.raw,
      conn.buf.slice(conn.start, conn.end),
      { ip: this.ip, port: this.port },
      { ip: this.local.ip, port: this.local.port },
    );
    return true;
  }

  /**
   * Reads the PROXY header a trusted proxy sends first, and takes the client's address from
   * it. False (the connection is to be closed, with no response) for an untrusted peer, a
   * malformed header, or none within `timeouts.header`.
   */
  async #readProxyHeader(): Promise<boolean> {
    const conn = this.conn;
    const server = this.context.server;
    if (!server.trusted(this.ip)) return false;
    this.wait("proxy", server.timeouts.header);
    try {
      for (;;) {
        const header = parseProxyHeader(conn.buf, conn.start, conn.end);
        if (header) {
          conn.start += header.size;
          const addresses = header.addresses;
          if (addresses) {
            this.ip = addresses.source.ip;
            this.port = addresses.source.port;
            this.local = addresses.destination;
          }
          return true;
        }
        if ((await conn.fill()) === null) return false;
      }
    } catch (err) {
      // A bad header, a reset, or the deadline: close without a word (the spec says abort).
      if (err instanceof ParseError) {
        this.context.onError(new Error(`PROXY protocol header from ${this.ip}: ${err.message}`));
      }
      return false;
    } finally {
      this.disarm();
    }
  }

  /**
   * The next request when its whole head is already buffered and valid (the common case, with
   * no async frame); undefined otherwise, and `#readHead` reads, parses and answers errors.
   */
  #bufferedHead(): ClientRequest | undefined {
    const conn = this.conn;
    if (conn.end - conn.start < 2 || conn.buf[conn.start] === 13) return undefined;
    const end = findHeadEnd(conn.buf, conn.start, conn.end);
    if (end === -1) return undefined;
    let request: ClientRequest;
    try {
      request = this.#parseHead(end);
    } catch {
      return undefined; // #readHead parses it again and answers the error
    }
    conn.start = end;
    return request;
  }

  /** Parses the buffered head that ends (CRLFCRLF included) at `end`; throws RequestError. */
  #parseHead(end: number): ClientRequest {
    const conn = this.conn;
    return parseRequestHead(
      conn.buf.subarray(conn.start, end - 2),
      this.ip,
      this.port,
      this.context.server.limits,
      this.local,
    );
  }

  /** Reads and parses the next request head; undefined when the client is gone or a bad head was answered. */
  async #readHead(): Promise<ClientRequest | undefined> {
    const conn = this.conn;
    const server = this.context.server;
    const timeouts = server.timeouts;
    this.#targetChecked = false;
    this.wait("head", timeouts.header);
    let scanned = conn.start;
    let end: number;
    for (;;) {
      // Empty lines before a request line are ignored (RFC 9112 §2.2).
      while (
        conn.end - conn.start >= 2 && conn.buf[conn.start] === 13 && conn.buf[conn.start + 1] === 10
      ) {
        conn.start += 2;
        scanned = conn.start;
      }
      end = findHeadEnd(conn.buf, scanned, conn.end);
      if (end !== -1) break;
      conn.rejectBareLf(scanned, "request");
      // Read as bytes arrive: a reload applies to a connection already waiting.
      const limits = server.limits;
      // Room for the largest head allowed, and for chunk-size lines when reading a body.
      conn.maxHead = Math.max(limits.maxHeaderBytes, 8 * 1024);
      const tooLarge = this.#oversized(limits, false);
      if (tooLarge) {
        this.disarm();
        await this.#fail(tooLarge.status, tooLarge.message);
        return undefined;
      }
      scanned = Math.max(conn.start, conn.end - 3);
      const before = conn.start;
      let got: number;
      try {
        got = await conn.receive();
      } catch (err) {
        if (!(err instanceof HeadTooLarge)) return undefined; // reset, or closed by a timeout
        const why = this.#oversized(limits, true)!;
        this.disarm();
        await this.#fail(why.status, why.message);
        return undefined;
      }
      if (got === 0) return undefined;
      conn.end += got;
      scanned += conn.start - before;
    }
    this.disarm();
    let request: ClientRequest;
    try {
      request = this.#parseHead(end);
    } catch (err) {
      if (!(err instanceof RequestError)) throw err;
      await this.#fail(err.status, err.message);
      return undefined;
    }
    conn.start = end;
    return request;
  }

  /**
   * Whether the unfinished head at hand already breaks a limit: 414 when its request-target
   * is longer than `maxUriLength`, else 431 when it is over `maxHeaderBytes` (or `full`: the
   * buffer cannot hold more of it). Cheap until the head outgrows the smaller limit.
   */
  #oversized(limits: RequestLimits, full: boolean): RequestError | undefined {
    const conn = this.conn;
    const buf = conn.buf;
    const pending = conn.end - conn.start;
    if (!full && pending <= limits.maxUriLength && pending <= limits.maxHeaderBytes) return;
    if (!this.#targetChecked) {
      // The target runs from the first space to the next space or line end.
      let i = conn.start;
      while (i < conn.end && buf[i] !== 32 && buf[i] !== 13 && buf[i] !== 10) i++;
      const from = i + 1;
      const limit = Math.min(conn.end, from + limits.maxUriLength + 1);
      for (i = from; i < limit; i++) {
        const c = buf[i];
        if (c === 32 || c === 13 || c === 10) break;
      }
      if (i - from > limits.maxUriLength) {
        return new RequestError(414, `request target longer than ${limits.maxUriLength} bytes`);
      }
      // Decided once the target has ended; until then it may still grow past the limit.
      this.#targetChecked = i < conn.end;
    }
    if (full || pending > limits.maxHeaderBytes) {
      return new RequestError(431, `request head larger than ${limits.maxHeaderBytes} bytes`);
    }
  }

  /** Answers an unusable request with `status` and closes. */
  async #fail(status: number, message: string): Promise<void> {
    try {
      await this.conn.write(refusal(status, message));
    } catch {
      // the client is gone
    }
    await this.#linger();
  }

  /** Handles one request and writes its response; true if the connection can carry another. */
  async #exchange(request: ClientRequest): Promise<boolean> {
    const body = request.chunked || request.length > 0 ? new ClientBody(this, request) : undefined;
    if (body) request.body = body.stream;
    if (this.tls) (request as { tls?: boolean }).tls = true;
    this.responded = false;
    let reply: Reply;
    let failed = false;
    try {
      reply = await this.context.handler(request);
    } catch (err) {
      failed = true;
      if (err instanceof BodyTooLarge) {
        reply = textReply(413, "Content Too Large");
      } else if (body !== undefined && err === body.failure) {
        // The handler passed on the client's own broken upload: the client's fault.
        reply = textReply(400, "Bad Request");
      } else {
        this.context.onError(err);
        reply = textReply(500, "Internal Server Error");
      }
    }
    this.responded = true;
    const status = reply.status;
    if (status === 101) return await this.#switch(request, reply);
    const noBody = request.method === "HEAD" || status === 204 || status === 304;
    let keepAlive = !request.close && !failed && !this.context.draining &&
      (body === undefined || body.done);
    let chunked = false;
    if (!noBody && reply.length < 0) {
      if (request.minor === 1) chunked = true;
      else keepAlive = false; // HTTP/1.0: the body ends when the connection does
    }
    const head = replyHead(
      reply,
      (chunked ? "transfer-encoding: chunked\r\n" : "") +
        (!keepAlive
          ? "connection: close\r\n"
          : request.minor === 0
          ? "connection: keep-alive\r\n"
          : ""),
    );

    const conn = this.conn;
    const payload = reply.body;
    try {
      this.wait("send", this.context.server.timeouts.client);
      if (payload === null || noBody) {
        if (payload instanceof ReadableStream) payload.cancel().catch(() => {});
        reply.release?.();
        await conn.writeJoined(head);
      } else if (payload instanceof Uint8Array) {
        // Lent bytes go back as soon as they are copied: a slow client then holds no backend
        // connection for a response that fits one write.
        await conn.writeJoined(head, payload, undefined, reply.release);
      } else {
        await conn.writeJoined(head);
        this.disarm();
        if (!(await this.#send(payload, chunked, reply))) return false;
      }
    } catch {
      if (payload instanceof ReadableStream) payload.cancel().catch(() => {});
      return false;
    } finally {
      this.disarm();
    }
    return keepAlive && (body === undefined || body.done);
  }

  /** Copies a streamed body to the client; false if either side failed part-way. */
  async #send(
    stream: ReadableStream<Uint8Array>,
    chunked: boolean,
    reply: Reply,
  ): Promise<boolean> {
    const reader = stream.getReader();
    const conn = this.conn;
    // Pieces straight from a backend connection, seen by no hook: each goes back once written.
    const recycle = isPieceStream(stream);
    for (;;) {
      let chunk: Uint8Array | undefined;
      try {
        const next = await reader.read();
        if (next.done) break;
        chunk = next.value;
      } catch {
        // The backend failed mid-body: cut the client off, never end the body as if complete.
        return false;
      }
      if (chunk.length === 0) continue;
      // Timed only while the client is slow to take bytes: a backend may pause as long as it likes.
      this.wait("send", this.context.server.timeouts.client);
      try {
        if (!chunked) await conn.write(chunk);
        else await conn.writeChunk(chunk);
        if (recycle) recyclePiece(chunk);
      } catch (err) {
        reader.cancel().catch(() => {});
        throw err;
      } finally {
        this.disarm();
      }
    }
    // The backend's trailer fields go to a chunked (HTTP/1.1) client; HTTP/1.0 has none.
    if (chunked) await conn.writeLastChunk(reply.trailers?.());
    return true;
  }

  /**
   * A backend switched protocols (`101`): sends its head (and any bytes that came after it),
   * then relays bytes both ways until the tunnel closes, idle for at most `timeouts.tunnel`.
   * The connection never carries HTTP again; false always.
   */
  async #switch(request: ClientRequest, reply: Reply): Promise<boolean> {
    const tunnel = reply.tunnel;
    const conn = this.conn;
    if (tunnel === undefined || request.minor === 0) {
      tunnel?.done(0, 0, "the client cannot switch protocols");
      await conn.write(refusal(502, "unexpected 101 Switching Protocols")).catch(() => {});
      return false;
    }
    const head = replyHead(
      { ...reply, length: -1 },
      "connection: upgrade\r\nupgrade: " + tunnel.protocol + "\r\n",
    );
    this.wait("send", this.context.server.timeouts.client);
    try {
      await conn.writeJoined(head, tunnel.early);
    } catch {
      tunnel.done(0, 0, "client closed the connection");
      return false;
    } finally {
      this.disarm();
    }
    // Bytes the client sent after its request head (it may not wait for the 101) go first.
    const early = conn.start < conn.end ? conn.buf.slice(conn.start, conn.end) : undefined;
    conn.start = conn.end = 0;
    const server = this.context.server;
    const client: TunnelEnd = {
      read: (buf) => conn.raw.read(buf),
      write: (bytes) => conn.raw.write(bytes),
      closeWrite: () => conn.raw.closeWrite(),
      close: () => conn.close(),
    };
    const relay = new Relay(client, tunnel, {
      clientEarly: early,
      backendEarly: tunnel.early.length,
      activity: () => this.wait("tunnel", server.timeouts.tunnel ?? TUNNEL_TIMEOUT),
    });
    this.#relay = relay;
    this.#tunnel = tunnel;
    this.context.tunnel(1);
    this.wait("tunnel", server.timeouts.tunnel ?? TUNNEL_TIMEOUT);
    try {
      const result = await relay.finished;
      tunnel.done(result.toBackend, result.toClient, result.error);
    } finally {
      this.disarm();
      this.#relay = undefined;
      this.context.tunnel(-1);
    }
    return false;
  }

  /** Closes after reading (and dropping) what the client still sends for a while, so it gets our response rather than a reset. */
  async #linger(): Promise<void> {
    const conn = this.conn;
    if (conn.closed) return;
    try {
      await (conn.raw as Deno.TcpConn).closeWrite();
      conn.deadline.arm(LINGER);
      const sink = new Uint8Array(16 * 1024);
      for (let total = 0; total < 1 << 20;) {
        const n = await conn.raw.read(sink);
        if (n === null) break;
        total += n;
      }
    } catch {
      // reset, or the linger deadline closed it
    } finally {
      this.disarm();
      await this.#timedOut;
      conn.close();
    }
  }
}

/**
 * The request body as a stream pulled from the client connection. A chunked body that grows
 * past `limits.maxBodySize` errors the stream with {@linkcode BodyTooLarge}; bad chunking
 * with a `ParseError`. Either way the connection stays open for the handler's 413 or 400
 * (sent with `Connection: close`); a client that hung up closes it at once.
 */
class ClientBody {
  readonly stream: ReadableStream<Uint8Array>;
  readonly #body: FramedBody;
  /** Why reading the body failed, if it did. */
  failure: unknown;

  constructor(session: Session, request: ClientRequest) {
    const conn = session.conn;
    const body = this.#body = new FramedBody(
      conn,
      request.chunked ? "chunked" : "length",
      request.length,
      session.context.server.limits.maxBodySize,
    );
    let continued = !request.expectContinue;
    // Its pieces come from the connection and go to one reader: written upstream, they are given
    // back for the next read (RequestBody.written).
    this.stream = markPieceStream(
      new ReadableStream<Uint8Array>({
        pull: async (controller) => {
          session.wait("body", session.context.server.timeouts.client);
          try {
            if (!continued) {
              continued = true;
              if (!session.responded && conn.start === conn.end) await conn.write(CONTINUE);
            }
            const piece = await body.next();
            if (piece !== null) controller.enqueue(piece);
            if (body.done) controller.close();
          } catch (err) {
            // A broken upload poisons the connection: nothing after it can be trusted. It
            // closes after the response (the body is not done); at once if the client is gone.
            const refused = err instanceof ParseError || err instanceof BodyTooLarge;
            if (!refused && !conn.deadline.expired) conn.close(); // (else a 408 is on its way)
            this.failure = err instanceof BodyCutShort
              ? new Error(`client closed the connection ${err.where}`)
              : err;
            controller.error(this.failure);
          } finally {
            if (session.waiting === "body") session.disarm();
          }
        },
        cancel: () => {
          // Left unread: the connection closes after the response.
        },
      }, { highWaterMark: 0 }),
    );
    // A chunked upload may end in trailer fields: they go upstream after it (RequestBody).
    if (request.chunked) (this.stream as TrailedStream).trailers = () => body.trailers;
  }

  /** The whole body has been read. */
  get done(): boolean {
    return this.#body.done;
  }
}

/** A whole response refusing a request (ASCII `message`), closing the connection. */
function refusal(status: number, message: string): Uint8Array {
  const text = `${REASONS[status]}: ${message}\n`;
  return latin1Bytes(replyHead(textReply(status, text), "connection: close\r\n") + text);
}

/** The status line and header fields of `reply`, then `framing` (lines), then the empty line. */
function replyHead(reply: Reply, framing: string): string {
  let head = "HTTP/1.1 " + reply.status + " " + reply.reason + "\r\n";
  const headers = reply.headers;
  for (let i = 0; i < headers.length; i++) head += headers[i][0] + ": " + headers[i][1] + "\r\n";
  if (reply.length >= 0) head += "content-length: " + reply.length + "\r\n";
  return head + framing + "\r\n";
}
