/**
 * Helpers for the proxy-path tests: a strict client-side HTTP/1.1 reader over raw
 * sockets (so nothing normalises what the balancer sends), scripted raw backends that
 * record every connection, and main.ts run as a real subprocess.
 */
import { createHash } from "node:crypto";
import { concat } from "./helpers.ts";
import { startMain } from "./process_helpers.ts";

const decoder = new TextDecoder();

/** `text` as bytes, one byte per character (so test data can hold any byte). */
export function bytes(text: string | Uint8Array): Uint8Array {
  if (typeof text !== "string") return text;
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

/** Hex SHA-256 of some bytes. */
export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Rejects with `what` when `promise` takes longer than `ms` (so a buffering proxy fails instead of hanging). */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms}ms: ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Options of {@linkcode untilClosed}. */
export interface UntilClosedOptions {
  /** What the timeout's error names. @default "the connection to be closed" */
  what?: string;
  /** Decodes each read. @default new TextDecoder() (UTF-8) */
  decoder?: { decode(bytes: Uint8Array): string };
  /** How long to wait, in ms. @default 15_000 */
  ms?: number;
}

/**
 * Reads `client`'s socket until the peer closes it (EOF or reset) and returns the bytes that
 * came (not those an earlier read already buffered); rejects after `ms`.
 */
export async function untilClosed(
  client: RawClient,
  {
    what = "the connection to be closed",
    decoder = new TextDecoder(),
    ms = 15_000,
  }: UntilClosedOptions = {},
): Promise<string> {
  let text = "";
  const buf = new Uint8Array(65536);
  await within(
    (async () => {
      for (;;) {
        const n = await client.conn.read(buf).catch(() => null);
        if (n === null) return;
        text += decoder.decode(buf.subarray(0, n));
      }
    })(),
    ms,
    what,
  );
  return text;
}

/** A response read byte-exactly off the wire. */
export interface RawResponse {
  status: number;
  /** The head as received, up to and excluding the blank line. */
  head: string;
  /** Header fields in order, names lower-case. */
  headers: [string, string][];
  /** The body, de-chunked when it was chunked. */
  body: Uint8Array;
  /** The last value of a header, or null. */
  header(name: string): string | null;
  /** The body as text. */
  text(): string;
}

/** A client connection that reads whole responses (by Content-Length, chunked framing or EOF). */
export class RawClient {
  #buf: Uint8Array = new Uint8Array(0);
  #eof = false;
  private constructor(readonly conn: Deno.Conn) {}

  /** Connects to 127.0.0.1:`port`. */
  static async connect(port: number): Promise<RawClient> {
    return new RawClient(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  /** Writes all of `data`. */
  async send(data: string | Uint8Array): Promise<void> {
    const b = bytes(data);
    let written = 0;
    while (written < b.length) written += await this.conn.write(b.subarray(written));
  }

  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = new Uint8Array(65536);
    let n: number | null;
    try {
      n = await this.conn.read(chunk);
    } catch {
      n = null; // reset by the peer counts as closed
    }
    if (n === null) {
      this.#eof = true;
      return false;
    }
    this.#buf = concat([this.#buf, chunk.subarray(0, n)]);
    return true;
  }

  async #take(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n) {
      if (!(await this.#fill())) {
        throw new Error(`connection closed with ${n - this.#buf.length} body bytes missing`);
      }
    }
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }

  async #line(): Promise<string> {
    for (;;) {
      const i = this.#buf.indexOf(10);
      if (i !== -1) {
        const line = decoder.decode(this.#buf.subarray(0, i)).replace(/\r$/, "");
        this.#buf = this.#buf.slice(i + 1);
        return line;
      }
      if (!(await this.#fill())) throw new Error("connection closed inside a chunked body");
    }
  }

  /** Reads one complete response to a request made with `method`; throws if the body is cut short. */
  async readResponse(method = "GET"): Promise<RawResponse> {
    let end: number;
    for (;;) {
      end = findCrlfCrlf(this.#buf);
      if (end !== -1) break;
      if (!(await this.#fill())) {
        throw new Error(`connection closed before a response head (${this.#buf.length} bytes)`);
      }
    }
    const head = decoder.decode(this.#buf.subarray(0, end));
    this.#buf = this.#buf.slice(end + 4);
    const [statusLine, ...lines] = head.split("\r\n");
    const status = Number(statusLine.split(" ")[1]);
    const headers = lines.map((l): [string, string] => {
      const colon = l.indexOf(":");
      return [l.slice(0, colon).toLowerCase(), l.slice(colon + 1).trim()];
    });
    const header = (name: string) => headers.findLast(([n]) => n === name)?.[1] ?? null;
    let body: Uint8Array;
    if (method === "HEAD" || status === 204 || status === 304 || status < 200) {
      body = new Uint8Array(0);
    } else if (header("transfer-encoding")?.toLowerCase() === "chunked") {
      const parts: Uint8Array[] = [];
      for (;;) {
        const size = parseInt((await this.#line()).split(";")[0], 16);
        if (size === 0) break;
        parts.push(await this.#take(size));
        if ((await this.#line()) !== "") throw new Error("chunk not followed by CRLF");
      }
      while ((await this.#line()) !== "") { /* trailers */ }
      body = concat(parts);
    } else if (header("content-length") !== null) {
      body = await this.#take(Number(header("content-length")));
    } else {
      while (await this.#fill()) { /* delimited by close */ }
      body = this.#buf;
      this.#buf = new Uint8Array(0);
    }
    return { status, head, headers, body, header, text: () => decoder.decode(body) };
  }

  /** True once the peer closed the connection (or reset it), as seen by a read. */
  get closed(): boolean {
    return this.#eof;
  }

  /** Bytes already received beyond the responses read so far (must be none after a bodiless response). */
  get leftover(): number {
    return this.#buf.length;
  }

  /** Closes the socket (safe to call twice). */
  close(): void {
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function findCrlfCrlf(buf: Uint8Array): number {
  for (let i = 0; i + 3 < buf.length; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

/** Sends one request on a fresh connection and reads its response. */
export async function rawRequest(port: number, request: string, method?: string) {
  using client = await RawClient.connect(port);
  await client.send(request);
  return await client.readResponse(method ?? request.slice(0, request.indexOf(" ")));
}

/** One connection accepted by a {@linkcode scriptedBackend}. */
export interface ScriptedConn {
  /** Accept order, from 0. */
  id: number;
  /** Request heads received on it, in order (health probes included). */
  requests: string[];
  /** True once the peer (the balancer) closed it. */
  closedByPeer: boolean;
  /** Whether its first request was a health probe (Deno's fetch, not the proxy's pool). */
  health: boolean;
}

/** A parsed request as a scripted backend sees it. */
export interface ScriptedRequest {
  method: string;
  target: string;
  head: string;
  conn: ScriptedConn;
}

/**
 * What a scripted backend does after a request: send `reply` (string bytes are
 * latin1) and then keep the connection for the next request (`keep`, the default),
 * close it (`close`), or send nothing more and wait for the peer to close (`hang`).
 * `more` runs after `reply` is written, to send further bytes later.
 */
export interface Script {
  reply?: string | Uint8Array;
  more?: (write: (data: string | Uint8Array) => Promise<void>) => Promise<void>;
  then?: "keep" | "close" | "hang";
}

/** A raw HTTP/1.1 backend on 127.0.0.1:0 answering health probes with 200 and everything else by `script`. */
export function scriptedBackend(script: (req: ScriptedRequest) => Script | Promise<Script>) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: ScriptedConn[] = [];
  const open = new Set<Deno.Conn>();
  const handlers = new Set<Promise<void>>();
  const serve = async (conn: Deno.Conn, state: ScriptedConn) => {
    let buf: Uint8Array = new Uint8Array(0);
    const chunk = new Uint8Array(65536);
    const write = async (data: string | Uint8Array) => {
      const b = bytes(data);
      let n = 0;
      while (n < b.length) n += await conn.write(b.subarray(n));
    };
    for (;;) {
      let end = findCrlfCrlf(buf);
      while (end === -1) {
        const n = await conn.read(chunk).catch(() => null);
        if (n === null) {
          state.closedByPeer = true;
          return;
        }
        buf = concat([buf, chunk.subarray(0, n)]);
        end = findCrlfCrlf(buf);
      }
      const head = decoder.decode(buf.subarray(0, end));
      buf = buf.slice(end + 4);
      const [method, target] = head.split(" ");
      if (state.requests.length === 0) state.health = /user-agent: sluice-health-check/i.test(head);
      state.requests.push(head);
      if (/user-agent: sluice-health-check/i.test(head)) {
        await write("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
        continue;
      }
      const { reply, more, then = "keep" } = await script({ method, target, head, conn: state });
      if (reply !== undefined) await write(reply);
      if (more) await more(write);
      if (then === "close") return;
      if (then === "hang") {
        while ((await conn.read(chunk).catch(() => null)) !== null) { /* discard */ }
        state.closedByPeer = true;
        return;
      }
    }
  };
  (async () => {
    try {
      for await (const conn of listener) {
        const state: ScriptedConn = {
          id: conns.length,
          requests: [],
          closedByPeer: false,
          health: false,
        };
        conns.push(state);
        open.add(conn);
        const p: Promise<void> = serve(conn, state).catch(() => {}).finally(() => {
          open.delete(conn);
          handlers.delete(p);
          try {
            conn.close();
          } catch { /* closed already */ }
        });
        handlers.add(p);
      }
    } catch { /* listener closed */ }
  })();
  const port = (listener.addr as Deno.NetAddr).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    conns,
    /** Connections that carried proxied traffic (not the health checker's). */
    proxied: () => conns.filter((c) => !c.health && c.requests.length > 0),
    async close() {
      listener.close();
      for (const c of open) {
        try {
          c.close();
        } catch { /* closed already */ }
      }
      await Promise.all([...handlers]);
    },
  };
}

/** Deterministic pseudo-random bytes: block `index` of `size` bytes (size a multiple of 4). */
export function block(index: number, size = 65536): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(size);
  const words = new Uint32Array(out.buffer);
  let x = (index + 1) * 2654435761 >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return out;
}

/** Length and SHA-256 of `count` blocks, computed directly. */
export function blocksDigest(count: number, size = 65536): { length: number; sha256: string } {
  const hash = createHash("sha256");
  for (let i = 0; i < count; i++) hash.update(block(i, size));
  return { length: count * size, sha256: hash.digest("hex") };
}

/**
 * Resident memory of a process in bytes: VmRSS from /proc/PID/status, read with `cat`
 * because Deno only lets --allow-all read /proc.
 */
export async function rss(pid: number): Promise<number> {
  const out = await new Deno.Command("cat", { args: [`/proc/${pid}/status`], stderr: "null" })
    .output();
  const match = /VmRSS:\s+(\d+) kB/.exec(new TextDecoder().decode(out.stdout));
  if (!match) throw new Error(`no VmRSS for process ${pid}`);
  return Number(match[1]) * 1024;
}

/** main.ts running as a subprocess, with its stderr collected line by line. */
export interface BalancerProcess {
  child: Deno.ChildProcess;
  pid: number;
  port: number;
  url: string;
  /** stderr lines so far. */
  lines: string[];
  /** Resolves with the exit status. */
  status: Promise<Deno.CommandStatus>;
  /** Resolves once a stderr line matches. */
  waitForLine(pattern: RegExp, timeout?: number): Promise<string>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Runs `deno run … main.ts <args>` (the way the README does) and resolves once it
 * printed its "listening on http://HOST:PORT" line.
 */
export async function spawnBalancer(args: string[]): Promise<BalancerProcess> {
  const { proc, port } = await startMain(args);
  return {
    child: proc.child,
    pid: proc.pid,
    port,
    url: `http://127.0.0.1:${port}`,
    lines: proc.stderr.lines,
    status: proc.status,
    waitForLine: async (pattern, timeout) => (await proc.stderr.waitFor(pattern, 1, timeout))[0],
    [Symbol.asyncDispose]: () => proc[Symbol.asyncDispose](),
  };
}
