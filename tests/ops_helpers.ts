/**
 * Fixtures for the operations tests (reload, access log, request ids): sluice as a real
 * subprocess and controllable backends (raw HTTP/1.1 clients: `RawClient` in proxy_helpers.ts). Everything
 * listens on 127.0.0.1 port 0; waits are on log lines and counters, never fixed sleeps.
 */
import { rawExchange, rawServer, readRequestHead } from "./helpers.ts";
import { type Lines, type MainPermissions, startMain } from "./process_helpers.ts";
const encoder = new TextEncoder();

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

/** sluice running as a subprocess of the test. */
export interface Sluice {
  /** http://127.0.0.1:PORT (the first listener) */
  url: string;
  /** The first listener's port. */
  port: number;
  /** Every listener's port, in `listen` order. */
  ports: number[];
  stderr: Lines;
  stdout: Lines;
  process: Deno.ChildProcess;
  /** Sends a signal. */
  kill(signal: Deno.Signal): void;
  /** SIGTERM, then waits for the exit and the end of both pipes; returns the exit code. */
  stop(): Promise<number>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Options of {@linkcode startSluice}. */
export interface StartSluiceOptions extends Pick<MainPermissions, "ffi"> {
  /**
   * Wait for a first answer (to a malformed request, on the first port) so that the signal
   * handlers are installed; needs a plain HTTP/1.1 first listener. @default true
   */
  settle?: boolean;
  /** How many listeners to wait for (the config's `listen` entries). @default 1 */
  listeners?: number;
}

/**
 * Starts `deno run … main.ts --config FILE ...args` and waits for its listening lines, then
 * (unless `settle` is false) for its first answer, so its signal handlers are installed.
 */
export async function startSluice(
  file: string,
  args: string[] = [],
  { settle = true, listeners = 1, ffi = false }: StartSluiceOptions = {},
): Promise<Sluice> {
  const { proc, port, ports } = await startMain(["--config", file, ...args], {
    write: true,
    ffi,
    listeners,
    timeout: PATIENCE,
  });
  const stop = async () => (await proc.stop("SIGTERM")).code;
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
    ports,
    stderr: proc.stderr,
    stdout: proc.stdout,
    process: proc.child,
    kill: proc.kill,
    stop,
    async [Symbol.asyncDispose]() {
      await stop();
    },
  };
}

/** sluice started by {@linkcode launchSluice}, with the config directory it owns. */
export interface LaunchedSluice extends Sluice {
  /** The config directory: `config.file`, `config.write(next)` (then SIGHUP to apply it). */
  config: ConfigDir;
  /** The admin listener's base URL (http://127.0.0.1:PORT) when the config has `admin`. */
  admin?: string;
  /** The JSON access log records (`accessLog: { format: "json" }`, on stdout) so far. */
  records(): Record<string, unknown>[];
}

/** Options of {@linkcode launchSluice}. */
export interface LaunchOptions extends StartSluiceOptions {
  /** More command-line arguments after `--config FILE`. @default [] */
  args?: string[];
}

/**
 * Writes `config` to a temp dir and starts sluice on it (see {@linkcode startSluice}),
 * waiting for one listening line per `listen` entry and for the admin listener when the config
 * has `admin`. Disposal stops it (SIGTERM, waiting for the exit) and removes the directory.
 */
export async function launchSluice(
  config: Record<string, unknown>,
  { args = [], ...options }: LaunchOptions = {},
): Promise<LaunchedSluice> {
  const dir = await configDir(config);
  let sluice: Sluice | undefined;
  try {
    const listeners = Array.isArray(config.listen) ? config.listen.length : 1;
    sluice = await startSluice(dir.file, args, { listeners, ...options });
    const admin = config.admin ? await adminUrl(sluice) : undefined;
    const { stdout, stop } = sluice;
    return {
      ...sluice,
      config: dir,
      admin,
      records: () => stdout.lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l)),
      async [Symbol.asyncDispose]() {
        await stop();
        await dir[Symbol.asyncDispose]();
      },
    };
  } catch (err) {
    await sluice?.stop();
    await dir[Symbol.asyncDispose]();
    throw err;
  }
}

/** The admin listener's base URL, from its `admin listening on` line. */
export async function adminUrl(sluice: { stderr: Lines }): Promise<string> {
  const pattern = /admin listening on http:\/\/[^\s:"]+:(\d+)/;
  const [line] = await sluice.stderr.waitFor(pattern, 1, PATIENCE);
  return `http://127.0.0.1:${pattern.exec(line)![1]}`;
}

/**
 * Sends SIGHUP and waits for the reload's next `outcome` line (by default the reload applied:
 * `configuration reloaded`); returns it.
 */
export async function sighupReload(
  sluice: Sluice,
  outcome: RegExp = /configuration reloaded/,
): Promise<string> {
  const before = sluice.stderr.matching(outcome).length;
  sluice.kill("SIGHUP");
  const lines = await sluice.stderr.waitFor(outcome, before + 1, PATIENCE);
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
    // /up reads an upload whole before answering, so a limit on the way (413) is met first;
    // elsewhere the body is not wanted.
    if (url.pathname === "/up") await req.arrayBuffer().catch(() => {});
    else await req.body?.cancel();
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
