/**
 * Forwarding one request through one pool: take candidates best-first, hold a permit per
 * attempt, send over the upstream client, retry what the failure allows and the budget
 * permits, and account for the outcome.
 */
import type { Logger } from "./log.ts";
import { type ClientRequest, type Reply, textReply } from "./message.ts";
import type { PassiveHealth } from "./outlier.ts";
import type { Backend, Pool } from "./pool.ts";
import type { SlotQueue } from "./queue.ts";
import type { RetryBudget } from "./retry_budget.ts";
import type { SelectContext, Selector } from "./select/mod.ts";
import { stickyCookie, type StickyOptions } from "./select/sticky.ts";
import { CLIENT_CLOSED, exchange } from "./upstream/client.ts";
import { IDEMPOTENT_METHODS } from "./http1/wire.ts";
import { UpstreamError } from "./upstream/errors.ts";
import type { RequestBody } from "./upstream/request_body.ts";

/** A pool's settings the proxy reads per request; a reload swaps the whole object. */
export interface PoolSettings {
  selector: Selector;
  retries: number;
  retryOn: ReadonlySet<number>;
  responseTimeout: number;
  sticky: StickyOptions | undefined;
}

/** A pool as the request path uses it: its backends, settings, and shared budget and queue. */
export interface PoolRuntime {
  readonly pool: Pool;
  settings: PoolSettings;
  readonly budget: RetryBudget;
  readonly queue: SlotQueue;
  readonly passive: PassiveHealth;
}

/** Everything known about one client request once it is over. */
export interface RequestRecord {
  /** Start time, ms since epoch. */
  time: number;
  /** The client's address. */
  ip: string;
  method: string;
  /** The target as the client sent it. */
  target: string;
  /** `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`. */
  protocol: string;
  /** Status sent to the client. */
  status: number;
  /** Body bytes sent to the client. */
  bytes: number;
  /** Whole request, ms. */
  durationMs: number;
  /** Until the chosen backend's response head, ms (0 without a backend). */
  upstreamMs: number;
  /** The pool that handled it ("" when none did). */
  pool: string;
  /** The route's label ("" without routes or when none matched). */
  route: string;
  backend: Backend | undefined;
  /** True when `backend` answered with a response head (false for the balancer's own 502/503/504). */
  answered: boolean;
  retries: number;
  requestId: string;
  /** Set when the response failed or was cut short. */
  error: string | undefined;
  /** The request, for log formats that show its headers. */
  request: ClientRequest;
}

/** Listeners told about each finished request, each upstream failure and each retry. */
export interface ProxyObserver {
  request(record: RequestRecord): void;
  upstreamError(backend: Backend, error: UpstreamError): void;
  retry(backend: Backend): void;
  /** The retry budget refused a retry in `pool`. */
  retryRefused?(pool: string): void;
  /** A backend accepted an upgrade (`101`): a tunnel opens; `request` follows when it closes. */
  tunnel?(record: RequestRecord): void;
}

/** What forwarding one request needs. */
export interface Outbound {
  /** The upstream head up to its final CRLF, without `host` when `hasHost` is false. */
  readonly head: string;
  readonly hasHost: boolean;
  readonly chunked: boolean;
  readonly body: RequestBody | null;
  readonly select: SelectContext;
  readonly record: RequestRecord;
  /** `performance.now()` when the request arrived. */
  readonly started: number;
}

/** Parts the forwarder works with. */
export interface ForwarderParts {
  log: Logger;
  /** Called once per request, when it is over. */
  complete(record: RequestRecord, started: number): void;
  observers(): readonly ProxyObserver[];
}

/**
 * One attempt at a backend and the request slot it holds. The slot is released exactly once:
 * when the response body is through, when the attempt fails, or when it is abandoned.
 */
class Attempt {
  reply: Reply | undefined;
  upstreamMs = 0;
  /** Handed to the client. */
  returned = false;
  /** Response body through, or failed. */
  finished = false;
  bytes = 0;
  error: string | undefined;
  #released = false;

  constructor(
    readonly backend: Backend,
    readonly queue: SlotQueue,
    readonly out: Outbound,
    readonly settle: (attempt: Attempt) => void,
  ) {}

  /** Gives the backend slot back (once) and wakes a queued request. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.backend.release();
    this.queue.notify();
  }

  /** The upstream client's `finish`: the response body is through or failed. */
  finish = (bytes: number, error?: string): void => {
    this.release();
    this.finished = true;
    this.bytes = bytes;
    this.error = error;
    if (this.returned) this.settle(this);
  };

  /** Drops a held response for a retry: its body is not wanted. */
  abandon(): void {
    const body = this.reply?.body;
    if (body instanceof ReadableStream) body.cancel().catch(() => {});
    this.reply?.release?.();
    this.release();
  }
}

/** Sends requests to pools. */
export class Forwarder {
  constructor(readonly parts: ForwarderParts) {}

  /**
   * Forwards `out` through `rt`'s backends; resolves with the reply for the client. One async
   * frame for all of it: this runs for every request.
   */
  async forward(rt: PoolRuntime, out: Outbound): Promise<Reply> {
    const { settings, budget, queue, passive } = rt;
    budget.begin();
    try {
      const { log } = this.parts;
      const { record, body } = out;
      const method = record.method;
      let attempts = 0;
      let lastError: UpstreamError | undefined;
      let held: Attempt | undefined; // a retryable 5xx kept in case no retry is possible
      let sawFull = false;
      let queueDeadline = 0; // one queueTimeout in all, however often a freed slot is taken first
      let candidates = settings.selector.candidates(out.select)[Symbol.iterator]();
      for (;;) {
        const next = candidates.next();
        if (next.done) {
          if (attempts === 0 && sawFull) {
            queueDeadline ||= performance.now() + queue.timeout;
            if (await queue.wait(queueDeadline - performance.now())) {
              sawFull = false;
              candidates = settings.selector.candidates(out.select)[Symbol.iterator]();
              continue;
            }
          }
          break;
        }
        const backend = next.value;
        const retry = attempts > 0;
        if (retry) {
          if (attempts > settings.retries) break;
          if (!budget.tryRetry()) {
            log.debug("retry refused by the retry budget", {
              pool: rt.pool.name,
              requestId: record.requestId,
            });
            for (const o of this.parts.observers()) o.retryRefused?.(rt.pool.name);
            break;
          }
        }
        if (!backend.tryAcquire()) {
          if (retry) budget.endRetry();
          sawFull = true;
          continue;
        }
        if (retry) {
          record.retries++;
          for (const o of this.parts.observers()) o.retry(backend);
          held?.abandon();
          held = undefined;
        }
        attempts++;
        const attempt = new Attempt(backend, queue, out, this.#settle);
        const attemptStart = attempts === 1 ? out.started : performance.now();
        try {
          const reply = await exchange(backend.connections, {
            method,
            head: out.hasHost ? out.head + "\r\n" : `${out.head}host: ${backend.authority}\r\n\r\n`,
            body,
            chunked: out.chunked,
            responseTimeout: settings.responseTimeout,
            requestId: record.requestId,
            setCookie: settings.sticky && out.select.pinned !== backend.cookie
              ? stickyCookie(settings.sticky, backend.cookie)
              : undefined,
            source: backend.config.proxyProtocol ? proxySource(out.select.request) : undefined,
            upgrade: out.select.request.upgrade,
          }, attempt.finish);
          const upstreamMs = performance.now() - attemptStart;
          backend.observeLatency(
            upstreamMs,
            record.time + (attemptStart - out.started) + upstreamMs,
          );
          const status = reply.status;
          if (status >= 500) passive.failure(backend, `status ${status}`);
          else passive.success(backend);
          attempt.reply = reply;
          attempt.upstreamMs = upstreamMs;
          held = attempt;
          lastError = undefined;
          if (
            !settings.retryOn.has(status) || !IDEMPOTENT_METHODS.has(method) ||
            (body !== null && !body.rewind()) || out.select.request.upgrade !== undefined
          ) break;
        } catch (err) {
          attempt.release();
          if (!(err instanceof UpstreamError)) throw err;
          lastError = err;
          record.backend = backend;
          if (err.kind !== "client") {
            for (const o of this.parts.observers()) o.upstreamError(backend, err);
            if (err.blamesBackend) passive.failure(backend, err.message);
            log.warn(`upstream ${backend.url} failed: ${err.message}`, {
              kind: err.kind,
              pool: rt.pool.name,
              requestId: record.requestId,
            });
          }
          if (!err.retryable) break;
        } finally {
          if (retry) budget.endRetry();
        }
      }
      if (held) return this.#answer(record, held);
      body?.cancel();
      const [status, text] = lastError
        ? [lastError.status, lastError.kind === "client" ? "Bad Request" : ""]
        : [503, "Service not available"];
      if (lastError?.kind === "client") record.error = "client request body failed";
      const headers: [string, string][] = [["x-request-id", record.requestId]];
      if (!lastError && sawFull) headers.push(["retry-after", "1"]);
      return this.#ownReply(record, out.started, status, text || REASON_TEXT[status], headers);
    } finally {
      budget.end();
    }
  }

  /** Hands the held attempt's response to the client; the record settles when its body is through. */
  #answer(record: RequestRecord, held: Attempt): Reply {
    const reply = held.reply!;
    record.status = reply.status;
    record.backend = held.backend;
    record.answered = true;
    record.upstreamMs = held.upstreamMs;
    held.returned = true;
    if (reply.tunnel !== undefined) {
      for (const o of this.parts.observers()) o.tunnel?.(record);
    }
    if (held.finished) this.#settle(held);
    return reply;
  }

  #ownReply(
    record: RequestRecord,
    started: number,
    status: number,
    text: string,
    headers: [string, string][],
  ): Reply {
    const reply = textReply(status, text, headers);
    record.status = status;
    record.bytes = text.length;
    this.parts.complete(record, started);
    return reply;
  }

  #settle = (attempt: Attempt): void => {
    const record = attempt.out.record;
    record.bytes = attempt.bytes;
    record.error = attempt.error;
    if (attempt.error) {
      const level = attempt.error === CLIENT_CLOSED ? "debug" : "warn";
      this.parts.log[level](`response from ${record.backend} cut short: ${attempt.error}`, {
        requestId: record.requestId,
      });
    }
    this.parts.complete(record, attempt.out.started);
  };
}

/** The addresses a PROXY protocol header to a backend carries: the client, and where it connected. */
function proxySource(req: ClientRequest) {
  return {
    source: { ip: req.ip, port: req.port },
    destination: req.local ?? { ip: "0.0.0.0", port: 0 },
  };
}

const REASON_TEXT: Record<number, string> = {
  400: "Bad Request",
  413: "Content Too Large",
  502: "Bad Gateway",
  503: "Service not available",
  504: "Gateway Timeout",
};
