/** Keep-alive connection pooling for one backend: reuse idle connections, open new ones on demand. */
import { Connection } from "../http1/connection.ts";
import { UpstreamError } from "./errors.ts";

/** Idle connections kept per backend at most; more are closed when released. */
const MAX_IDLE = 256;

/** Settings a pool needs. */
export interface ConnectionPoolOptions {
  connectTimeout: number;
  idleTimeout: number;
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

  /** An idle connection, or undefined if none. */
  takeIdle(): Connection | undefined {
    const conn = this.#idle.pop();
    if (conn) conn.idle = false;
    return conn;
  }

  /** Opens a new connection, failing with an `UpstreamError("connect")`. */
  async connect(): Promise<Connection> {
    const { hostname, port } = this;
    const timeout = this.options.connectTimeout;
    const signal = AbortSignal.timeout(timeout);
    let raw: Deno.Conn;
    try {
      if (this.tls) {
        raw = await withTimeout(Deno.connectTls({ hostname, port }), signal);
      } else {
        const tcp = await Deno.connect({ hostname, port, signal });
        tcp.setNoDelay(true);
        raw = tcp;
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
    return new Connection(raw, this.#discardConn, 16 * 1024);
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
      const cutoff = Date.now() - this.options.idleTimeout;
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

/** A short human cause for a socket error: "connection refused", "connection reset", … */
export function describeError(err: unknown): string {
  if (err instanceof Deno.errors.ConnectionRefused) return "connection refused";
  if (err instanceof Deno.errors.ConnectionReset) return "connection reset";
  if (err instanceof Deno.errors.ConnectionAborted) return "connection aborted";
  if (err instanceof Deno.errors.BrokenPipe) return "broken pipe";
  if (err instanceof Deno.errors.TimedOut) return "timed out";
  if (err instanceof Deno.errors.NotConnected) return "not connected";
  if (err instanceof Deno.errors.BadResource || err instanceof Deno.errors.Interrupted) {
    return "connection closed";
  }
  if (err instanceof Error) return err.message.split("\n")[0].replace(/ \(os error \d+\)$/, "");
  return String(err);
}
