/** The request path: choose candidates, forward over the upstream client, retry, and account for the result. */
import { forwardHead } from "./forwarding.ts";
import type { ClientRequest } from "./listener/request.ts";
import { type Reply, textReply } from "./listener/server.ts";
import type { Logger } from "./log.ts";
import type { OutlierDetector } from "./outlier.ts";
import type { Backend, Pool } from "./pool.ts";
import type { SlotQueue } from "./queue.ts";
import type { RetryBudget } from "./retry_budget.ts";
import type { SelectContext, Selector } from "./select/mod.ts";
import { stickyCookie, type StickyOptions } from "./select/sticky.ts";
import { CLIENT_CLOSED, exchange } from "./upstream/client.ts";
import { IDEMPOTENT_METHODS } from "./http1/wire.ts";
import { UpstreamError } from "./upstream/errors.ts";
import { RequestBody } from "./upstream/request_body.ts";

const CRLF = "\r\n";

/** Settings the proxy reads per request; a reload swaps the whole object. */
export interface ProxySettings {
  selector: Selector;
  retries: number;
  retryOn: ReadonlySet<number>;
  retryBuffer: number;
  responseTimeout: number;
  sticky: StickyOptions | undefined;
}

/** Everything known about one client request once it is over; strategies select on it too. */
export interface RequestRecord extends SelectContext {
  /** Start time, ms since epoch. */
  time: number;
  method: string;
  /** Status sent to the client. */
  status: number;
  /** Body bytes sent to the client. */
  bytes: number;
  /** Whole request, ms. */
  durationMs: number;
  /** Until the chosen backend's response head, ms (0 without a backend). */
  upstreamMs: number;
  backend: Backend | undefined;
  /** True when `backend` answered with a response head (false for the balancer's own 502/503/504). */
  answered: boolean;
  retries: number;
  requestId: string;
  /** Set when the response failed or was cut short. */
  error: string | undefined;
}

/** Listeners told about each finished request and each upstream failure. */
export interface ProxyObserver {
  request(record: RequestRecord): void;
  upstreamError(backend: Backend, error: UpstreamError): void;
  retry(backend: Backend): void;
}

/** Parts the proxy works with. */
export interface ProxyParts {
  pool: Pool;
  outlier: OutlierDetector;
  budget: RetryBudget;
  queue: SlotQueue;
  log: Logger;
  observers: readonly ProxyObserver[];
}

/** One attempt at a backend; the one whose response goes to the client settles the request. */
interface Attempt {
  backend: Backend;
  reply: Reply | undefined;
  upstreamMs: number;
  /** Handed to the client. */
  returned: boolean;
  /** Response body through, or failed. */
  finished: boolean;
  bytes: number;
  error: string | undefined;
}

/** Answers client requests for the listener. */
export class Proxy {
  constructor(public settings: ProxySettings, readonly parts: ProxyParts) {}

  /** Answers one request. */
  handle = async (req: ClientRequest): Promise<Reply> => {
    const time = Date.now();
    const started = performance.now();
    const settings = this.settings;
    const { budget, queue, outlier, log } = this.parts;
    const ip = req.ip;
    const forward = forwardHead(req, ip, "http", undefined);
    const requestId = forward.requestId ?? crypto.randomUUID();
    if (forward.requestId === undefined) forward.text += "x-request-id: " + requestId + CRLF;
    const head = forward.hasHost ? forward.text + CRLF : undefined;
    const body = req.body ? new RequestBody(req.body, settings.retryBuffer) : null;
    const method = req.method;
    const record: RequestRecord = {
      time,
      ip,
      method,
      target: req.target,
      status: 0,
      bytes: 0,
      durationMs: 0,
      upstreamMs: 0,
      backend: undefined,
      answered: false,
      retries: 0,
      requestId,
      error: undefined,
      request: req,
    };
    budget.request(time);

    let attempts = 0;
    let lastError: UpstreamError | undefined;
    let held: Attempt | undefined; // a retryable 5xx kept in case no retry is possible
    let sawFull = false;
    let clientFailed = false; // the client's body broke off: nobody upstream is to blame
    let queueDeadline = 0; // one queueTimeout in all, however often a freed slot is taken first
    let candidates = settings.selector.candidates(record)[Symbol.iterator]();
    for (;;) {
      const next = candidates.next();
      if (next.done) {
        if (attempts === 0 && sawFull) queueDeadline ||= performance.now() + queue.timeout;
        if (
          attempts === 0 && sawFull && (await queue.wait(queueDeadline - performance.now()))
        ) {
          sawFull = false;
          candidates = settings.selector.candidates(record)[Symbol.iterator]();
          continue;
        }
        break;
      }
      const backend = next.value;
      if (backend.full) {
        sawFull = true;
        continue;
      }
      if (attempts > 0) {
        if (attempts > settings.retries || !budget.tryRetry()) break;
        record.retries++;
        for (const o of this.parts.observers) o.retry(backend);
        cancelBody(held?.reply);
        held = undefined;
      }
      attempts++;
      backend.acquire();
      const attemptStart = attempts === 1 ? started : performance.now();
      const state: Attempt = {
        backend,
        reply: undefined,
        upstreamMs: 0,
        returned: false,
        finished: false,
        bytes: 0,
        error: undefined,
      };
      // Settles the request once the response body is through (or failed).
      const finish = (bytes: number, error?: string) => {
        backend.release();
        queue.notify();
        state.finished = true;
        state.bytes = bytes;
        state.error = error;
        if (state.returned) this.#settle(record, state, started);
      };
      try {
        const reply = await exchange(backend.connections, {
          method,
          head: head ?? `${forward.text}host: ${backend.authority}${CRLF}${CRLF}`,
          body,
          chunked: forward.chunked,
          responseTimeout: settings.responseTimeout,
          requestId,
          setCookie:
            settings.sticky && !hasStickyCookie(req, settings.sticky.cookie, backend.cookie)
              ? stickyCookie(settings.sticky, backend.cookie)
              : undefined,
        }, finish);
        const upstreamMs = performance.now() - attemptStart;
        backend.observeLatency(upstreamMs, time + (attemptStart - started) + upstreamMs);
        const status = reply.status;
        if (status >= 500) outlier.failure(backend, `status ${status}`);
        else outlier.success(backend);
        state.reply = reply;
        state.upstreamMs = upstreamMs;
        held = state;
        lastError = undefined;
        if (
          !settings.retryOn.has(status) || !IDEMPOTENT_METHODS.has(method) ||
          (body !== null && !body.rewind())
        ) break;
      } catch (err) {
        backend.release();
        queue.notify();
        if (!(err instanceof UpstreamError)) throw err;
        if (body?.failed) {
          clientFailed = true;
          record.backend = backend;
          record.error = "client request body failed";
          break;
        }
        lastError = err;
        record.backend = backend;
        for (const o of this.parts.observers) o.upstreamError(backend, err);
        if (err.kind !== "protocol") outlier.failure(backend, err.message);
        log.warn(`upstream ${backend.url} failed: ${err.message}`, { kind: err.kind, requestId });
        const retryable = !err.sent ||
          (IDEMPOTENT_METHODS.has(method) && err.kind !== "protocol" &&
            (body === null || body.rewind()));
        if (!retryable) break;
      }
    }
    if (held) {
      const reply = held.reply!;
      record.status = reply.status;
      record.backend = held.backend;
      record.answered = true;
      record.upstreamMs = held.upstreamMs;
      held.returned = true;
      if (held.finished) this.#settle(record, held, started);
      return reply;
    }
    body?.cancel();
    const timeout = lastError?.kind === "timeout";
    const [status, text] = clientFailed
      ? [400, "Bad Request"]
      : lastError
      ? timeout ? [504, "Gateway Timeout"] : [502, "Bad Gateway"]
      : [503, "Service not available"];
    const headers: [string, string][] = [["x-request-id", requestId]];
    if (!lastError && sawFull) headers.push(["retry-after", "1"]);
    const reply = textReply(status, text, headers);
    record.status = status;
    record.bytes = text.length;
    this.#complete(record, started);
    return reply;
  };

  #settle(record: RequestRecord, state: Attempt, started: number): void {
    record.bytes = state.bytes;
    record.error = state.error;
    if (state.error) {
      const level = state.error === CLIENT_CLOSED ? "debug" : "warn";
      this.parts.log[level](`response from ${record.backend} cut short: ${state.error}`, {
        requestId: record.requestId,
      });
    }
    this.#complete(record, started);
  }

  #complete(record: RequestRecord, started: number): void {
    record.durationMs = performance.now() - started;
    for (const o of this.parts.observers) o.request(record);
  }
}

function hasStickyCookie(req: ClientRequest, name: string, value: string): boolean {
  const cookie = req.header("cookie");
  return cookie !== undefined && cookie.includes(`${name}=${value}`);
}

function cancelBody(reply: Reply | undefined): void {
  if (reply?.body instanceof ReadableStream) reply.body.cancel().catch(() => {});
}
