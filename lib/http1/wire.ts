/** HTTP/1.1 wire format (RFC 9112) shared by both sides: head scanning, strict response parsing, chunked decoding, byte strings. */

let dateSecond = -1;
let dateText = "";

/** The current time as an HTTP date (IMF-fixdate), formatted once per second. */
export function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(second * 1000).toUTCString();
  }
  return dateText;
}

/** Methods that may be sent again after a first attempt reached the backend (RFC 9110 §9.2.2). */
export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set([
  "GET",
  "HEAD",
  "OPTIONS",
  "PUT",
  "DELETE",
]);

/** Headers a proxy must not forward (RFC 9110 §7.6.1), lower-case. */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/** The header names listed in a `Connection` value, lower-case; they are hop-by-hop too. */
export function connectionTokens(value: string | null): Set<string> | undefined {
  if (!value) return undefined;
  const tokens = new Set<string>();
  for (const token of value.split(",")) {
    const name = token.trim().toLowerCase();
    if (name) tokens.add(name);
  }
  return tokens;
}

const utf8 = new TextEncoder();
const scratch = new Uint8Array(64 * 1024);

/** Encodes a string whose characters are all below U+0100 as one byte per character (ByteString). */
export function latin1Bytes(text: string): Uint8Array {
  // ASCII (nearly every head) is byte-for-byte the same in UTF-8, which the runtime encodes
  // fastest into a reused buffer; anything else takes the per-character loop.
  const { read, written } = utf8.encodeInto(text, scratch);
  if (read === text.length && written === text.length) return scratch.slice(0, written);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

const ascii = new TextDecoder();

/** Decodes bytes one character per byte (ByteString), the way header values are represented. */
export function latin1String(
  bytes: Uint8Array,
  hasHighBytes = bytes.some((b) => b > 0x7f),
): string {
  // For ASCII, UTF-8 decoding gives the same string and is several times faster.
  if (!hasHighBytes) return ascii.decode(bytes);
  let out = "";
  for (let i = 0; i < bytes.length; i += 4096) {
    out += String.fromCharCode.apply(null, bytes.subarray(i, i + 4096) as unknown as number[]);
  }
  return out;
}

/** How the response body is delimited. */
export type BodyFraming = "none" | "length" | "chunked" | "close";

/** A parsed response head. */
export interface ResponseHead {
  status: number;
  reason: string;
  /** Header fields in order, names as sent; hop-by-hop ones and Content-Length removed. */
  headers: [string, string][];
  framing: BodyFraming;
  /** The Content-Length value, -1 without one (it is the body's length for `length` framing). */
  length: number;
  /** Whether the connection may carry another request after this response. */
  keepAlive: boolean;
  /** Bytes the head occupied, CRLFCRLF included. */
  size: number;
}

/** Thrown by the parser on a malformed head. */
export class ParseError extends Error {
  override name = "ParseError";
}

/** The characters of a token (RFC 9110 §5.6.2): method names and header field names. */
export const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Parses one Content-Length value (a list of equal numbers is one number); `current` is an earlier one, -1 if none. */
export function parseContentLength(value: string, current: number): number {
  for (const part of value.split(",")) {
    const v = part.trim();
    if (!/^\d{1,15}$/.test(v)) {
      throw new ParseError(`invalid content-length ${JSON.stringify(value)}`);
    }
    const n = Number(v);
    if (current !== -1 && current !== n) throw new ParseError("conflicting content-length values");
    current = n;
  }
  return current;
}

/** Index just past the first CRLFCRLF in buf[from, to), or -1. */
export function findHeadEnd(buf: Uint8Array, from: number, to: number): number {
  for (let i = Math.max(from, 0); i + 3 < to; i++) {
    if (buf[i + 3] !== 10) {
      // Skip ahead: buf[i+3] is not LF, so no terminator can end at i+3.
      if (buf[i + 3] !== 13) i += 3;
      continue;
    }
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13) return i + 4;
  }
  return -1;
}

/**
 * Checks a head's bytes in one pass: no control characters but HTAB, CR and LF only as
 * CRLF pairs, and the last line ended. Returns whether any byte is above 0x7F.
 */
export function scanHead(head: Uint8Array, what: "request" | "response"): boolean {
  const len = head.length;
  let high = false;
  for (let i = 0; i < len; i++) {
    const b = head[i];
    if (b > 0x7f) high = true;
    else if (b < 0x20 || b === 0x7f) {
      if (b === 13 && head[i + 1] === 10) {
        i++;
        continue;
      }
      if (b === 9) continue;
      if (b === 10 || b === 13) throw new ParseError("bare CR or LF in head");
      throw new ParseError(`control character 0x${b.toString(16)} in ${what} head`);
    }
  }
  if (len < 2 || head[len - 2] !== 13) throw new ParseError("unterminated head");
  return high;
}

/**
 * Parses a response head strictly: CRLF line endings only, no obsolete line folding,
 * no control characters, token header names with no space before the colon, and a
 * single unambiguous body length. `head` excludes the final empty line.
 */
export function parseResponseHead(head: Uint8Array, requestMethod: string): ResponseHead {
  const high = scanHead(head, "response");
  const len = head.length;
  const text = latin1String(head, high);
  let eol = text.indexOf("\r\n");
  // HTTP/1.x SP 3DIGIT [SP reason], checked by character code: a regex here costs a match array per response.
  const minor = text.charCodeAt(7);
  const d1 = text.charCodeAt(9) - 48, d2 = text.charCodeAt(10) - 48, d3 = text.charCodeAt(11) - 48;
  if (
    eol < 12 || !text.startsWith("HTTP/1.") || (minor !== 48 && minor !== 49) ||
    text.charCodeAt(8) !== 32 || !(d1 >= 1 && d1 <= 9) || !(d2 >= 0 && d2 <= 9) ||
    !(d3 >= 0 && d3 <= 9) || (eol > 12 && text.charCodeAt(12) !== 32)
  ) {
    throw new ParseError(
      `malformed status line ${JSON.stringify(text.slice(0, eol).slice(0, 80))}`,
    );
  }
  const http10 = minor === 48;
  const status = d1 * 100 + d2 * 10 + d3;
  if (status > 599) throw new ParseError(`status ${status} outside 100-599`);
  const reason = eol > 12 ? text.slice(13, eol) : "";

  const headers: [string, string][] = [];
  let contentLength = -1;
  let chunked = false;
  let transferEncoding = false;
  let connection: Set<string> | undefined;
  for (let pos = eol + 2; pos < len; pos = eol + 2) {
    eol = text.indexOf("\r\n", pos);
    const colon = text.indexOf(":", pos);
    if (colon <= pos || colon > eol) {
      throw new ParseError(
        `malformed header line ${JSON.stringify(text.slice(pos, eol).slice(0, 80))}`,
      );
    }
    const raw = text.slice(pos, colon);
    if (!TOKEN.test(raw)) throw new ParseError(`invalid header name ${JSON.stringify(raw)}`);
    const name = raw.toLowerCase();
    const value = text.slice(colon + 1, eol).trim();
    switch (name) {
      case "content-length":
        contentLength = parseContentLength(value, contentLength);
        continue;
      case "transfer-encoding": {
        if (transferEncoding) throw new ParseError("repeated transfer-encoding");
        transferEncoding = true;
        if (value.toLowerCase() !== "chunked") {
          throw new ParseError(`unsupported transfer-encoding ${JSON.stringify(value)}`);
        }
        chunked = true;
        continue;
      }
      case "connection":
        // Every Connection line counts: "close" on one line must not be lost to a later one.
        for (const token of connectionTokens(value) ?? []) (connection ??= new Set()).add(token);
        continue;
    }
    if (HOP_BY_HOP.has(name)) continue;
    headers.push([raw, value]);
  }
  if (chunked && contentLength !== -1) {
    throw new ParseError("both transfer-encoding and content-length");
  }
  let filtered = headers;
  if (connection) {
    filtered = headers.filter(([name]) => !connection!.has(name.toLowerCase()));
  }
  const close = connection?.has("close") ?? false;
  let keepAlive = http10 ? (connection?.has("keep-alive") ?? false) && !close : !close;

  let framing: BodyFraming;
  if (
    requestMethod === "HEAD" || status === 204 || status === 304 || status < 200
  ) {
    framing = "none";
  } else if (chunked) {
    framing = "chunked";
  } else if (contentLength !== -1) {
    framing = contentLength === 0 ? "none" : "length";
  } else {
    framing = "close";
    keepAlive = false;
  }
  return {
    status,
    reason,
    headers: filtered,
    framing,
    length: contentLength,
    keepAlive,
    size: head.length + 2,
  };
}

/** Incremental decoder for a chunked body; feeds framing bytes, reports data spans. */
export class ChunkedDecoder {
  /** Bytes of chunk data still expected in the current chunk. */
  remaining = 0;
  /** True once the last chunk and trailer section were consumed. */
  done = false;
  #state: "size" | "data-crlf" | "trailers" = "size";

  /**
   * Consumes framing from buf[start, end) and returns the position reached: at chunk
   * data (remaining > 0), past the whole body (done), or where more input is needed.
   */
  advance(buf: Uint8Array, start: number, end: number): number {
    let pos = start;
    while (pos < end && !this.done && this.remaining === 0) {
      const lf = buf.indexOf(10, pos);
      if (lf === -1 || lf >= end) {
        if (end - pos > 4096) throw new ParseError("chunk framing line too long");
        return pos;
      }
      if (lf === pos || buf[lf - 1] !== 13) throw new ParseError("chunk line not ended by CRLF");
      const line = latin1String(buf.subarray(pos, lf - 1));
      pos = lf + 1;
      if (this.#state === "data-crlf") {
        if (line !== "") throw new ParseError("chunk data longer than its size");
        this.#state = "size";
      } else if (this.#state === "size") {
        const semi = line.indexOf(";");
        const hex = (semi === -1 ? line : line.slice(0, semi)).trimEnd();
        if (!/^[0-9a-fA-F]{1,12}$/.test(hex)) {
          throw new ParseError(`invalid chunk size ${JSON.stringify(hex.slice(0, 20))}`);
        }
        const size = parseInt(hex, 16);
        if (size === 0) this.#state = "trailers";
        else {
          this.remaining = size;
          this.#state = "data-crlf";
        }
      } else if (line === "") {
        this.done = true;
      } else if (line.indexOf(":") <= 0) {
        throw new ParseError("malformed trailer");
      }
    }
    return pos;
  }
}
