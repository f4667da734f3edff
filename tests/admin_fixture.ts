/** Shared by the admin, metrics and dashboard tests: a balancer with its admin listener, and API calls. */
import { startBackend } from "../backend.ts";
import { type AdminServer, startAdmin } from "../lib/admin/server.ts";
import {
  backendUrl,
  type DemoBackend,
  startBackends,
  startTestBalancer,
  type TestBalancer,
} from "./helpers.ts";

/** A token long enough for config validation. */
export const TOKEN = "s3cret-admin-token-0123";

/** A balancer, its demo backends and its admin listener, disposed together. */
export interface AdminFixture {
  tb: TestBalancer;
  admin: AdminServer;
  /** http://127.0.0.1:PORT of the admin listener. */
  base: string;
  backends: DemoBackend[];
  /** Calls the admin API; `token: true` sends {@linkcode TOKEN}. */
  call(
    method: string,
    path: string,
    options?: { token?: boolean | string; body?: unknown; raw?: string },
  ): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts demo backends (a count, or one per options entry; named a, b, c, … unless `named` is
 * false), a balancer over them and an admin listener on 127.0.0.1:0 (or `host`).
 */
export async function startAdminFixture(options: {
  token?: string;
  host?: string;
  backends?: number | { delay?: number; failRate?: number }[];
  named?: boolean;
  config?: Record<string, unknown>;
} = {}): Promise<AdminFixture> {
  const spec = options.backends ?? 2;
  const backends = typeof spec === "number"
    ? await startBackends(spec)
    : await Promise.all(spec.map((o) => startBackend({ port: 0, ...o })));
  const tb = await startTestBalancer({
    backends: backends.map((b, i) => ({
      url: backendUrl(b),
      ...(options.named === false ? {} : { name: String.fromCharCode(97 + i) }),
    })),
    ...options.config,
  });
  let admin: AdminServer;
  try {
    admin = await startAdmin(tb.balancer, {
      host: options.host ?? "127.0.0.1",
      port: 0,
      token: options.token,
    });
  } catch (err) {
    await tb.balancer.shutdown();
    await Promise.all(backends.map((b) => b.shutdown()));
    throw err;
  }
  const base = `http://127.0.0.1:${admin.addr.port}`;
  return {
    tb,
    admin,
    base,
    backends,
    async call(method, path, { token, body, raw } = {}) {
      const headers = new Headers();
      if (token) headers.set("authorization", `Bearer ${token === true ? TOKEN : token}`);
      if (body !== undefined || raw !== undefined) headers.set("content-type", "application/json");
      const res = await fetch(base + path, {
        method,
        headers,
        body: raw ?? (body === undefined ? undefined : JSON.stringify(body)),
      });
      const text = await res.text();
      let parsed: Record<string, unknown> = {};
      if (res.headers.get("content-type")?.startsWith("application/json")) {
        parsed = JSON.parse(text);
      }
      return { status: res.status, headers: res.headers, body: parsed };
    },
    async [Symbol.asyncDispose]() {
      await admin.shutdown();
      await tb.balancer.shutdown();
      await Promise.all(backends.map((b) => b.shutdown().catch(() => {})));
    },
  };
}

/** Sends `n` GETs through the balancer, one after another; returns the bodies. */
export async function traffic(url: string, n: number, path = "/"): Promise<string[]> {
  const bodies: string[] = [];
  for (let i = 0; i < n; i++) bodies.push(await (await fetch(url + path)).text());
  return bodies;
}

/** One server-sent event. */
export interface ServerEvent {
  event: string;
  data: string;
}

/** Reads server-sent events from a response body. */
export async function* readEvents(res: Response): AsyncGenerator<ServerEvent> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (data) yield { event, data };
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}
