/**
 * Fixtures for the operations tests (reload, access log, request ids): sluice as a real
 * subprocess, controllable backends and a raw keep-alive HTTP/1.1 client. Everything
 * listens on 127.0.0.1 port 0; waits are on log lines and counters, never fixed sleeps.
 */
import { rawExchange, rawServer, readRequestHead, waitFor } from "./helpers.ts";

const ROOT = new URL("../", import.meta.url);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Generous limit for conditions on a busy 2-core machine. */
export const PATIENCE = 30_000;

/** A temporary directory holding a config file (and whatever else a test writes there). */
export interface ConfigDir {
  dir: string;
  /** The config file: `config.json` (JSON is valid YAML too). */
  file: string;
  /** Replaces the config atomically: write a sibling, then rename over (no half-written reads). */
  write(config: unknown): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Creates a temp dir with `config.json` holding `config`. */
export async function configDir(config: unknown): Promise<ConfigDir> {
  const dir = await Deno.makeTempDir({ prefix: "sluice_ops_" });
  const file = `${dir}/config.json`;
  let n = 0;
  const write = async (value: unknown) => {
    const tmp = `${dir}/.config.${n++}.tmp`;
    await Deno.writeTextFile(tmp, typeof value === "string" ? value : JSON.stringify(value));
    await Deno.rename(tmp, file);
  };
  await write(config);
  return {
    dir,
    file,
    write,
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Collected lines of one output stream of the subprocess. */
class Lines {
  readonly lines: string[] = [];
  readonly done: Promise<void>;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      let rest = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        rest += chunk;
        const parts = rest.split("\n");
        rest = parts.pop()!;
        this.lines.push(...parts);
      }
      if (rest) this.lines.push(rest);
    })();
  }

  /** Lines matching `pattern`. */
  matching(pattern: RegExp): string[] {
    return this.lines.filter((l) => pattern.test(l));
  }

  /** Waits until at least `count` lines match `pattern`; returns the matching lines. */
  async waitFor(pattern: RegExp, count = 1, timeout = PATIENCE): Promise<string[]> {
    try {
      await waitFor(() => this.matching(pattern).length >= count, "", timeout);
    } catch {
      throw new Error(
        `timed out waiting for ${count} line(s) matching ${pattern}; got:\n${
          this.lines.join("\n")
        }`,
      );
    }
    return this.matching(pattern);
  }
}

/** sluice running as a subprocess of the test. */
export interface Sluice {
  /** http://127.0.0.1:PORT */
  url: string;
  port: number;
  stderr: Lines;
  stdout: Lines;
  process: Deno.ChildProcess;
  /** Sends a signal. */
  kill(signal: Deno.Signal): void;
  /** SIGTERM, then waits for the exit and the end of both pipes; returns the exit code. */
  stop(): Promise<number>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts `deno run … main.ts --config FILE ...args` and waits for its listening line, then
 * (unless `settle` is false) for its first answer, so its signal handlers are installed.
 */
export async function startSluice(
  file: string,
  args: string[] = [],
  { settle = true } = {},
): Promise<Sluice> {
  const process = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-read",
      "--allow-write",
      "--allow-env=LOG_TOKENS,LOG_STREAM",
      "main.ts",
      "--config",
      file,
      ...args,
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Lines(process.stderr);
  const stdout = new Lines(process.stdout);
  let stopped: Promise<number> | undefined;
  const stop = () =>
    stopped ??= (async () => {
      try {
        process.kill("SIGTERM");
      } catch { /* already exited */ }
      const status = await process.status;
      await Promise.all([stderr.done, stdout.done]);
      return status.code;
    })();
  const listening = /sluice listening on http:\/\/127\.0\.0\.1:(\d+)/;
  try {
    await waitFor(
      async () => {
        if (stderr.matching(listening).length) return true;
        // Fail fast if it exited instead of listening.
        const exited = await Promise.race([
          process.status.then(() => true),
          new Promise<false>((r) => setTimeout(() => r(false), 0)),
        ]);
        if (exited) throw new Error(`sluice exited early:\n${stderr.lines.join("\n")}`);
        return false;
      },
      "sluice to listen",
      PATIENCE,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  const port = Number(listening.exec(stderr.matching(listening)[0])![1]);
  if (settle) {
    // main.ts installs its SIGHUP handler after the listening line; one turn of its event
    // loop later it is there. A malformed request is answered 400 by the HTTP server
    // itself: no backend is involved and no access log line is written.
    const answer = await rawExchange(port, "BAD\r\n\r\n", PATIENCE);
    if (!answer.startsWith("HTTP/1.1 400")) {
      await stop();
      throw new Error(`unexpected answer to a malformed request: ${answer}`);
    }
  }
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    stderr,
    stdout,
    process,
    kill: (signal) => process.kill(signal),
    stop,
    async [Symbol.asyncDispose]() {
      await stop();
    },
  };
}

/** Sends SIGHUP and waits for the reload to be applied (the n-th `configuration reloaded` line). */
export async function sighupReload(sluice: Sluice): Promise<string> {
  const before = sluice.stderr.matching(/configuration reloaded/).length;
  sluice.kill("SIGHUP");
  const lines = await sluice.stderr.waitFor(/configuration reloaded/, before + 1);
  return lines[before];
}

/** A backend the test controls: answers with its name, holds `/hold` requests until released. */
export interface TestBackend {
  name: string;
  port: number;
  url: string;
  /** Requests answered on `/` (and other plain paths) so far. */
  hits: number;
  /** `/hold` requests that arrived and wait for {@linkcode TestBackend.release}. */
  held: number;
  /** Whether `/health` answers 200 (or 503). */
  healthy: boolean;
  /** Lets every held request (and later ones) answer. */
  release(): void;
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts a backend on 127.0.0.1:0. Routes: `/health` (200 or 503), `/echo` (the request's
 * headers as JSON), `/hold` (waits until released, then `held by NAME`), anything else
 * answers `NAME` after an optional `?delay=MS`.
 */
export function startTestBackend(name: string): Promise<TestBackend> {
  const { promise, resolve } = Promise.withResolvers<TestBackend>();
  let gate = Promise.withResolvers<void>();
  let released = false;
  // deno-lint-ignore prefer-const
  let server: Deno.HttpServer | undefined;
  const backend: TestBackend = {
    name,
    port: 0,
    url: "",
    hits: 0,
    held: 0,
    healthy: true,
    release() {
      released = true;
      gate.resolve();
      gate = Promise.withResolvers();
    },
    async close() {
      backend.release();
      await server?.shutdown();
    },
    [Symbol.asyncDispose]() {
      return backend.close();
    },
  };
  server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen(addr) {
      backend.port = addr.port;
      backend.url = `http://127.0.0.1:${addr.port}`;
      resolve(backend);
    },
  }, async (req) => {
    const url = new URL(req.url);
    await req.body?.cancel();
    switch (url.pathname) {
      case "/health":
        return new Response(backend.healthy ? "ok" : "unhealthy", {
          status: backend.healthy ? 200 : 503,
        });
      case "/echo":
        return Response.json({ name, headers: [...req.headers] });
      case "/hold":
        backend.held++;
        if (!released) await gate.promise;
        return new Response(`held by ${name}`);
    }
    const delay = Number(url.searchParams.get("delay") ?? 0);
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    backend.hits++;
    return new Response(name);
  });
  return promise;
}

/** Starts backends named `names`; disposing the result closes them all. */
export async function startTestBackends(
  ...names: string[]
): Promise<TestBackend[] & AsyncDisposable> {
  const list = await Promise.all(names.map(startTestBackend)) as TestBackend[] & AsyncDisposable;
  list[Symbol.asyncDispose] = async () => {
    await Promise.all(list.map((b) => b.close()));
  };
  return list;
}

/** Sends GET `path` and returns the status, body text and headers. */
export async function get(
  url: string,
  headers?: HeadersInit,
): Promise<{ status: number; body: string; headers: Headers }> {
  const res = await fetch(url, { headers });
  return { status: res.status, body: await res.text(), headers: res.headers };
}

/** Counts `n` sequential GET responses by body text. */
export async function tally(
  url: string,
  n: number,
  headers?: HeadersInit,
): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const { status, body } = await get(url, headers);
    const key = status === 200 ? body : `status ${status}`;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}

/**
 * A backend that passes health checks (`GET /health`) but fails every other request:
 * `close` drops the connection once the request arrived (the balancer answers 502),
 * `hang` never answers (504 once `timeouts.response` runs out).
 */
export function startBrokenBackend(mode: "close" | "hang"): {
  url: string;
  port: number;
  close(): void;
  [Symbol.dispose](): void;
} {
  const server = rawServer(async (conn) => {
    const head = await readRequestHead(conn);
    if (head.startsWith("GET /health ")) {
      await conn.write(
        encoder.encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"),
      );
      return;
    }
    if (mode === "hang") {
      // Wait for the balancer to give up and close the connection.
      const buf = new Uint8Array(1024);
      while ((await conn.read(buf)) !== null) { /* discard */ }
    }
  });
  return { ...server, [Symbol.dispose]: server.close };
}

/** A response read off a raw connection. */
export interface RawResponse {
  status: number;
  headers: Map<string, string>;
  body: string;
}

/**
 * An HTTP/1.1 client on one TCP connection, sending requests one after another
 * (keep-alive), so a test can tell whether the connection survived.
 */
export class KeepAliveClient {
  #buf: Uint8Array = new Uint8Array(0);
  #connClosed = false;
  /** Set once either side closed the connection. */
  closed = false;

  private constructor(readonly conn: Deno.TcpConn) {}

  static async connect(port: number): Promise<KeepAliveClient> {
    return new KeepAliveClient(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  /** Sends GET `target` and reads the whole response. */
  async get(target: string, headers: Record<string, string> = {}): Promise<RawResponse> {
    let head = `GET ${target} HTTP/1.1\r\nhost: 127.0.0.1\r\n`;
    for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
    await this.#writeAll(encoder.encode(head + "\r\n"));
    const headEnd = await this.#fill((b) => indexOfCrlfCrlf(b));
    const lines = decoder.decode(this.#take(headEnd + 4)).split("\r\n");
    const status = Number(lines[0].split(" ")[1]);
    const map = new Map<string, string>();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon > 0) map.set(line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim());
    }
    let body: Uint8Array;
    if (map.get("transfer-encoding")?.toLowerCase() === "chunked") {
      const parts: Uint8Array[] = [];
      for (;;) {
        const lineEnd = await this.#fill((b) => indexOfCrlf(b));
        const size = parseInt(decoder.decode(this.#take(lineEnd + 2)), 16);
        if (size === 0) {
          // Skip trailers up to the blank line.
          for (;;) {
            const end = await this.#fill((b) => indexOfCrlf(b));
            if (this.#take(end + 2).length === 2) break;
          }
          break;
        }
        await this.#fill((b) => (b.length >= size + 2 ? size : -1));
        parts.push(this.#take(size + 2).subarray(0, size));
      }
      body = concatBytes(parts);
    } else {
      const length = Number(map.get("content-length") ?? 0);
      await this.#fill((b) => (b.length >= length ? length : -1));
      body = this.#take(length);
    }
    if (map.get("connection")?.toLowerCase() === "close") this.closed = true;
    return { status, headers: map, body: decoder.decode(body) };
  }

  /** Closes the connection. */
  close(): void {
    if (this.#connClosed) return;
    this.#connClosed = true;
    this.closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    let written = 0;
    while (written < bytes.length) written += await this.conn.write(bytes.subarray(written));
  }

  /** Reads until `found(buffer)` returns an index >= 0; returns it. */
  async #fill(found: (b: Uint8Array) => number): Promise<number> {
    for (;;) {
      const at = found(this.#buf);
      if (at >= 0) return at;
      const chunk = new Uint8Array(16 * 1024);
      const n = await this.conn.read(chunk);
      if (n === null) {
        this.closed = true;
        throw new Error("connection closed by the balancer");
      }
      this.#buf = concatBytes([this.#buf, chunk.subarray(0, n)]);
    }
  }

  #take(n: number): Uint8Array {
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }
}

function indexOfCrlf(b: Uint8Array): number {
  for (let i = 0; i + 1 < b.length; i++) if (b[i] === 13 && b[i + 1] === 10) return i;
  return -1;
}

function indexOfCrlfCrlf(b: Uint8Array): number {
  for (let i = 0; i + 3 < b.length; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}

function concatBytes(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
