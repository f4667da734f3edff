/** Shared test fixtures: real backends and balancers on 127.0.0.1 port 0, raw sockets, waiting on conditions. */
import { type DemoBackend, startBackend } from "../backend.ts";
import { type Balancer, startBalancer } from "../lib/balancer.ts";
import { validateConfig } from "../lib/config.ts";
import { Logger } from "../lib/log.ts";
import { parseRequestHead } from "../lib/listener/request.ts";
import type { ClientRequest } from "../lib/message.ts";
import assert from "node:assert/strict";
import { TEST_WORKERS } from "./process_helpers.ts";

export type { DemoBackend };

/** Starts `n` demo backends on free ports. */
export function startBackends(
  n: number,
  options: { delay?: number; failRate?: number } = {},
): Promise<DemoBackend[]> {
  return Promise.all(Array.from({ length: n }, () => startBackend({ port: 0, ...options })));
}

/** A balancer on a free port, plus the log lines it wrote. */
export interface TestBalancer {
  balancer: Balancer;
  url: string;
  logs: string[];
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts a balancer in-process from raw config (validated like a file); listens on
 * 127.0.0.1:0, health checks every minute unless the config says otherwise.
 */
export async function startTestBalancer(raw: Record<string, unknown>): Promise<TestBalancer> {
  const health = (raw.health ?? {}) as Record<string, unknown>;
  const config = validateConfig({
    workers: TEST_WORKERS,
    ...raw,
    listen: Array.isArray(raw.listen)
      ? raw.listen
      : { host: "127.0.0.1", port: 0, ...(raw.listen as object ?? {}) },
    health: { interval: "1m", ...health },
    log: { level: "debug", ...(raw.log as object ?? {}) },
  });
  const logs: string[] = [];
  const log = new Logger(config.log.level, "text", (line) => logs.push(line));
  const balancer = await startBalancer(config, log);
  return {
    balancer,
    url: `http://127.0.0.1:${balancer.addr.port}`,
    logs,
    async [Symbol.asyncDispose]() {
      await balancer.shutdown();
    },
  };
}

/** The URL of a demo backend. */
export function backendUrl(b: DemoBackend): string {
  return `http://127.0.0.1:${b.port}`;
}

/** Polls `check` every 10 ms until it returns true; fails after `timeout` ms with `what`. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeout = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A raw TCP server on 127.0.0.1:0 that hands each connection to `handle` (for malformed backends). */
export function rawServer(handle: (conn: Deno.Conn) => Promise<void>): {
  port: number;
  url: string;
  close(): void;
} {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  (async () => {
    try {
      for await (const conn of listener) {
        conns.add(conn);
        handle(conn).catch(() => {}).finally(() => {
          conns.delete(conn);
          try {
            conn.close();
          } catch { /* closed by the handler */ }
        });
      }
    } catch { /* listener closed */ }
  })();
  const port = (listener.addr as Deno.NetAddr).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* already closed */ }
      }
    },
  };
}

/** Reads from `conn` until the request head (CRLFCRLF) arrived; returns it as text. */
export async function readRequestHead(conn: Deno.Conn): Promise<string> {
  const buf = new Uint8Array(65536);
  let len = 0;
  for (;;) {
    const n = await conn.read(buf.subarray(len));
    if (n === null) return new TextDecoder().decode(buf.subarray(0, len));
    len += n;
    const text = new TextDecoder().decode(buf.subarray(0, len));
    if (text.includes("\r\n\r\n")) return text;
  }
}

/** Sends raw bytes to host:port and returns everything received until the peer closes (or `timeout`). */
export async function rawExchange(port: number, request: string, timeout = 5_000): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(request));
  const chunks: Uint8Array[] = [];
  const timer = setTimeout(() => conn.close(), timeout);
  try {
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
  } catch {
    /* closed by the timer */
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* already closed */ }
  }
  return new TextDecoder().decode(concat(chunks));
}

/** Concatenates byte arrays. */
export function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.length;
  }
  return out;
}

/** Writes `text` to `name` in a fresh temp dir, runs `use` on its path, then removes the dir. */
export async function withFile<T>(
  name: string,
  text: string,
  use: (path: string) => Promise<T>,
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "sluice-test-" });
  try {
    const path = `${dir}/${name}`;
    await Deno.writeTextFile(path, text);
    return await use(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Waits until `file` exists and holds at least `n` non-empty lines; returns them. */
export async function fileLines(file: string, n: number, timeout = 30_000): Promise<string[]> {
  let lines: string[] = [];
  await waitFor(
    async () => {
      try {
        lines = (await Deno.readTextFile(file)).split("\n").filter((l) => l !== "");
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      }
      return lines.length >= n;
    },
    `${n} line(s) in ${file}`,
    timeout,
  );
  return lines;
}

/** A parsed client request from its head text ("GET / HTTP/1.1\r\nHost: h\r\n\r\n"). */
export function clientRequest(head: string, ip = "127.0.0.1", port = 50000): ClientRequest {
  assert.ok(head.endsWith("\r\n\r\n"), "a head ends with an empty line");
  return parseRequestHead(new TextEncoder().encode(head.slice(0, -2)), ip, port);
}
