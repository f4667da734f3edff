/**
 * Bench-only backends: HTTP/1.1 keep-alive over `Deno.listen`, cheap enough that the proxy under
 * test, not the backend, is what a benchmark measures (`backend.ts` runs on `Deno.serve`, whose
 * Request/Response objects cost several times more CPU per request).
 *
 *   deno run --allow-net bench/bench_backend.ts --ports 8081,8082,8083
 *
 * - `GET /bytes/N`: N bytes of body (Content-Length), streamed from one reused buffer: downloads of
 *   any size without holding them.
 * - A request with a body (Content-Length or chunked): the body is read and dropped, the answer is
 *   `received N` (the byte count): uploads of any size.
 * - Anything else: `Hello from backend server on port: N`, as `backend.ts` answers, so the
 *   benchmark's readiness check and the proxies' health checks work unchanged.
 *
 * Prints `backend listening on http://HOST:PORT` per port, like `backend.ts`. On SIGTERM it stops
 * gracefully, as a well-behaved backend restarted by its supervisor does (the soak restarts
 * backends this way): it stops accepting, closes idle keep-alive connections, finishes the
 * responses under way (with `connection: close`), and exits once they are done (5 s at most).
 */
import { parseArgs } from "node:util";

const ascii = new TextEncoder();
/** Body source for downloads: 1 MiB, written again and again. */
const BLOCK = new Uint8Array(1 << 20).fill(0x61);
const MAX_HEAD = 64 * 1024;

let dateSecond = -1;
let dateText = "";
/** The HTTP date, formatted once per second. */
function httpDate(): string {
  const second = Math.floor(Date.now() / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(second * 1000).toUTCString();
  }
  return dateText;
}

/** A response head and body in one buffer (the hello answer is written in one call). */
function response(body: string, close: boolean, head = false): Uint8Array {
  return ascii.encode(
    "HTTP/1.1 200 OK\r\ncontent-type: text/plain;charset=UTF-8\r\n" +
      `date: ${httpDate()}\r\ncontent-length: ${ascii.encode(body).length}\r\n` +
      (close ? "connection: close\r\n" : "") + "\r\n" + (head ? "" : body),
  );
}

/** Index just past the CRLFCRLF that ends a head in buf[from, to), or -1. */
function headEnd(buf: Uint8Array, from: number, to: number): number {
  for (let i = Math.max(from, 3); i < to; i++) {
    if (buf[i] === 10 && buf[i - 1] === 13 && buf[i - 2] === 10 && buf[i - 3] === 13) return i + 1;
  }
  return -1;
}

interface Head {
  method: string;
  target: string;
  length: number;
  chunked: boolean;
  close: boolean;
}

function parseHead(text: string): Head {
  const lines = text.split("\r\n");
  const [method = "", target = "/", version = ""] = lines[0].split(" ");
  const head: Head = { method, target, length: 0, chunked: false, close: version === "HTTP/1.0" };
  for (let i = 1; i < lines.length; i++) {
    const colon = lines[i].indexOf(":");
    if (colon < 0) continue;
    const name = lines[i].slice(0, colon).toLowerCase();
    const value = lines[i].slice(colon + 1).trim().toLowerCase();
    if (name === "content-length") head.length = Number(value);
    else if (name === "transfer-encoding") head.chunked = value.endsWith("chunked");
    else if (name === "connection") {
      if (value.includes("close")) head.close = true;
      else if (value.includes("keep-alive")) head.close = false;
    }
  }
  return head;
}

/** A connection and whether it waits for a request with nothing buffered (closable at once). */
interface Open {
  conn: Deno.TcpConn;
  idle: boolean;
}
const open = new Set<Open>();
let draining = false;

/** One client connection of the backend on `port`. */
async function serveConn(conn: Deno.TcpConn, port: number): Promise<void> {
  const self: Open = { conn, idle: true };
  open.add(self);
  const hello = `Hello from backend server on port: ${port}\n`;
  let helloSecond = -1;
  let helloBytes: Uint8Array = new Uint8Array(0);
  let buf = new Uint8Array(16 * 1024);
  let start = 0;
  let end = 0;
  /** Reads more into buf[end...]; false at EOF. */
  const fill = async (): Promise<boolean> => {
    if (start === end) start = end = 0;
    if (end === buf.length) {
      if (start > 0) {
        buf.copyWithin(0, start, end);
        end -= start;
        start = 0;
      } else {
        if (buf.length >= MAX_HEAD) throw new Error("head too large");
        const bigger = new Uint8Array(buf.length * 2);
        bigger.set(buf);
        buf = bigger;
      }
    }
    const n = await conn.read(buf.subarray(end));
    if (n === null) return false;
    end += n;
    return true;
  };
  /** Drops `count` body bytes, buffered ones first. */
  const skip = async (count: number): Promise<boolean> => {
    while (count > 0) {
      if (start === end && !(await fill())) return false;
      const n = Math.min(count, end - start);
      start += n;
      count -= n;
    }
    return true;
  };
  /** Reads a CRLF-terminated line (chunk size or trailer). */
  const line = async (): Promise<string | null> => {
    for (;;) {
      for (let i = start; i + 1 < end; i++) {
        if (buf[i] === 13 && buf[i + 1] === 10) {
          const text = String.fromCharCode(...buf.subarray(start, i));
          start = i + 2;
          return text;
        }
      }
      if (!(await fill())) return null;
    }
  };
  const write = async (bytes: Uint8Array) => {
    let done = 0;
    while (done < bytes.length) done += await conn.write(bytes.subarray(done));
  };
  try {
    conn.setNoDelay(true);
    for (;;) {
      let at = -1;
      while ((at = headEnd(buf, start, end)) < 0) {
        self.idle = start === end;
        if (self.idle && draining) return;
        const more = await fill();
        self.idle = false;
        if (!more) return;
      }
      const head = parseHead(String.fromCharCode(...buf.subarray(start, at - 4)));
      start = at;
      if (draining) head.close = true;
      let received = -1;
      if (head.chunked) {
        received = 0;
        for (;;) {
          const size = await line();
          if (size === null) return;
          const n = parseInt(size, 16);
          if (!(n > 0)) break;
          if (!(await skip(n + 2))) return;
          received += n;
        }
        for (;;) { // trailers, up to the empty line
          const trailer = await line();
          if (trailer === null) return;
          if (trailer === "") break;
        }
      } else if (head.length > 0) {
        if (!(await skip(head.length))) return;
        received = head.length;
      }
      const bytes = /^\/bytes\/(\d+)$/.exec(head.target);
      if (received >= 0) {
        await write(response(`received ${received}\n`, head.close, head.method === "HEAD"));
      } else if (bytes) {
        let left = Number(bytes[1]);
        await write(ascii.encode(
          `HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ndate: ${httpDate()}\r\n` +
            `content-length: ${left}\r\n${head.close ? "connection: close\r\n" : ""}\r\n`,
        ));
        if (head.method !== "HEAD") {
          while (left > 0) {
            const n = Math.min(left, BLOCK.length);
            await write(n === BLOCK.length ? BLOCK : BLOCK.subarray(0, n));
            left -= n;
          }
        }
      } else if (head.close || head.method === "HEAD") {
        await write(response(hello, head.close, head.method === "HEAD"));
      } else {
        // The common case: one cached buffer per second (the Date header changes).
        const second = Math.floor(Date.now() / 1000);
        if (second !== helloSecond) {
          helloSecond = second;
          helloBytes = response(hello, false);
        }
        await write(helloBytes);
      }
      if (head.close) return;
    }
  } catch {
    // reset by the peer, or a head too large: drop the connection
  } finally {
    open.delete(self);
    try {
      conn.close();
    } catch { /* already closed */ }
  }
}

const listeners: Deno.Listener[] = [];

/** Stops accepting, closes idle connections, lets the others finish; exits when all are closed. */
async function drain(): Promise<never> {
  draining = true;
  for (const l of listeners) {
    try {
      l.close();
    } catch { /* already closed */ }
  }
  for (const o of open) {
    if (o.idle) {
      try {
        o.conn.close();
      } catch { /* already closed */ }
    }
  }
  const deadline = Date.now() + 5000;
  while (open.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  Deno.exit(0);
}

/** Listens on `port` (0 = any) and serves until the process ends; resolves to the port. */
export function startBenchBackend(hostname: string, port: number): number {
  const listener = Deno.listen({ hostname, port });
  listeners.push(listener);
  const actual = (listener.addr as Deno.NetAddr).port;
  (async () => {
    while (!draining) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (err) {
        if (draining || err instanceof Deno.errors.BadResource) return; // closed by drain()
        // A client that hung up before it was accepted, or out of descriptors: keep accepting.
        await new Promise((r) =>
          setTimeout(r, err instanceof Deno.errors.ConnectionReset ? 0 : 10)
        );
        continue;
      }
      serveConn(conn, actual);
    }
  })();
  return actual;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      ports: { type: "string", default: "8081,8082,8083" },
      host: { type: "string", default: "127.0.0.1" },
    },
  });
  Deno.addSignalListener("SIGTERM", () => void drain());
  for (const p of values.ports.split(",")) {
    const port = startBenchBackend(values.host, Number(p));
    console.log(`backend listening on http://${values.host}:${port}`);
  }
}
