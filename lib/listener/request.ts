/** Client requests as the listener parses them: strict HTTP/1.1 request heads (RFC 9112). */
import { parseIpInto } from "../cidr.ts";
import type { Endpoint } from "../http1/proxy_protocol.ts";
import type { ClientRequest } from "../message.ts";
import {
  connectionTokens,
  isToken,
  latin1String,
  parseContentLength,
  ParseError,
  scanHead,
  trimOws,
} from "../http1/wire.ts";

export type { Endpoint };

/** A request the listener refuses, with the status the client gets. */
export class RequestError extends ParseError {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** Limits on what a client may send; read per request, so a reload applies at once. */
export interface RequestLimits {
  /** Largest request head (request line, header lines, final CRLF), bytes; more gets 431. @default 65536 */
  maxHeaderBytes: number;
  /** Most header lines in a request head; more gets 431. @default 100 */
  maxHeaders: number;
  /** Longest request-target, bytes; longer gets 414. @default 8192 */
  maxUriLength: number;
  /**
   * Largest request body, bytes: a larger Content-Length gets 413 before the handler runs; a
   * chunked body that grows past it errors its stream with `BodyTooLarge`. @default Infinity
   */
  maxBodySize: number;
}

/** The default {@linkcode RequestLimits}: 64 KiB of head, 100 fields, 8 KiB targets, any body. */
export const DEFAULT_LIMITS: Readonly<RequestLimits> = Object.freeze({
  maxHeaderBytes: 64 * 1024,
  maxHeaders: 100,
  maxUriLength: 8 * 1024,
  maxBodySize: Infinity,
});

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
    readonly absoluteForm: boolean,
    readonly length: number,
    readonly chunked: boolean,
    readonly close: boolean,
    readonly expectContinue: boolean,
    readonly ip: string,
    readonly port: number,
    readonly local: Endpoint | undefined,
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

const VERSION = /^HTTP\/(\d)\.\d$/;
/** The latest Host value found valid (see `parseRequestHead`); starts as one that is. */
let lastValidHost = "localhost";

/** Characters of a reg-name (RFC 3986 §3.2.2) but `%`, which is checked apart, and `,` (a list). */
const REG_NAME: Uint8Array = (() => {
  const table = new Uint8Array(128);
  for (const c of "-._~!$&'()*+;=") table[c.charCodeAt(0)] = 1;
  for (let c = 48; c <= 57; c++) table[c] = 1;
  for (let c = 65; c <= 90; c++) table[c] = table[c + 32] = 1;
  return table;
})();
const words = new Uint32Array(4);

function isHex(c: number): boolean {
  return (c >= 48 && c <= 57) || ((c | 0x20) >= 97 && (c | 0x20) <= 102);
}

/** `IPv6address / IPvFuture` in text[from, to) (the inside of an IP-literal). */
function validIpLiteral(text: string, from: number, to: number): boolean {
  if ((text.charCodeAt(from) | 0x20) !== 118 /* v */) {
    return parseIpInto(text, words, from, to) === 6;
  }
  // IPvFuture: "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
  let i = from + 1;
  while (i < to && isHex(text.charCodeAt(i))) i++;
  if (i === from + 1 || i + 1 >= to || text.charCodeAt(i) !== 46) return false;
  for (i++; i < to; i++) {
    const c = text.charCodeAt(i);
    if (c !== 58 && c !== 44 && (c >= 128 || !REG_NAME[c])) return false;
  }
  return true;
}

/**
 * Whether `value` is `uri-host [":" port]` (RFC 9112 §3.2, RFC 3986 §3.2.2): no userinfo, no
 * path, no list, no space; a port of digits up to 65535. Not empty: an http(s) URI with an
 * empty host is invalid (RFC 9110 §4.2.1), as nginx also holds. A loop over a lookup table:
 * this runs on every request.
 */
export function validHost(value: string): boolean {
  const len = value.length;
  if (len === 0) return false;
  let i = 0;
  if (value.charCodeAt(0) === 91 /* [ */) {
    const close = value.indexOf("]");
    if (close === -1 || !validIpLiteral(value, 1, close)) return false;
    i = close + 1;
  } else {
    while (i < len) {
      const c = value.charCodeAt(i);
      if (c === 58 /* : */) break;
      if (c === 37 /* % */) {
        if (i + 2 >= len || !isHex(value.charCodeAt(i + 1)) || !isHex(value.charCodeAt(i + 2))) {
          return false;
        }
        i += 3;
        continue;
      }
      if (c >= 128 || !REG_NAME[c]) return false;
      i++;
    }
    if (i === 0) return false; // a port without a host
  }
  if (i === len) return true;
  if (value.charCodeAt(i) !== 58) return false;
  let port = 0;
  for (i++; i < len; i++) {
    const d = value.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return false;
    port = port * 10 + d;
    if (port > 65535) return false;
  }
  return true;
}

function malformedLine(text: string, eol: number): RequestError {
  return new RequestError(
    400,
    `malformed request line ${JSON.stringify(text.slice(0, Math.min(eol, 80)))}`,
  );
}

/**
 * Parses a request head (`head` ends with its last header line's CRLF) strictly: CRLF line
 * endings only, no obs-fold, no control characters, token names with no space before the
 * colon, exactly one valid Host on HTTP/1.1, and one unambiguous body length; within `limits`.
 * Throws a {@linkcode RequestError} carrying the status to answer with: 400, 413 (a
 * Content-Length over `maxBodySize`), 414 (a target over `maxUriLength`), 431 (a head over
 * `maxHeaderBytes` or `maxHeaders`), 501 or 505. `local`: the address the client connected to.
 */
export function parseRequestHead(
  head: Uint8Array,
  ip: string,
  port: number,
  limits: Readonly<RequestLimits> = DEFAULT_LIMITS,
  local?: Endpoint,
): ClientRequest {
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
  if (sp2 - sp1 - 1 > limits.maxUriLength) {
    throw new RequestError(414, `request target longer than ${limits.maxUriLength} bytes`);
  }
  if (head.length + 2 > limits.maxHeaderBytes) {
    throw new RequestError(431, `request head larger than ${limits.maxHeaderBytes} bytes`);
  }
  const method = text.slice(0, sp1);
  let target = text.slice(sp1 + 1, sp2);
  const version = text.slice(sp2 + 1, eol);
  if (!isToken(method)) throw new RequestError(400, "invalid method");
  let minor: number;
  if (version === "HTTP/1.1") minor = 1;
  else if (version === "HTTP/1.0") minor = 0;
  else {
    const m = VERSION.exec(version);
    if (!m) throw malformedLine(text, eol);
    // A later HTTP/1.x is answered as HTTP/1.1 (RFC 9110 §6.2); other majors are not spoken.
    if (m[1] !== "1") throw new RequestError(505, `unsupported version ${version}`);
    minor = 1;
  }
  if (method === "CONNECT") throw new RequestError(501, "CONNECT is not supported");
  let hash = -1;
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) throw new RequestError(400, "invalid character in request target");
    if (c === 35 /* # */ && hash === -1) hash = i;
  }
  const raw = target;
  // A fragment is the client's own business and never goes upstream (RFC 9110 §7.1).
  if (hash !== -1) target = target.slice(0, hash);
  let authority: string | undefined;
  if (raw === "*") {
    if (method !== "OPTIONS") throw new RequestError(400, "* is a target for OPTIONS only");
  } else if (raw.charCodeAt(0) !== 47 /* / */) {
    // Absolute form (RFC 9112 §3.2.2): the authority in the target replaces Host.
    const m = /^https?:\/\/([^/?#]+)(.*)$/i.exec(target);
    if (!m) throw new RequestError(400, "invalid request target");
    authority = m[1];
    if (!validHost(authority)) {
      throw new RequestError(
        400,
        `invalid authority ${JSON.stringify(authority.slice(0, 80))} in request target`,
      );
    }
    target = m[2] === "" ? "/" : m[2].startsWith("/") ? m[2] : "/" + m[2];
  }

  const names: string[] = [];
  const keys: string[] = [];
  const values: string[] = [];
  const maxHeaders = limits.maxHeaders;
  let host: string | undefined;
  let hosts = 0;
  let length = -1;
  let transferEncoding: string | undefined;
  let close = minor === 0;
  let expectContinue = false;
  for (let pos = eol + 2; pos < text.length; pos = eol + 2) {
    if (names.length === maxHeaders) {
      throw new RequestError(431, `more than ${maxHeaders} header fields`);
    }
    eol = text.indexOf("\r\n", pos);
    const colon = text.indexOf(":", pos);
    if (colon <= pos || colon > eol) {
      throw new RequestError(
        400,
        `malformed header line ${JSON.stringify(text.slice(pos, Math.min(eol, pos + 80)))}`,
      );
    }
    const name = text.slice(pos, colon);
    if (!isToken(text, pos, colon)) {
      throw new RequestError(400, `invalid header name ${JSON.stringify(name.slice(0, 80))}`);
    }
    const key = name.toLowerCase();
    const value = trimOws(text, colon + 1, eol);
    switch (key) {
      case "host":
        hosts++;
        host = value;
        // Most requests name the host the one before named: checked once, compared after.
        if (value !== lastValidHost && !validHost(value)) {
          throw new RequestError(400, `invalid Host ${JSON.stringify(value.slice(0, 80))}`);
        }
        lastValidHost = value;
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
  // Absolute form or not, an HTTP/1.1 client must send Host (RFC 9112 §3.2).
  if (minor === 1 && hosts === 0) throw new RequestError(400, "no Host header");
  if (authority !== undefined) host = authority;
  let chunked = false;
  if (transferEncoding !== undefined) {
    if (minor === 0) throw new RequestError(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (length !== -1) throw new RequestError(400, "both Transfer-Encoding and Content-Length");
    const codings = transferEncoding.toLowerCase().split(",").map((c) => trimOws(c));
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
  if (length > limits.maxBodySize) {
    throw new RequestError(413, `request body larger than ${limits.maxBodySize} bytes`);
  }
  return new ParsedRequest(
    method,
    target,
    minor,
    names,
    keys,
    values,
    host,
    authority !== undefined,
    length,
    chunked,
    close,
    expectContinue,
    ip,
    port,
    local,
  );
}
