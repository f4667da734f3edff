/**
 * TLS to HTTPS backends with a backend's `tls: { ca, serverName, insecureSkipVerify }`.
 *
 * Verified connections use Deno's own TLS over a TCP connection with TCP_NODELAY set:
 * `Deno.startTls(tcp, { hostname: serverName, caCerts })` checks the certificate for the
 * configured name (also the SNI sent) whatever address was dialled, and `caCerts` adds the
 * private CA to the default roots. Deno 2.9 has no per-connection
 * way to skip chain verification (`unsafelyDisableHostnameVerification` skips the name check
 * only; `--unsafely-ignore-certificate-errors=<names>` is process-wide and, when set, makes every
 * other connection ignore `caCerts`), so `insecureSkipVerify` connections go through `node:tls`
 * with `rejectUnauthorized: false`, wrapped to look like a `Deno.Conn` for the HTTP/1.1 client.
 */
import * as net from "node:net";
import * as tls from "node:tls";
import type { Buffer } from "node:buffer";

/** A backend's TLS settings. */
export interface BackendTlsOptions {
  /** Extra trusted CA certificates, PEM text (not paths). @default [] (system/webpki roots) */
  ca?: string[];
  /** The name to verify the certificate for and send as SNI. @default the backend's host */
  serverName?: string;
  /** Accept any certificate (no chain, name or expiry check). @default false */
  insecureSkipVerify?: boolean;
}

/** Bytes read ahead from an insecure backend before its socket is paused. */
const HIGH_WATER = 256 * 1024;

/**
 * Connects to `hostname:port` and completes a TLS handshake as `tls` says. `prelude` (a PROXY
 * protocol header) is written in the clear before the handshake when given.
 */
export async function connectBackendTls(
  hostname: string,
  port: number,
  options: BackendTlsOptions,
  prelude?: Uint8Array,
): Promise<Deno.Conn> {
  const serverName = options.serverName ?? hostname;
  if (options.insecureSkipVerify) return await connectInsecure(hostname, port, serverName, prelude);
  // TCP first, so TCP_NODELAY can be set (Deno.TlsConn has no setNoDelay; without it a request
  // head and body written apart wait ~40 ms for the backend's delayed ACK).
  const tcp = await Deno.connect({ hostname, port });
  let conn: Deno.TlsConn;
  try {
    tcp.setNoDelay(true);
    if (prelude) { for (let n = 0; n < prelude.length;) n += await tcp.write(prelude.subarray(n)); }
    // startTls's `hostname` is only the name to verify and send: the socket is already there.
    conn = await Deno.startTls(tcp, {
      hostname: serverName,
      caCerts: options.ca ?? [],
      alpnProtocols: ["http/1.1"],
    });
  } catch (err) {
    tcp.close();
    throw err;
  }
  try {
    await conn.handshake();
  } catch (err) {
    conn.close();
    throw err;
  }
  return conn;
}

function connectInsecure(
  hostname: string,
  port: number,
  serverName: string,
  prelude: Uint8Array | undefined,
): Promise<Deno.Conn> {
  return new Promise((resolve, reject) => {
    const tcp = net.connect({ host: hostname, port, noDelay: true });
    const fail = (err: Error) => {
      tcp.destroy();
      reject(err);
    };
    tcp.once("error", fail);
    tcp.once("connect", () => {
      if (prelude) tcp.write(prelude);
      const socket = tls.connect({
        socket: tcp,
        // An IP is not a valid SNI name (RFC 6066 §3): send none then.
        servername: net.isIP(serverName) ? undefined : serverName,
        rejectUnauthorized: false,
        ALPNProtocols: ["http/1.1"],
      });
      socket.once("error", fail);
      socket.once("secureConnect", () => {
        tcp.off("error", fail);
        socket.off("error", fail);
        resolve(new NodeSocketConn(socket, tcp) as unknown as Deno.Conn);
      });
    });
  });
}

/**
 * The part of `Deno.Conn` the HTTP/1.1 code uses (read, write, close, closeWrite, addresses)
 * over a node socket, with backpressure: the socket is paused while a chunk waits to be read.
 */
export class NodeSocketConn {
  readonly localAddr: Deno.NetAddr;
  readonly remoteAddr: Deno.NetAddr;
  readonly #queue: Uint8Array[] = [];
  #queued = 0;
  #paused = false;
  readonly #tcp: net.Socket;
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;
  #closed = false;

  constructor(readonly socket: tls.TLSSocket, tcp: net.Socket) {
    this.#tcp = tcp;
    this.localAddr = {
      transport: "tcp",
      hostname: tcp.localAddress ?? "",
      port: tcp.localPort ?? 0,
    };
    this.remoteAddr = {
      transport: "tcp",
      hostname: tcp.remoteAddress ?? "",
      port: tcp.remotePort ?? 0,
    };
    // Flowing mode, with backpressure on the TCP socket under the TLS one: in Deno 2.9 pausing
    // the TLS socket (pause() or paused-mode read()) loses the end of the stream.
    socket.on("data", (data: Buffer) => {
      this.#queue.push(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      this.#queued += data.byteLength;
      if (this.#queued >= HIGH_WATER && !this.#paused) {
        this.#paused = true;
        tcp.pause();
      }
      this.#notify();
    });
    socket.on("end", () => {
      this.#ended = true;
      this.#notify();
    });
    socket.on("error", (err: Error) => {
      this.#error = err;
      this.#notify();
    });
    socket.on("close", () => {
      this.#ended = true;
      this.#notify();
    });
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  /** Like `Deno.Conn.read`: bytes into `p`, null at EOF. */
  async read(p: Uint8Array): Promise<number | null> {
    for (;;) {
      const chunk = this.#queue[0];
      if (chunk) {
        const n = Math.min(p.length, chunk.length);
        p.set(chunk.subarray(0, n));
        if (n === chunk.length) this.#queue.shift();
        else this.#queue[0] = chunk.subarray(n);
        this.#queued -= n;
        if (this.#paused && this.#queued < HIGH_WATER / 2 && !this.#closed) {
          this.#paused = false;
          this.#tcp.resume();
        }
        return n;
      }
      if (this.#error) throw this.#error;
      if (this.#ended || this.#closed) return null;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
  }

  /** Like `Deno.Conn.write`: resolves once node has taken all of `p`. */
  write(p: Uint8Array): Promise<number> {
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("connection closed"));
    return new Promise((resolve, reject) => {
      this.socket.write(p, (err) => err ? reject(err) : resolve(p.length));
    });
  }

  /** Sends our end of the stream (TLS close_notify and FIN). */
  closeWrite(): Promise<void> {
    return new Promise((resolve) => this.socket.end(resolve));
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.socket.destroy();
    this.#notify();
  }

  setNoDelay(noDelay = true): void {
    this.socket.setNoDelay(noDelay);
  }

  setKeepAlive(keepAlive = true): void {
    this.socket.setKeepAlive(keepAlive);
  }

  ref(): void {
    this.socket.ref();
  }

  unref(): void {
    this.socket.unref();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
