/** Client requests as the listener parses them: strict HTTP/1.1 request heads (RFC 9112). */
import {
  connectionTokens,
  latin1String,
  parseContentLength,
  ParseError,
  scanHead,
  TOKEN,
} from "../http1/wire.ts";

/** A request the listener refuses, with the status the client gets. */
export class RequestError extends ParseError {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** One client request: its head as received, and its body as a stream. */
export interface ClientRequest {
  readonly method: string;
  /** Path and query exactly as sent (`*` for a server-wide OPTIONS). */
  readonly target: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
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
  /** The client's address and port. */
  readonly ip: string;
  readonly port: number;
  /** The body, or null when the request has none. */
  body: ReadableStream<Uint8Array> | null;
  /** A header's value (repeats joined with ", ", or "; " for Cookie), undefined if absent; `key` lower-case. */
  header(key: string): string | undefined;
}

class ParsedRequest implements ClientRequest {
  body: ReadableStream<Uint8Array> | null = null;
  constructor(
    readonly method: string,
    readonly target: string,
    readonly minor: number,
    readonly names: string[],
    readonly keys: string[],
    readonly values: string[],
    readonly host: string | undefined,
    readonly length: number,
    readonly chunked: boolean,
    readonly close: boolean,
    readonly expectContinue: boolean,
    readonly ip: string,
    readonly port: number,
  ) {}

  header(key: string): string | undefined {
    let found: string | undefined;
    for (let i = 0; i < this.keys.length; i++) {
      if (this.keys[i] !== key) continue;
      // Repeated Cookie lines join like one Cookie line does (RFC 6265 §5.4).
      found = found === undefined ? this.values[i] : found + (key === "cookie" ? "; " : ", ") +
        this.values[i];
    }
    return found;
  }
}

const VERSION = /^HTTP\/\d\.\d$/;

function malformedLine(text: string, eol: number): RequestError {
  return new RequestError(
    400,
    `malformed request line ${JSON.stringify(text.slice(0, Math.min(eol, 80)))}`,
  );
}

/**
 * Parses a request head (`head` ends with its last header line's CRLF) strictly: CRLF line
 * endings only, no obs-fold, no control characters, token names with no space before the
 * colon, exactly one Host on HTTP/1.1, and one unambiguous body length. Throws a
 * {@linkcode RequestError} carrying the status to answer with.
 */
export function parseRequestHead(head: Uint8Array, ip: string, port: number): ClientRequest {
  let text: string;
  try {
    text = latin1String(head, scanHead(head, "request"));
  } catch (err) {
    throw new RequestError(400, (err as Error).message);
  }
  let eol = text.indexOf("\r\n");
  const sp1 = text.indexOf(" ");
  const sp2 = text.indexOf(" ", sp1 + 1);
  const sp3 = text.indexOf(" ", sp2 + 1);
  if (sp1 <= 0 || sp2 === -1 || sp2 > eol || (sp3 !== -1 && sp3 < eol)) {
    throw malformedLine(text, eol);
  }
  const method = text.slice(0, sp1);
  let target = text.slice(sp1 + 1, sp2);
  const version = text.slice(sp2 + 1, eol);
  if (!TOKEN.test(method)) throw new RequestError(400, "invalid method");
  let minor: number;
  if (version === "HTTP/1.1") minor = 1;
  else if (version === "HTTP/1.0") minor = 0;
  else if (VERSION.test(version)) throw new RequestError(505, `unsupported version ${version}`);
  else throw malformedLine(text, eol);
  if (method === "CONNECT") throw new RequestError(501, "CONNECT is not supported");
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) throw new RequestError(400, "invalid character in request target");
  }
  let authority: string | undefined;
  if (target === "*") {
    if (method !== "OPTIONS") throw new RequestError(400, "* is a target for OPTIONS only");
  } else if (target.charCodeAt(0) !== 47 /* / */) {
    // Absolute form (RFC 9112 §3.2.2): the authority in the target replaces Host.
    const m = /^https?:\/\/([^/?#]+)([^#]*)$/i.exec(target);
    if (!m) throw new RequestError(400, "invalid request target");
    authority = m[1];
    target = m[2] === "" ? "/" : m[2].startsWith("/") ? m[2] : "/" + m[2];
  }

  const names: string[] = [];
  const keys: string[] = [];
  const values: string[] = [];
  let host: string | undefined;
  let hosts = 0;
  let length = -1;
  let transferEncoding: string | undefined;
  let close = minor === 0;
  let expectContinue = false;
  for (let pos = eol + 2; pos < text.length; pos = eol + 2) {
    eol = text.indexOf("\r\n", pos);
    const colon = text.indexOf(":", pos);
    if (colon <= pos || colon > eol) {
      throw new RequestError(
        400,
        `malformed header line ${JSON.stringify(text.slice(pos, Math.min(eol, pos + 80)))}`,
      );
    }
    const name = text.slice(pos, colon);
    if (!TOKEN.test(name)) {
      throw new RequestError(400, `invalid header name ${JSON.stringify(name.slice(0, 80))}`);
    }
    const key = name.toLowerCase();
    const value = text.slice(colon + 1, eol).trim();
    switch (key) {
      case "host":
        hosts++;
        host = value;
        break;
      case "content-length":
        try {
          length = parseContentLength(value, length);
        } catch (err) {
          throw new RequestError(400, (err as Error).message);
        }
        break;
      case "transfer-encoding":
        transferEncoding = transferEncoding === undefined ? value : transferEncoding + ", " + value;
        break;
      case "connection":
        for (const token of connectionTokens(value) ?? []) {
          if (token === "close") close = true;
          else if (token === "keep-alive" && minor === 0) close = false;
        }
        break;
      case "expect":
        if (value.toLowerCase() === "100-continue") expectContinue = minor === 1;
        break;
    }
    names.push(name);
    keys.push(key);
    values.push(value);
  }
  if (hosts > 1) throw new RequestError(400, "more than one Host header");
  if (minor === 1 && hosts === 0 && authority === undefined) {
    throw new RequestError(400, "no Host header");
  }
  if (authority !== undefined) host = authority;
  let chunked = false;
  if (transferEncoding !== undefined) {
    if (minor === 0) throw new RequestError(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (length !== -1) throw new RequestError(400, "both Transfer-Encoding and Content-Length");
    const codings = transferEncoding.toLowerCase().split(",").map((c) => c.trim());
    if (codings[codings.length - 1] !== "chunked") {
      throw new RequestError(400, "Transfer-Encoding does not end in chunked");
    }
    if (codings.length > 1) {
      throw new RequestError(
        501,
        `unsupported transfer coding ${JSON.stringify(transferEncoding)}`,
      );
    }
    chunked = true;
  }
  return new ParsedRequest(
    method,
    target,
    minor,
    names,
    keys,
    values,
    host,
    length,
    chunked,
    close,
    expectContinue,
    ip,
    port,
  );
}
