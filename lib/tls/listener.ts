/**
 * A TLS listener whose certificates can be replaced without dropping connections, with SNI
 * selection and ALPN, for the accept loop of a TLS `listen` entry.
 *
 * "native" (the default): `Deno.listenTls` — a static certificate when there is one, an SNI
 * resolver when there are several (Deno calls it once per distinct server name and caches the
 * answer for the listener's life). A reload opens a new listener on the same port with
 * `reusePort` (needs `--unstable-net`) and closes the old one: open connections are untouched,
 * new handshakes get the new certificates. Linux resets connections still queued on the old
 * socket when it closes unless `net.ipv4.tcp_migrate_req=1`. The same swap bounds the resolver's
 * cache: after `maxNames` distinct names the listener is replaced.
 *
 * "front" (for `minVersion: "1.3"`, which `Deno.listenTls` cannot enforce): a plain TCP listener
 * reads each ClientHello itself, refuses clients that do not offer TLS 1.3 with a
 * `protocol_version` alert, and pumps the others into an internal loopback `Deno.listenTls`.
 * It also learns each connection's SNI name, and reloads without `reusePort`. Costs about 2x the
 * CPU per handshake and 3x per small request (measured), so only listeners that need it use it.
 */
import { closeQuietly, pump, writeAll } from "../http1/io.ts";
import { parseProxyHeader } from "../http1/proxy_protocol.ts";
import { type LoadedCertificate, selectCertificate } from "./certificates.ts";
import {
  ALERT_PROTOCOL_VERSION,
  type ClientHello,
  parseClientHello,
  TLS13,
} from "./client_hello.ts";
import { setListenerNoDelay } from "./nodelay.ts";

/** How to listen. */
export interface TlsListenerOptions {
  hostname: string;
  port: number;
  /** Loaded certificates; the first is the default for no SNI or no match. */
  certificates: readonly LoadedCertificate[];
  /** ALPN protocols offered, most preferred first. @default ["http/1.1"] */
  alpnProtocols?: string[];
  /** Lowest TLS version accepted; "1.3" selects the "front" mode. @default "1.2" */
  minVersion?: "1.2" | "1.3";
  /**
   * Force a mode. @default "front" for minVersion "1.3" or `proxyProtocol`, else "native"
   */
  mode?: "native" | "front";
  /**
   * Share the port with other listeners (worker threads). Native mode always binds with
   * `reusePort` when it can (its reloads need it); without this option it first checks that
   * nothing else holds the port, so a port in use still fails with `AddrInUse`. @default false
   */
  reusePort?: boolean;
  /**
   * Front mode: read a PROXY protocol header (v1 or v2) before the ClientHello, from peers
   * `trusted` accepts (others are closed at once); its source becomes `remoteAddr`, its
   * destination `local`. `enabled` is read per connection. @default off
   */
  proxyProtocol?: { enabled(): boolean; trusted(ip: string): boolean };
  /** Distinct SNI names the native resolver may cache before the listener is replaced. @default 10000 */
  maxNames?: number;
  /** How long a replaced native listener still accepts, ms. @default 100 */
  grace?: number;
  /** Front mode: the longest wait for a complete ClientHello, ms. @default 10000 */
  helloTimeout?: number;
  /**
   * Set TCP_NODELAY on the listening socket (inherited by accepted connections) through FFI:
   * without it a response written in several pieces waits ~40 ms for the client's delayed ACK.
   * @default true
   */
  noDelay?: boolean;
  /** Told about accept failures and failed swaps (the listener keeps serving). */
  onError?(err: unknown): void;
}

/** One accepted connection. Its TLS handshake may still be in progress (see {@linkcode handshake}). */
export interface AcceptedTls {
  /** Read and write HTTP here; in front mode it is the internal loopback side. */
  conn: Deno.TlsConn;
  /** The client's address: use this, not `conn.remoteAddr` (loopback in front mode). */
  remoteAddr: Deno.NetAddr;
  /** The SNI name, lower-case, when known (front mode only; native Deno does not expose it). */
  serverName: string | undefined;
  /** The address the client connected to (front mode: the public side, or a PROXY header's destination); native: read it from `conn`. */
  local?: { ip: string; port: number };
}

/** A running TLS listener. */
export interface TlsListener {
  readonly addr: Deno.NetAddr;
  readonly mode: "native" | "front";
  /**
   * How a reload replaces the certificates: "swap" (reusePort, no gap), "reopen" (native without
   * `--unstable-net`: the port is closed for a moment) or "internal" (front mode, no gap).
   */
  readonly reloads: "swap" | "reopen" | "internal";
  /** True when accepted connections have TCP_NODELAY, else why not (e.g. "needs --allow-ffi"). */
  readonly noDelay: true | string;
  /** The next connection; rejects once the listener is closed. */
  accept(): Promise<AcceptedTls>;
  /** New handshakes use `certificates` from now on; open connections keep theirs. */
  /**
   * New handshakes use `certificates` from now on; open connections keep theirs. Resolves once
   * every handshake accepted from then on gets them (a swapped-out native listener still
   * accepts for its `grace` period).
   */
  reload(certificates: readonly LoadedCertificate[]): Promise<void>;
  /** Stops accepting (open connections go on). */
  close(): void;
}

const RESOLVER = Symbol.for("unstableSniResolver");
/** Most accepted connections held for a slow accept loop before the listener stops accepting. */
const BACKLOG = 64;

/**
 * Completes `conn`'s handshake within `timeout` ms and returns the ALPN protocol chosen (null
 * when none); closes `conn` and throws on failure or timeout.
 */
export async function handshake(conn: Deno.TlsConn, timeout: number): Promise<string | null> {
  const timer = setTimeout(() => closeQuietly(conn), timeout);
  try {
    const info = await conn.handshake();
    return info.alpnProtocol;
  } catch (err) {
    closeQuietly(conn);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Whether `reusePort` may be used: it needs `--unstable-net` (or `"unstable": ["net"]` in
 * deno.json), and without it Deno exits the process rather than throw. The QUIC API is defined
 * exactly when that flag is on.
 */
export function reusePortAllowed(): boolean {
  return typeof (Deno as unknown as Record<string, unknown>).QuicEndpoint === "function";
}

/** Opens the listener at once; throws when the port is taken or a native swap is unavailable. */
export function openTlsListener(options: TlsListenerOptions): TlsListener {
  const mode = options.mode ??
    (options.minVersion === "1.3" || options.proxyProtocol ? "front" : "native");
  return mode === "front" ? openFront(options) : openNative(options);
}

/** Hands accepted connections to `accept()` callers, holding at most {@linkcode BACKLOG}. */
class Handoff {
  readonly #ready: AcceptedTls[] = [];
  readonly #takers: { resolve(c: AcceptedTls): void; reject(e: Error): void }[] = [];
  #room: (() => void) | undefined;
  closed = false;

  put(accepted: AcceptedTls): void {
    if (this.closed) {
      closeQuietly(accepted.conn);
      return;
    }
    const taker = this.#takers.shift();
    if (taker) taker.resolve(accepted);
    else this.#ready.push(accepted);
  }

  /** Resolves while there is room, so producers stop accepting when nobody takes. */
  room(): Promise<void> | undefined {
    if (this.#ready.length < BACKLOG) return undefined;
    return new Promise((resolve) => this.#room = resolve);
  }

  take(): Promise<AcceptedTls> {
    if (this.closed) return Promise.reject(new Deno.errors.BadResource("listener closed"));
    const ready = this.#ready.shift();
    if (ready) {
      const room = this.#room;
      this.#room = undefined;
      room?.();
      return Promise.resolve(ready);
    }
    return new Promise((resolve, reject) => this.#takers.push({ resolve, reject }));
  }

  close(): void {
    this.closed = true;
    for (const t of this.#takers.splice(0)) {
      t.reject(new Deno.errors.BadResource("listener closed"));
    }
    for (const a of this.#ready.splice(0)) closeQuietly(a.conn);
    this.#room?.();
  }
}

/** `Deno.listenTls` options for `certificates`: static for one, an SNI resolver for several. */
function tlsKeys(
  certificates: readonly LoadedCertificate[],
  onName: () => void,
): Record<string | symbol, unknown> {
  if (certificates.length === 1) return { cert: certificates[0].cert, key: certificates[0].key };
  const pairs = new Map(certificates.map((c) => [c, { cert: c.cert, key: c.key }]));
  return {
    [RESOLVER]: (serverName: string) => {
      onName();
      return pairs.get(selectCertificate(certificates, serverName));
    },
  };
}

function openNative(options: TlsListenerOptions): TlsListener {
  const alpnProtocols = options.alpnProtocols ?? ["http/1.1"];
  const maxNames = options.maxNames ?? 10_000;
  const grace = options.grace ?? 100;
  const handoff = new Handoff();
  let certificates = options.certificates;
  let port = options.port;
  let names = 0;
  let current: Deno.TlsListener;
  let swapping = false;
  let noDelay: true | string = "disabled by options";

  const listen = (reusePort: boolean): Deno.TlsListener => {
    names = 0;
    const keys = tlsKeys(certificates, () => {
      // Each distinct name stays cached in Deno for the listener's life: replace it in time.
      if (++names === maxNames) queueMicrotask(() => swap());
    });
    const listener = Deno.listenTls(
      {
        hostname: options.hostname,
        port,
        alpnProtocols,
        reusePort,
        ...keys,
      } as Deno.ListenTlsOptions & Deno.TlsCertifiedKeyPem,
    );
    if (options.noDelay !== false) {
      const set = setListenerNoDelay((listener.addr as Deno.NetAddr).port);
      noDelay = typeof set === "number" ? true : set;
    }
    return listener;
  };
  const run = async (listener: Deno.TlsListener) => {
    for (;;) {
      await handoff.room();
      let conn: Deno.TlsConn;
      try {
        conn = await listener.accept();
      } catch (err) {
        if (listener !== current || handoff.closed) return;
        if (err instanceof Deno.errors.BadResource || err instanceof Deno.errors.Interrupted) {
          return;
        }
        options.onError?.(err);
        await new Promise((resolve) => setTimeout(resolve, 100));
        continue;
      }
      handoff.put({ conn, remoteAddr: conn.remoteAddr as Deno.NetAddr, serverName: undefined });
    }
  };
  /** Resolves once the listener replaced last has stopped accepting. */
  let retired: Promise<void> = Promise.resolve();
  const swap = () => {
    if (handoff.closed || swapping) return;
    swapping = true;
    try {
      const old = current;
      if (reusePort) {
        current = listen(true);
        retired = new Promise((resolve) =>
          setTimeout(() => {
            closeQuietly(old);
            resolve();
          }, grace)
        );
      } else {
        // Without --unstable-net: a moment with no listener, connections in it are refused.
        closeQuietly(old);
        current = listen(false);
      }
      run(current);
    } catch (err) {
      options.onError?.(err);
    } finally {
      swapping = false;
    }
  };

  const reusePort = reusePortAllowed();
  if (reusePort && !options.reusePort && options.port !== 0) {
    // SO_REUSEPORT would let us join another process's socket on this port: make sure there is
    // none (a plain bind fails then), as a listener without reusePort would.
    Deno.listen({ hostname: options.hostname, port: options.port }).close();
  }
  current = listen(reusePort);
  const addr = current.addr as Deno.NetAddr;
  port = addr.port;
  run(current);
  return {
    addr,
    mode: "native",
    reloads: reusePort ? "swap" : "reopen",
    get noDelay() {
      return noDelay;
    },
    accept: () => handoff.take(),
    reload(next) {
      if (next.length === 0) throw new Error("no certificates");
      certificates = next;
      swap();
      return retired;
    },
    close() {
      handoff.close();
      closeQuietly(current);
    },
  };
}

function openFront(options: TlsListenerOptions): TlsListener {
  const alpnProtocols = options.alpnProtocols ?? ["http/1.1"];
  const needTls13 = options.minVersion === "1.3";
  const helloTimeout = options.helloTimeout ?? 10_000;
  const maxNames = options.maxNames ?? 10_000;
  const handoff = new Handoff();
  const front = Deno.listen({
    hostname: options.hostname,
    port: options.port,
    ...(options.reusePort ? { reusePort: true } : {}),
  });
  /** Clients waiting for their internal side, by the loopback port they connect from. */
  const pending = new Map<number, Omit<AcceptedTls, "conn">>();
  /** Internal connections accepted before their client was filed in `pending`. */
  const arrived = new Map<number, Deno.TlsConn>();
  let certificates = options.certificates;
  let noDelay: true | string = "disabled by options";
  let inner: { listener: Deno.TlsListener; port: number; connecting: number; retired: boolean };

  const openInner = () => {
    let names = 0;
    const listener = Deno.listenTls(
      {
        hostname: "127.0.0.1",
        port: 0,
        alpnProtocols,
        ...tlsKeys(certificates, () => {
          if (++names === maxNames) queueMicrotask(() => swapInner());
        }),
      } as Deno.ListenTlsOptions & Deno.TlsCertifiedKeyPem,
    );
    if (options.noDelay !== false) {
      const set = setListenerNoDelay((listener.addr as Deno.NetAddr).port);
      noDelay = typeof set === "number" ? true : set;
    }
    const entry = {
      listener,
      port: (listener.addr as Deno.NetAddr).port,
      connecting: 0,
      retired: false,
    };
    (async () => {
      for (;;) {
        let conn: Deno.TlsConn;
        try {
          conn = await listener.accept();
        } catch {
          return;
        }
        const key = (conn.remoteAddr as Deno.NetAddr).port;
        entry.connecting--;
        const client = pending.get(key);
        if (client) {
          pending.delete(key);
          handoff.put({ conn, ...client });
        } else {
          // Accepted before our connect() call returned and filed the client: pair it then.
          // Anything unclaimed is not ours (another local process): drop it.
          arrived.set(key, conn);
          setTimeout(() => {
            if (arrived.get(key) !== conn) return;
            arrived.delete(key);
            closeQuietly(conn);
          }, 10_000);
        }
        if (entry.retired && entry.connecting === 0) closeQuietly(listener);
      }
    })();
    return entry;
  };
  const swapInner = () => {
    const old = inner;
    inner = openInner();
    old.retired = true;
    // Connections already on their way to the old internal listener still get accepted.
    if (old.connecting === 0) closeQuietly(old.listener);
  };

  const serveClient = async (client: Deno.TcpConn) => {
    client.setNoDelay(true);
    let buf = new Uint8Array(2048);
    let end = 0;
    const timer = setTimeout(() => closeQuietly(client), helloTimeout);
    const peer = client.remoteAddr as Deno.NetAddr;
    const own = client.localAddr as Deno.NetAddr;
    let remoteAddr = peer;
    let local = { ip: own.hostname, port: own.port };
    const read = async (): Promise<boolean> => {
      if (end === buf.length) {
        const grown = new Uint8Array(buf.length * 2);
        grown.set(buf);
        buf = grown;
      }
      const n = await client.read(buf.subarray(end));
      if (n === null) return false;
      end += n;
      return true;
    };
    let hello: ClientHello | "more" | "invalid";
    try {
      const proxy = options.proxyProtocol;
      if (proxy?.enabled()) {
        if (!proxy.trusted(peer.hostname)) return closeQuietly(client);
        for (;;) {
          const header = parseProxyHeader(buf, 0, end);
          if (header) {
            const from = header.addresses?.source;
            if (from) remoteAddr = { transport: "tcp", hostname: from.ip, port: from.port };
            if (header.addresses) local = { ...header.addresses.destination };
            buf.copyWithin(0, header.size, end);
            end -= header.size;
            break;
          }
          if (!(await read())) return closeQuietly(client);
        }
      }
      for (;;) {
        hello = parseClientHello(buf, end);
        if (hello !== "more") break;
        if (!(await read())) return closeQuietly(client);
      }
    } catch (err) {
      if (err instanceof Error && err.name === "ProxyProtocolError") {
        options.onError?.(new Error(`PROXY protocol header from ${peer.hostname}: ${err.message}`));
      }
      return closeQuietly(client);
    } finally {
      clearTimeout(timer);
    }
    if (hello === "invalid" || (needTls13 && !hello.versions.includes(TLS13))) {
      await writeAll(client, ALERT_PROTOCOL_VERSION).catch(() => {});
      return closeQuietly(client);
    }
    const target = inner;
    target.connecting++;
    let upstream: Deno.TcpConn;
    try {
      upstream = await Deno.connect({ hostname: "127.0.0.1", port: target.port });
    } catch (err) {
      target.connecting--;
      options.onError?.(err);
      return closeQuietly(client);
    }
    upstream.setNoDelay(true);
    const key = (upstream.localAddr as Deno.NetAddr).port;
    const info = { remoteAddr, serverName: hello.serverName, local };
    const early = arrived.get(key);
    if (early) {
      arrived.delete(key);
      handoff.put({ conn: early, ...info });
    } else pending.set(key, info);
    try {
      await writeAll(upstream, buf.subarray(0, end));
    } catch {
      closeQuietly(upstream);
      return closeQuietly(client);
    }
    const inbound = pump(client, upstream);
    await pump(upstream, client);
    // Our side is done: give the client a moment to take the close, then let go of it.
    const linger = setTimeout(() => closeQuietly(client), 5_000);
    await inbound;
    clearTimeout(linger);
    closeQuietly(client);
    closeQuietly(upstream);
  };

  inner = openInner();
  (async () => {
    for (;;) {
      await handoff.room();
      let client: Deno.TcpConn;
      try {
        client = await front.accept();
      } catch (err) {
        if (handoff.closed) return;
        if (err instanceof Deno.errors.BadResource || err instanceof Deno.errors.Interrupted) {
          return;
        }
        options.onError?.(err);
        await new Promise((resolve) => setTimeout(resolve, 100));
        continue;
      }
      serveClient(client);
    }
  })();
  return {
    addr: front.addr as Deno.NetAddr,
    mode: "front",
    reloads: "internal",
    get noDelay() {
      return noDelay;
    },
    accept: () => handoff.take(),
    reload(next) {
      if (next.length === 0) throw new Error("no certificates");
      certificates = next;
      // Clients whose ClientHello was read from now on go to the new internal listener.
      swapInner();
      return Promise.resolve();
    },
    close() {
      handoff.close();
      closeQuietly(front);
      inner.retired = true;
      if (inner.connecting === 0) closeQuietly(inner.listener);
    },
  };
}
