/**
 * Demo backends: `Hello from backend server on port: N` on every path, like the
 * original walk-through, plus what demos and tests need: `/echo`, a health route
 * that can be switched off, response delays and failure injection.
 *
 *   deno run --allow-net backend.ts --ports 8081,8082,8083 [--delay 200ms] [--fail-rate 0.1]
 */
import { parseArgs } from "node:util";
import { parseDuration } from "./lib/duration.ts";

/** Behaviour of a demo backend. */
export interface BackendOptions {
  hostname?: string;
  /** 0 picks a free port. */
  port: number;
  /** Delay before every answer (ms). */
  delay?: number;
  /** Share of requests (0..1) answered with 500. */
  failRate?: number;
  /** Log each request to stdout. */
  quiet?: boolean;
}

/** A running demo backend. */
export interface DemoBackend {
  readonly port: number;
  /** Whether `/health` answers 200 (true) or 503 (false). */
  healthy: boolean;
  delay: number;
  failRate: number;
  /** Requests answered so far. */
  requests: number;
  shutdown(): Promise<void>;
}

const encoder = new TextEncoder();

/** Starts one demo backend. */
export function startBackend(options: BackendOptions): Promise<DemoBackend> {
  const { promise, resolve } = Promise.withResolvers<DemoBackend>();
  let port = options.port;
  const state = {
    get port() {
      return port;
    },
    healthy: true,
    delay: options.delay ?? 0,
    failRate: options.failRate ?? 0,
    requests: 0,
    shutdown: () => server.shutdown(),
  };
  const server = Deno.serve({
    hostname: options.hostname ?? "127.0.0.1",
    port: options.port,
    onListen(addr) {
      port = addr.port;
      resolve(state);
    },
  }, async (req) => {
    state.requests++;
    const url = new URL(req.url);
    if (state.delay > 0) await new Promise((r) => setTimeout(r, state.delay));
    switch (url.pathname) {
      case "/health":
        return new Response(state.healthy ? "ok\n" : "unhealthy\n", {
          status: state.healthy ? 200 : 503,
        });
      case "/health/off":
        state.healthy = false;
        return new Response("health switched off\n");
      case "/health/on":
        state.healthy = true;
        return new Response("health switched on\n");
      case "/echo":
        return await echo(req);
    }
    if (state.failRate > 0 && Math.random() < state.failRate) {
      return new Response(`Failure injected on port: ${port}\n`, { status: 500 });
    }
    return new Response(`Hello from backend server on port: ${port}\n`);
  });
  return promise;
}

/** Answers with what arrived: method, target, headers in order, body as text and its length. */
async function echo(req: Request): Promise<Response> {
  const bytes = req.body ? new Uint8Array(await req.arrayBuffer()) : new Uint8Array();
  const slash = req.url.indexOf("/", req.url.indexOf("//") + 2);
  const body = JSON.stringify({
    method: req.method,
    target: slash === -1 ? "/" : req.url.slice(slash),
    headers: [...req.headers],
    body: new TextDecoder().decode(bytes),
    bodyLength: bytes.length,
  });
  return new Response(encoder.encode(body), { headers: { "content-type": "application/json" } });
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      ports: { type: "string", default: "8081,8082,8083" },
      host: { type: "string", default: "127.0.0.1" },
      delay: { type: "string", default: "0" },
      "fail-rate": { type: "string", default: "0" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(
      "usage: backend.ts [--ports 8081,8082,8083] [--host 127.0.0.1] [--delay 200ms] [--fail-rate 0.1]",
    );
    Deno.exit(0);
  }
  const ports = values.ports.split(",").map((p) => Number(p.trim()));
  const delay = parseDuration(values.delay);
  const failRate = Number(values["fail-rate"]);
  if (ports.some((p) => !Number.isInteger(p) || p < 0 || p > 65535)) {
    console.error(`--ports: must be a comma-separated list of ports (got ${values.ports})`);
    Deno.exit(1);
  }
  if (delay === undefined) {
    console.error(`--delay: must be a duration such as 200ms (got ${values.delay})`);
    Deno.exit(1);
  }
  if (!(failRate >= 0 && failRate <= 1)) {
    console.error(`--fail-rate: must be a number from 0 to 1 (got ${values["fail-rate"]})`);
    Deno.exit(1);
  }
  for (const port of ports) {
    const b = await startBackend({ hostname: values.host, port, delay, failRate });
    console.log(`backend listening on http://${values.host}:${b.port}`);
  }
}
