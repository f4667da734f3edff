/** Keep-alive connection pooling for one backend: reuse idle connections, open new ones on demand. */
import { Connection } from "../http1/connection.ts";
import { describeError } from "../http1/io.ts";
import { coarseNow } from "../http1/deadlines.ts";
import { encodeProxyV1, encodeProxyV2, type ProxyAddresses } from "../http1/proxy_protocol.ts";
import { type BackendTlsOptions, connectBackendTls } from "../tls/backend.ts";
import { UpstreamError } from "./errors.ts";

export type { ProxyAddresses };

/** Idle connections kept per backend at most; more are closed when released. */
const MAX_IDLE = 256;

/** Settings a pool needs; read at each use, so changing them in place applies to new connections. */
export interface ConnectionPoolOptions {
  connectTimeout: number;
  idleTimeout: number;
  /**
   * Send a PROXY protocol header of this version first on every new connection: the client's
   * address and the address it connected to, as `connect(source)` and `takeIdle(source)` are
   * given them. A connection is then reused only for requests that would send the very same
   * header (same client address and port, same destination), as HAProxy's `send-proxy` does:
   * in practice, later requests on the same client connection. Without a `source` (a health
   * probe), v1 sends this connection's own ends and v2 a LOCAL header. @default none
   */
  proxyProtocol?: "v1" | "v2";
  /**
   * TLS settings for an https backend: `ca` is a PEM file (path) trusted besides the system's
   * roots, `serverName` the name verified and sent by SNI (default: the backend's host),
   * `insecureSkipVerify` accepts any certificate. @default verify the host against the roots
   */
  tls?: { ca?: string; serverName?: string; insecureSkipVerify?: boolean };
}

/** The reuse key of a connection opened with `source` in its PROXY header. */
function originOf(source: ProxyAddresses | undefined): string {
  if (!source) return "";
  const { source: from, destination: to } = source;
  return from.ip + " " + from.port + " " + to.ip + " " + to.port;
}

/** The idle connections of one backend, most recently used last. */
export class ConnectionPool {
  readonly #idle: Connection[] = [];
  #retired = false;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  /** Connections currently open (idle or busy). */
  open = 0;

  constructor(
    readonly hostname: string,
    readonly port: number,
    readonly tls: boolean,
    readonly options: ConnectionPoolOptions,
  ) {}

  /**
   * An idle connection, or undefined if none. With `proxyProtocol`, only one whose PROXY
   * header carried `source` (the client this request is for).
   */
  takeIdle(source?: ProxyAddresses): Connection | undefined {
    const idle = this.#idle;
    if (this.options.proxyProtocol === undefined) {
      let conn = idle.pop();
      // One opened with a PROXY header before a reload turned it off speaks for its client only.
      while (conn?.origin !== undefined) {
        this.discard(conn);
        conn = idle.pop();
      }
      if (conn) conn.idle = false;
      return conn;
    }
    const origin = originOf(source);
    for (let i = idle.length - 1; i >= 0; i--) {
      const conn = idle[i];
      if (conn.origin !== origin) continue;
      idle.splice(i, 1);
      conn.idle = false;
      return conn;
    }
    return undefined;
  }

  /**
   * Opens a new connection, failing with an `UpstreamError("connect")`. With `proxyProtocol`,
   * writes the PROXY header for `source` first (before TLS, as the spec wants).
   */
  async connect(source?: ProxyAddresses): Promise<Connection> {
    const { hostname, port } = this;
    const timeout = this.options.connectTimeout;
    const proxy = this.options.proxyProtocol;
    const signal = AbortSignal.timeout(timeout);
    let raw: Deno.Conn;
    try {
      if (this.tls) {
        // PROXY header first, in the clear (spec §2: before TLS), when wanted.
        const header = proxy === undefined
          ? undefined
          : proxy === "v1"
          ? encodeProxyV1(source)
          : encodeProxyV2(source);
        const tls = await tlsSettings(this.options.tls);
        raw = await withTimeout(connectBackendTls(hostname, port, tls, header), signal);
      } else {
        const tcp = await Deno.connect({ hostname, port, signal });
        tcp.setNoDelay(true);
        raw = tcp;
        if (proxy !== undefined) {
          try {
            // Under 110 bytes on a fresh socket: one segment, written at once (spec §2).
            const ends = source ?? (proxy === "v1" ? ownEnds(tcp) : undefined);
            const header = proxy === "v1" ? encodeProxyV1(ends) : encodeProxyV2(ends);
            for (let n = 0; n < header.length;) n += await tcp.write(header.subarray(n));
          } catch (err) {
            tcp.close();
            throw err;
          }
        }
      }
    } catch (err) {
      throw new UpstreamError(
        "connect",
        signal.aborted ? `connect timeout after ${timeout}ms` : describeError(err),
        false,
      );
    }
    this.open++;
    // Room for a response head and a small body in one read, so the body can go out whole.
    const conn = new Connection(raw, this.#discardConn, 16 * 1024);
    if (proxy !== undefined) conn.origin = originOf(source);
    return conn;
  }

  /** Returns a connection after a complete exchange so the next request can reuse it. */
  release(conn: Connection): void {
    if (this.#retired || conn.closed || this.#idle.length >= MAX_IDLE) {
      this.discard(conn);
      return;
    }
    conn.park(this.#onDead);
    this.#idle.push(conn);
    this.#sweeper ??= this.#startSweeper();
  }

  /** Closes a connection that must not be reused. */
  discard(conn: Connection): void {
    if (conn.closed) return;
    conn.close();
    this.open--;
  }

  /** Closes every idle connection. */
  closeIdle(): void {
    for (const conn of this.#idle.splice(0)) this.discard(conn);
  }

  /** Stops pooling: connections released from now on are closed. */
  retire(): void {
    this.#retired = true;
    this.closeIdle();
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    this.#sweeper = undefined;
  }

  #discardConn = (conn: Connection): void => this.discard(conn);

  #onDead = (conn: Connection): void => {
    const i = this.#idle.indexOf(conn);
    if (i !== -1) this.#idle.splice(i, 1);
    this.discard(conn);
  };

  #startSweeper(): ReturnType<typeof setInterval> {
    const every = Math.max(250, Math.min(this.options.idleTimeout / 2, 30_000));
    const id = setInterval(() => {
      const cutoff = coarseNow() - this.options.idleTimeout;
      // Oldest first: the stack's bottom has waited longest.
      while (this.#idle.length && this.#idle[0].idleSince <= cutoff) {
        this.discard(this.#idle.shift()!);
      }
      if (!this.#idle.length) {
        clearInterval(id);
        this.#sweeper = undefined;
      }
    }, every);
    Deno.unrefTimer(id);
    return id;
  }
}

/** CA files read, by path: the text and the modification time it was read at. */
const caFiles = new Map<string, { mtime: number; pem: Promise<string> }>();

/**
 * A pool's TLS settings with the CA file's text: read once, and again when the file changes
 * (a stat per new connection, none per request).
 */
async function tlsSettings(
  tls: ConnectionPoolOptions["tls"] | undefined,
): Promise<BackendTlsOptions> {
  if (!tls) return {};
  const { ca, serverName, insecureSkipVerify } = tls;
  if (ca === undefined || insecureSkipVerify) return { serverName, insecureSkipVerify };
  let mtime = 0;
  try {
    mtime = (await Deno.stat(ca)).mtime?.getTime() ?? 0;
  } catch (err) {
    throw new Error(`cannot read the CA file ${ca}: ${describeError(err)}`);
  }
  let cached = caFiles.get(ca);
  if (cached === undefined || cached.mtime !== mtime) {
    cached = { mtime, pem: Deno.readTextFile(ca) };
    caFiles.set(ca, cached);
    cached.pem.catch(() => caFiles.delete(ca));
  }
  let pem: string;
  try {
    pem = await cached.pem;
  } catch (err) {
    throw new Error(`cannot read the CA file ${ca}: ${describeError(err)}`);
  }
  return { ca: [pem], serverName, insecureSkipVerify };
}

/** A connection's own ends as PROXY addresses: what a v1 header says for a health probe. */
function ownEnds(tcp: Deno.TcpConn): ProxyAddresses {
  const local = tcp.localAddr as Deno.NetAddr, remote = tcp.remoteAddr as Deno.NetAddr;
  return {
    source: { ip: local.hostname, port: local.port },
    destination: { ip: remote.hostname, port: remote.port },
  };
}

function withTimeout<T extends Deno.Conn>(pending: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      reject(signal.reason);
      pending.then((conn) => conn.close(), () => {});
    };
    signal.addEventListener("abort", onAbort, { once: true });
    pending.then(
      (conn) => {
        signal.removeEventListener("abort", onAbort);
        resolve(conn);
      },
      (err) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}
