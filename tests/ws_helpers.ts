/**
 * A real WebSocket echo server and client for tests: tests/ws_peer.py on Debian's
 * python3-websockets (10.4), so frames, masking, permessage-deflate, pings and close codes come
 * from an independent implementation. Point the client at any ws:// or wss:// URL (a backend
 * directly, or sluice in front of it).
 */

/** The interpreter that has Debian's python3-websockets (not a pyenv one). */
export const PYTHON = "/usr/bin/python3";
const PEER = new URL("./ws_peer.py", import.meta.url).pathname;

/** What the client saw; see tests/ws_peer.py. */
export interface WsReport {
  ok: boolean;
  sent: number;
  echoed: number;
  mismatches: number;
  bytes: number;
  subprotocol: string | null;
  extensions: string | null;
  pong: boolean;
  close_code: number | null;
  close_reason: string | null;
  whoami: { path: string; headers: [string, string][]; subprotocol: string | null } | null;
  error: string | null;
}

/** Options of {@linkcode runWsClient}. */
export interface WsClientOptions {
  /** Messages to echo, mixed text and binary sizes. @default 1000 */
  messages?: number;
  /** Seed of the message sizes and contents. @default 1 */
  seed?: number;
  /** Subprotocols to offer. @default [] */
  subprotocols?: string[];
  /** Offer permessage-deflate. @default true */
  compression?: boolean;
  /** The close code to ask the server to close with. @default 4001 */
  closeCode?: number;
  /** Ask the server for the request it saw (path, headers). @default false */
  whoami?: boolean;
  /** CA certificate file to trust for wss://. @default system store */
  caFile?: string;
  /** Give up after this long, ms. @default 120000 */
  timeout?: number;
}

/** Options of {@linkcode startWsEchoServer}. */
export interface WsServerOptions {
  /** Subprotocols the server accepts, in its order of preference. @default [] */
  subprotocols?: string[];
  /** Accept permessage-deflate. @default true */
  compression?: boolean;
}

/** A running echo server. */
export interface WsEchoServer {
  readonly port: number;
  /** `ws://127.0.0.1:<port>` */
  readonly url: string;
  close(): Promise<void>;
}

let available: Promise<string | undefined> | undefined;

/**
 * Undefined when python3-websockets can be used, else why not; installs the Debian package
 * (as root) when it is missing.
 */
export function wsUnavailable(): Promise<string | undefined> {
  return available ??= (async () => {
    if (await canImport()) return undefined;
    try {
      const out = await new Deno.Command("apt-get", {
        args: ["install", "-y", "-qq", "python3-websockets"],
        stdout: "null",
        stderr: "piped",
      }).output();
      if (!out.success) return "apt-get install python3-websockets failed";
    } catch (err) {
      return `python3-websockets missing and apt-get unavailable: ${err}`;
    }
    return await canImport() ? undefined : "python3-websockets not importable after install";
  })();
}

async function canImport(): Promise<boolean> {
  try {
    const out = await new Deno.Command(PYTHON, {
      args: ["-c", "import websockets"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}

/** Starts the echo server on 127.0.0.1 (a free port) and waits until it listens. */
export async function startWsEchoServer(options: WsServerOptions = {}): Promise<WsEchoServer> {
  const args = [PEER, "server"];
  if (options.subprotocols?.length) args.push("--subprotocols", options.subprotocols.join(","));
  if (options.compression === false) args.push("--no-compression");
  const child = new Deno.Command(PYTHON, { args, stdout: "piped", stderr: "inherit" }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let port = 0;
  while (!port) {
    const { value, done } = await reader.read();
    if (done) {
      await child.status;
      throw new Error(`ws_peer.py server exited before listening: ${text}`);
    }
    text += value;
    const match = text.match(/LISTENING (\d+)/);
    if (match) port = Number(match[1]);
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  (async () => {
    while (!(await reader.read()).done) { /* nothing else is printed */ }
  })().catch(() => {});
  return {
    port,
    url: `ws://127.0.0.1:${port}`,
    async close() {
      try {
        child.kill("SIGTERM");
      } catch {
        // already gone
      }
      await child.status;
    },
  };
}

/** Runs the client against `url` and returns its report (never throws for a failed exchange). */
export async function runWsClient(url: string, options: WsClientOptions = {}): Promise<WsReport> {
  const args = [PEER, "client", "--url", url];
  args.push("--messages", String(options.messages ?? 1000), "--seed", String(options.seed ?? 1));
  if (options.subprotocols?.length) args.push("--subprotocols", options.subprotocols.join(","));
  if (options.compression === false) args.push("--no-compression");
  if (options.closeCode !== undefined) args.push("--close-code", String(options.closeCode));
  if (options.whoami) args.push("--whoami");
  if (options.caFile) args.push("--cafile", options.caFile);
  const signal = AbortSignal.timeout(options.timeout ?? 120_000);
  const out = await new Deno.Command(PYTHON, { args, stdout: "piped", stderr: "piped", signal })
    .output();
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  try {
    return JSON.parse(lines[lines.length - 1]) as WsReport;
  } catch {
    throw new Error(
      `ws_peer.py client printed no report (exit ${out.code}): ${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  }
}
