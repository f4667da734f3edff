/** The access log: one line per request, JSON or Apache/nginx "combined", to stdout or a file. */
import { LineWriter } from "./log.ts";
import type { RequestRecord } from "./proxy.ts";

/** Settings of `accessLog:`. */
export interface AccessLogOptions {
  format: "json" | "combined";
  path?: string;
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

function pad(n: number): string {
  return n < 10 ? "0" + n : String(n);
}

/** `[10/Oct/2000:13:55:36 +0000]`, always UTC. */
function clfTime(ms: number): string {
  const d = new Date(ms);
  return `${pad(d.getUTCDate())}/${MONTHS[d.getUTCMonth()]}/${d.getUTCFullYear()}:${
    pad(d.getUTCHours())
  }:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} +0000`;
}

function quoted(value: string | null): string {
  return value === null ? '"-"' : JSON.stringify(value);
}

/** A bare word when it is one (printable ASCII, no quotes or backslashes), else quoted like JSON. */
function word(value: string): string {
  return /^[!#-[\]-~]+$/.test(value) ? value : JSON.stringify(value);
}

/** Formats a record as one JSON object. */
export function jsonLine(r: RequestRecord): string {
  return JSON.stringify({
    time: new Date(r.time).toISOString(),
    client: r.ip,
    method: r.method,
    target: r.target,
    status: r.status,
    bytes: r.bytes,
    duration_ms: Math.round(r.durationMs * 1000) / 1000,
    upstream_ms: Math.round(r.upstreamMs * 1000) / 1000,
    backend: r.backend?.id ?? null,
    retries: r.retries,
    request_id: r.requestId,
    ...(r.error ? { error: r.error } : {}),
  });
}

/**
 * Formats a record as "combined", followed by duration, upstream time, backend, retries and
 * request id. A client-sent id that is not a single printable word is quoted, so the line
 * still splits into its fields.
 */
export function combinedLine(r: RequestRecord): string {
  const h = r.request.headers;
  return `${r.ip} - - [${clfTime(r.time)}] "${r.method} ${r.target} HTTP/1.1" ${r.status} ${
    r.bytes || "-"
  } ${quoted(h.get("referer"))} ${quoted(h.get("user-agent"))} rt=${
    (r.durationMs / 1000).toFixed(3)
  } urt=${(r.upstreamMs / 1000).toFixed(3)} backend=${
    word(r.backend?.id ?? "-")
  } retries=${r.retries} id=${word(r.requestId)}`;
}

/** Writes access log lines without blocking the request path. */
export class AccessLog {
  readonly #writer: LineWriter;
  readonly #format: (r: RequestRecord) => string;

  constructor(readonly options: AccessLogOptions) {
    this.#writer = new LineWriter(options.path);
    this.#format = options.format === "combined" ? combinedLine : jsonLine;
  }

  /** Logs one finished request. */
  write(record: RequestRecord): void {
    this.#writer.write(this.#format(record));
  }

  /** Flushes and closes the file. */
  close(): Promise<void> {
    return this.#writer.close();
  }
}
