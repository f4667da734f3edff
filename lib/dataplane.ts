/**
 * The request path of one worker: every front end hands it a client request; it routes the
 * request, answers redirects, direct responses and rate-limit refusals itself, runs the
 * hooks, and forwards the rest to the chosen pool. The table it routes by is one immutable
 * value, swapped whole on reload: a request sees the old table or the new one, never a mix.
 */
import { clientAddress, forwardHead } from "./forwarding.ts";
import { derivedRequest, FRAMING, fromResponse, HookedRequest, type Hooks } from "./hooks.ts";
import type { Logger } from "./log.ts";
import {
  type ClientRequest,
  cookieValue,
  protocolOf,
  REASONS,
  type Reply,
  textReply,
} from "./message.ts";
import {
  Forwarder,
  type Outbound,
  type PoolRuntime,
  type ProxyObserver,
  type RequestRecord,
} from "./proxy.ts";
import { type HeaderEdits, type Route, type Router, stripPrefix } from "./router.ts";
import { httpDate } from "./http1/wire.ts";
import { RequestBody } from "./upstream/request_body.ts";
import { MATCH_NONE } from "./cidr.ts";

/** `crypto`, looked up once: the global is an accessor, and `randomUUID()` cost a third more through it. */
const random = crypto;

/** What the request path routes by; replaced whole on reload. */
export interface Table {
  readonly router: Router;
  readonly pools: ReadonlyMap<string, PoolRuntime>;
  readonly hooks: Hooks | undefined;
  /** Peers whose X-Forwarded-For is believed. */
  readonly trusted: (ip: string) => boolean;
  /** Request body bytes kept so a request can be retried. */
  readonly retryBuffer: number;
  /** Bodies up to this size are read whole before a backend is chosen (0: stream). */
  readonly requestBuffering: number;
}

/** Parts the request path reports to. */
export interface DataPlaneParts {
  log: Logger;
  /** Told about every finished request, upstream failure and retry. */
  observers(): readonly ProxyObserver[];
}

/** Answers client requests: the handler every front end calls. */
export class DataPlane {
  readonly #forwarder: Forwarder;

  constructor(public table: Table, readonly parts: DataPlaneParts) {
    this.#forwarder = new Forwarder({
      log: parts.log,
      observers: parts.observers,
      complete: this.#complete,
    });
  }

  /**
   * Answers one request. Routing and the balancer's own answers are synchronous; a request with
   * nothing to await before it goes upstream (no hooks, rewrites, buffering or response edits:
   * the common case) is handed to the forwarder without an async frame of its own.
   */
  handle = (req: ClientRequest): Reply | Promise<Reply> => {
    const table = this.table;
    const time = Date.now();
    const started = performance.now();
    const ip = table.trusted === MATCH_NONE ? req.ip : clientAddress(req, table.trusted);
    const record: RequestRecord = {
      time,
      ip,
      method: req.method,
      target: req.target,
      protocol: protocolOf(req),
      status: 0,
      bytes: 0,
      durationMs: 0,
      upstreamMs: 0,
      pool: "",
      route: "",
      backend: undefined,
      answered: false,
      retries: 0,
      requestId: "",
      error: undefined,
      request: req,
    };
    const route = table.router.match(req, ip);
    let pool: string | undefined;
    if (route) {
      record.route = route.label;
      // Before the action: a limit on a redirect or respond route holds too.
      if (route.rateLimit) {
        const { limiter, key } = route.rateLimit;
        const value = key === undefined ? ip : req.header(key);
        const wait = value === undefined ? 0 : limiter.take(value, time);
        if (wait > 0) {
          const seconds = String(Math.max(1, Math.ceil(wait / 1000)));
          const reply = textReply(429, "Too Many Requests\n", [["retry-after", seconds]]);
          return this.#own(record, started, reply);
        }
      }
      const action = route.action;
      if (action.kind === "redirect") {
        return this.#own(record, started, redirect(req, action.to, action.status));
      }
      if (action.kind === "respond") {
        const reply: Reply = {
          status: action.status,
          reason: REASONS[action.status] ?? "",
          headers: [["content-type", action.contentType], ["date", httpDate()]],
          length: action.body.length,
          body: action.body,
        };
        return this.#own(record, started, reply);
      }
      pool = action.pool;
    }
    const hooks = table.hooks;
    if (
      hooks === undefined && route?.strip === undefined && !route?.requestHeaders &&
      !route?.responseHeaders && (req.body === null || table.requestBuffering === 0)
    ) {
      if (pool === undefined) return this.#noRoute(record, started);
      const prepared = this.#prepare(table, req, req, pool, record, started);
      return "status" in prepared ? prepared : this.#forwarder.forward(prepared.rt, prepared.out);
    }
    return this.#handleSlowly(table, req, record, route, pool, started);
  };

  /** The rest of `handle` for requests with hooks, rewrites, request buffering or response edits. */
  async #handleSlowly(
    table: Table,
    req: ClientRequest,
    record: RequestRecord,
    route: Route | undefined,
    pool: string | undefined,
    started: number,
  ): Promise<Reply> {
    const ip = record.ip;
    // The route's rewrites come first: hooks see the request as the backend would, and their
    // changes are the last word (a route's prefix is never stripped from a hook's new path).
    let request = req;
    if (route?.strip !== undefined || route?.requestHeaders) request = rewritten(req, route);
    let state: Record<string, unknown> | undefined;
    const hooks = table.hooks;
    if (hooks?.onRequest) {
      record.requestId = requestIdOf(req);
      const hooked = new HookedRequest(request, request.target, ip, record.requestId);
      const ctx = { pool, route: record.route, requestId: record.requestId, state: {} };
      let answer: Response | void | undefined;
      try {
        answer = await hooks.onRequest(hooked, ctx);
      } catch (err) {
        return this.#hookFailed(record, started, "onRequest", err);
      }
      state = ctx.state;
      if (answer instanceof Response) {
        const { status, headers, body } = fromResponse(answer);
        headers.push(["x-request-id", record.requestId]);
        return this.#own(record, started, { status, reason: "", headers, length: -1, body });
      }
      if (answer !== undefined) {
        return this.#hookFailed(
          record,
          started,
          "onRequest",
          new TypeError("onRequest must return a Response or nothing"),
        );
      }
      pool = ctx.pool;
      request = hooked.result();
    }
    if (pool === undefined) return this.#noRoute(record, started);
    const prepared = this.#prepare(table, req, request, pool, record, started);
    if ("status" in prepared) return prepared;
    const body = prepared.out.body;
    if (body && table.requestBuffering > 0) {
      // Read a small body whole before any backend is chosen: a slow uploader then holds no
      // backend connection.
      try {
        await body.prefetch(table.requestBuffering);
      } catch {
        record.error = "client request body failed";
        const status = body.tooLarge ? 413 : 400;
        const text = status === 413 ? "Content Too Large\n" : "Bad Request\n";
        return this.#own(record, started, textReply(status, text, [["connection", "close"]]));
      }
    }
    const reply = await this.#forwarder.forward(prepared.rt, prepared.out);
    if (!record.answered) return reply;
    if (route?.responseHeaders) applyEdits(reply.headers, route.responseHeaders);
    if (hooks?.onResponse) {
      const headers = new Headers();
      try {
        for (const [name, value] of reply.headers) headers.append(name, value);
        await hooks.onResponse({ status: reply.status, headers }, {
          pool,
          route: record.route,
          requestId: record.requestId,
          backend: { name: record.backend!.id, url: record.backend!.url },
          state: state ?? {},
        });
      } catch (err) {
        if (reply.body instanceof ReadableStream) reply.body.cancel().catch(() => {});
        reply.release?.();
        reply.tunnel?.done(0, 0, "hook onResponse failed");
        this.parts.log.error("hook onResponse failed", {
          requestId: record.requestId,
          error: String((err as Error)?.stack ?? err),
        });
        return textReply(500, "Internal Server Error\n", [["x-request-id", record.requestId]]);
      }
      const out: [string, string][] = [];
      headers.forEach((value, name) => {
        if (name !== "set-cookie" && !FRAMING.has(name)) out.push([name, value]);
      });
      for (const cookie of headers.getSetCookie()) out.push(["set-cookie", cookie]);
      reply.headers = out;
    }
    return reply;
  }

  /** 404 for a request no route matched. */
  #noRoute(record: RequestRecord, started: number): Reply {
    record.requestId ||= requestIdOf(record.request);
    const reply = textReply(404, "Not Found: no route matches this request\n", [[
      "x-request-id",
      record.requestId,
    ]]);
    return this.#own(record, started, reply);
  }

  /**
   * What goes upstream for `request` (the client's `req` as rewritten) to `pool`, or the reply
   * when the pool is unknown.
   */
  #prepare(
    table: Table,
    req: ClientRequest,
    request: ClientRequest,
    pool: string,
    record: RequestRecord,
    started: number,
  ): Reply | { rt: PoolRuntime; out: Outbound } {
    const rt = table.pools.get(pool);
    if (!rt) {
      return this.#hookFailed(record, started, "onRequest", new Error(`no pool named ${pool}`));
    }
    record.pool = pool;
    const forward = forwardHead(
      request,
      req.ip,
      req.tls ? "https" : "http",
      record.requestId || undefined,
      table.trusted,
    );
    if (!record.requestId) {
      record.requestId = forward.requestId ?? random.randomUUID();
      if (forward.requestId === undefined) {
        forward.text += "x-request-id: " + record.requestId + "\r\n";
      }
    }
    const sticky = rt.settings.sticky;
    return {
      rt,
      out: {
        head: forward.text,
        hasHost: forward.hasHost,
        chunked: forward.chunked,
        body: req.body
          ? new RequestBody(req.body, Math.max(table.retryBuffer, table.requestBuffering))
          : null,
        select: {
          request,
          ip: record.ip,
          target: request.target,
          pinned: sticky ? cookieValue(req.header("cookie"), sticky.cookie) : undefined,
        },
        record,
        started,
      },
    };
  }

  /** A reply the balancer makes itself: the request is over once it is handed back. */
  #own(record: RequestRecord, started: number, reply: Reply): Reply {
    record.requestId ||= requestIdOf(record.request);
    if (!reply.headers.some(([name]) => name === "x-request-id")) {
      reply.headers.push(["x-request-id", record.requestId]);
    }
    record.status = reply.status;
    record.bytes = reply.body instanceof Uint8Array ? reply.body.length : 0;
    this.#complete(record, started);
    return reply;
  }

  #hookFailed(record: RequestRecord, started: number, hook: string, err: unknown): Reply {
    record.requestId ||= requestIdOf(record.request);
    record.error = `hook ${hook} failed`;
    this.parts.log.error(`hook ${hook} failed`, {
      requestId: record.requestId,
      error: String((err as Error)?.stack ?? err),
    });
    record.request.body?.cancel().catch(() => {});
    return this.#own(record, started, textReply(500, "Internal Server Error\n"));
  }

  #complete = (record: RequestRecord, started: number): void => {
    record.durationMs = performance.now() - started;
    for (const o of this.parts.observers()) o.request(record);
  };
}

/** The client's non-empty X-Request-Id, or a new one. */
function requestIdOf(req: ClientRequest): string {
  const given = req.header("x-request-id");
  return given ? given.split(",")[0].trim() || random.randomUUID() : random.randomUUID();
}

function redirect(req: ClientRequest, to: string, status: number): Reply {
  const q = req.target.indexOf("?");
  let location = to;
  if (q !== -1) {
    // The query goes before a fragment in `to` (after it, it would be part of the fragment).
    const hash = to.indexOf("#");
    const base = hash === -1 ? to : to.slice(0, hash);
    location = base + (base.includes("?") ? "&" : "?") + req.target.slice(q + 1) +
      (hash === -1 ? "" : to.slice(hash));
  }
  const reply = textReply(status, `Redirecting to ${location}\n`);
  reply.headers.push(["location", location]);
  return reply;
}

/** The request with a route's prefix stripped and its header edits applied. */
function rewritten(req: ClientRequest, route: Route): ClientRequest {
  const target = route.strip !== undefined ? stripPrefix(req.target, route.strip) : req.target;
  const edits = route.requestHeaders;
  if (!edits) return derivedRequest(req, { target });
  const names: string[] = [];
  const keys: string[] = [];
  const values: string[] = [];
  for (let i = 0; i < req.keys.length; i++) {
    if (edits.remove.has(req.keys[i])) continue;
    names.push(req.names[i]);
    keys.push(req.keys[i]);
    values.push(req.values[i]);
  }
  for (const [name, value] of edits.set) {
    names.push(name);
    keys.push(name.toLowerCase());
    values.push(value);
  }
  return derivedRequest(req, { target, names, keys, values });
}

/** Applies header edits to a reply's header list in place. */
function applyEdits(headers: [string, string][], edits: HeaderEdits): void {
  for (let i = headers.length - 1; i >= 0; i--) {
    if (edits.remove.has(headers[i][0].toLowerCase())) headers.splice(i, 1);
  }
  for (const [name, value] of edits.set) headers.push([name, value]);
}
