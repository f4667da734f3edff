/**
 * The protocol-neutral shapes every front end produces and consumes: a client request (from
 * HTTP/1.1 or HTTP/2) and a reply. Router, hooks, proxy and upstream only see these.
 */
import { httpDate, latin1Bytes } from "./http1/wire.ts";

/** One client request: its head as received, and its body as a stream. */
export interface ClientRequest {
  readonly method: string;
  /** Path and query exactly as sent, less any `#fragment` (`*` for a server-wide OPTIONS). */
  readonly target: string;
  /** 0 for HTTP/1.0; 1 for HTTP/1.1 (and later 1.x, handled as 1.1) and HTTP/2. */
  readonly minor: number;
  /** Header names as sent, in order, repeats kept; `keys` has them lower-case at the same index. */
  readonly names: readonly string[];
  readonly keys: readonly string[];
  readonly values: readonly string[];
  /** The Host the client addressed (from the absolute-form target if it used one), or undefined. */
  readonly host: string | undefined;
  /** Content-Length, or -1: no body unless `chunked`. */
  readonly length: number;
  readonly chunked: boolean;
  /** The client wants the connection closed after this exchange. */
  readonly close: boolean;
  /** The client sent `Expect: 100-continue`. */
  readonly expectContinue: boolean;
  /** The address and port of the peer that sent the request (the client, or a PROXY header's source). */
  readonly ip: string;
  readonly port: number;
  /** The target was sent in absolute form (`GET http://host/path`): its authority is `host`. */
  readonly absoluteForm?: boolean;
  /** The local address the client connected to (or a PROXY header's destination). */
  readonly local?: { readonly ip: string; readonly port: number };
  /**
   * The protocol the client asked to switch to (`Connection: upgrade` with this `Upgrade`), set
   * by `forwardHead` when it forwards the upgrade (HTTP/1.1, no body); undefined otherwise.
   */
  upgrade?: string;
  /** Arrived over TLS. */
  readonly tls?: boolean;
  /** `HTTP/2` for requests that arrived over HTTP/2; HTTP/1.x otherwise. */
  readonly protocol?: string;
  /** The body, or null when the request has none. */
  body: ReadableStream<Uint8Array> | null;
  /** A header's value (repeats joined with ", ", or "; " for Cookie), undefined if absent; `key` lower-case. */
  header(key: string): string | undefined;
}

/** The protocol name of a request, as the access log and metrics report it. */
export function protocolOf(req: ClientRequest): string {
  return req.protocol ?? (req.minor === 0 ? "HTTP/1.0" : "HTTP/1.1");
}

/** A response for a front end to send. */
export interface Reply {
  status: number;
  reason: string;
  /** Header fields as they are to be sent, without framing (Content-Length, Transfer-Encoding, Connection). */
  headers: [string, string][];
  /** The Content-Length to send, or -1 when unknown (then chunked, or delimited by close for HTTP/1.0). */
  length: number;
  /** Bytes at hand, a stream, or null for no body. */
  body: Uint8Array | ReadableStream<Uint8Array> | null;
  /**
   * Set when `body` is a view into a backend connection's read buffer (a response that arrived
   * whole with its head): whoever takes the reply calls it once, when the bytes are copied,
   * written or dropped. Until then the connection is not reused, so the bytes stay as they are;
   * copying them out into a new buffer instead would cost an allocation per response.
   */
  release?: (() => void) | undefined;
  /**
   * Trailer fields, known once the body stream has ended: a backend's chunked response may end
   * in them. HTTP/1.1 clients receiving a chunked body get them; HTTP/1.0 and HTTP/2 clients
   * do not (HTTP/1.0 has no trailers; Deno's HTTP/2 server cannot send them).
   */
  trailers?: (() => [string, string][] | undefined) | undefined;
  /**
   * Set on a `101 Switching Protocols`: the connection to the backend, for the front end to join
   * to the client's in a byte tunnel once the head is written.
   */
  tunnel?: Tunnel | undefined;
}

/** The backend side of an upgraded connection. */
export interface Tunnel {
  /** The backend's `Upgrade` value: the protocol switched to. */
  readonly protocol: string;
  /** Bytes the backend sent after its 101 head, to be delivered first. */
  readonly early: Uint8Array;
  read(buf: Uint8Array): Promise<number | null>;
  write(bytes: Uint8Array): Promise<number>;
  /** Half-closes the way to the backend (the client finished sending). */
  closeWrite(): Promise<void>;
  /** Closes the backend connection (safe to call twice). */
  close(): void;
  /**
   * Closes the backend connection if still open and finishes the request (once; later calls do
   * nothing), with the bytes relayed each way: when the tunnel has closed, or when the reply is
   * dropped unused (a front end that cannot tunnel, a failed hook) with an error saying why.
   */
  done(toBackend: number, toClient: number, error?: string): void;
}

/**
 * A request body stream that also carries the trailer fields that ended it (a chunked
 * HTTP/1.1 upload), read once the stream is done; `RequestBody` passes them upstream.
 */
export interface TrailedStream extends ReadableStream<Uint8Array> {
  trailers?: () => [string, string][] | undefined;
}

/** Standard reason phrases for the statuses the balancer itself sends. */
export const REASONS: Record<number, string> = {
  200: "OK",
  204: "No Content",
  301: "Moved Permanently",
  302: "Found",
  307: "Temporary Redirect",
  308: "Permanent Redirect",
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  408: "Request Timeout",
  413: "Content Too Large",
  414: "URI Too Long",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
};

/** A small plain-text reply generated by the balancer itself. */
export function textReply(status: number, text: string, headers: [string, string][] = []): Reply {
  const body = latin1Bytes(text);
  headers.push(["content-type", "text/plain; charset=utf-8"], ["date", httpDate()]);
  return { status, reason: REASONS[status] ?? "", headers, length: body.length, body };
}

/** The value of cookie `name` in a Cookie header, or undefined: the one cookie parser everything uses. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (let start = 0; start < header.length;) {
    let end = header.indexOf(";", start);
    if (end === -1) end = header.length;
    const eq = header.indexOf("=", start);
    if (eq !== -1 && eq < end && header.slice(start, eq).trim() === name) {
      let value = header.slice(eq + 1, end).trim();
      // RFC 6265 §4.1.1 allows the value in double quotes.
      if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) {
        value = value.slice(1, -1);
      }
      return value;
    }
    start = end + 1;
  }
  return undefined;
}
