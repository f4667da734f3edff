/** HTTP/1.1 wire format (RFC 9112) shared by both sides: head scanning, strict response parsing, chunked decoding, byte strings. */
import { decodeAscii } from "./direct_io.ts";

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
const HOP_BY_HOP_NAMES: readonly string[] = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
];

/**
 * Whether lower-case field name `name` is hop-by-hop (RFC 9110 §7.6.1). A string search of
 * seven names rather than a `Set` lookup: a `Set` must first hash a name just parsed (a call
 * into V8's runtime, 50–60 ns; about four times the search).
 */
export function isHopByHop(name: string): boolean {
  return HOP_BY_HOP_NAMES.includes(name);
}

/**
 * text[from, to) without leading and trailing SP and HTAB (OWS, RFC 9110 §5.6.3). Unlike
 * `trim()`, which also strips U+00A0 and other Unicode spaces, it keeps obs-text as sent.
 */
export function trimOws(text: string, from = 0, to: number = text.length): string {
  let c: number;
  while (from < to && ((c = text.charCodeAt(from)) === 32 || c === 9)) from++;
  while (to > from && ((c = text.charCodeAt(to - 1)) === 32 || c === 9)) to--;
  return from === 0 && to === text.length ? text : text.slice(from, to);
}

/** The header names listed in a `Connection` value, lower-case; they are hop-by-hop too. */
export function connectionTokens(value: string | null): Set<string> | undefined {
  if (!value) return undefined;
  const tokens = new Set<string>();
  for (const token of value.split(",")) {
    const name = trimOws(token).toLowerCase();
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

/** Decodes bytes one character per byte (ByteString), the way header values are represented. */
export function latin1String(
  bytes: Uint8Array,
  hasHighBytes = bytes.some((b) => b > 0x7f),
): string {
  // For ASCII, UTF-8 decoding gives the same string and is several times faster.
  if (!hasHighBytes) return decodeAscii(bytes);
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
  /** The `Upgrade` value, kept for a `101 Switching Protocols` (undefined when absent). */
  upgrade: string | undefined;
}

/** Thrown by the parser on a malformed head. */
export class ParseError extends Error {
  override name = "ParseError";
}

/**
 * Whether `text[from, to)` is a token (RFC 9110 §5.6.2), as method names and header field names
 * are; never empty. A loop over {@linkcode TCHAR} rather than a regex: it runs for every field.
 */
export function isToken(text: string, from = 0, to: number = text.length): boolean {
  if (from >= to) return false;
  for (let i = from; i < to; i++) {
    const c = text.charCodeAt(i);
    if (c > 0x7f || TCHAR[c] === 0) return false;
  }
  return true;
}

/**
 * Whether field name `name` is `lower` (a lowercase name) in any case, without making a new
 * string as `toLowerCase` would: run per response field.
 */
export function isField(name: string, lower: string): boolean {
  if (name.length !== lower.length) return false;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    const l = lower.charCodeAt(i);
    if (c !== l && (c < 65 || c > 90 || c + 32 !== l)) return false;
  }
  return true;
}

/** Parses one Content-Length value (a list of equal numbers is one number); `current` is an earlier one, -1 if none. */
export function parseContentLength(value: string, current: number): number {
  // The common case, one plain number, without splitting or a regex.
  const len = value.length;
  if (len > 0 && len <= 15) {
    let n = 0;
    let i = 0;
    for (; i < len; i++) {
      const d = value.charCodeAt(i) - 48;
      if (d < 0 || d > 9) break;
      n = n * 10 + d;
    }
    if (i === len) return agreed(current, n);
  }
  for (const part of value.split(",")) {
    const v = trimOws(part);
    if (!/^\d{1,15}$/.test(v)) {
      throw new ParseError(`invalid content-length ${JSON.stringify(value)}`);
    }
    current = agreed(current, Number(v));
  }
  return current;
}

/** `n`, unless an earlier Content-Length value `current` (-1: none) differs from it. */
function agreed(current: number, n: number): number {
  if (current !== -1 && current !== n) throw new ParseError("conflicting content-length values");
  return n;
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
  let upgrade: string | undefined;
  for (let pos = eol + 2; pos < len; pos = eol + 2) {
    eol = text.indexOf("\r\n", pos);
    const colon = text.indexOf(":", pos);
    if (colon <= pos || colon > eol) {
      throw new ParseError(
        `malformed header line ${JSON.stringify(text.slice(pos, eol).slice(0, 80))}`,
      );
    }
    const raw = text.slice(pos, colon);
    if (!isToken(text, pos, colon)) {
      throw new ParseError(`invalid header name ${JSON.stringify(raw)}`);
    }
    const name = raw.toLowerCase();
    const value = trimOws(text, colon + 1, eol);
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
    if (isHopByHop(name)) {
      // Hop-by-hop, but a 101 names the protocol switched to here (RFC 9110 §7.8).
      if (name === "upgrade") upgrade = value;
      continue;
    }
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
    upgrade,
  };
}

/**
 * Fields that never pass in a trailer section: hop-by-hop ones, and framing and routing ones a
 * recipient must not take from trailers (RFC 9110 §6.5.1).
 */
const NOT_TRAILERS: ReadonlySet<string> = new Set([
  ...HOP_BY_HOP_NAMES,
  "content-length",
  "host",
  "content-encoding",
  "content-type",
  "content-range",
]);

/**
 * The last chunk with `trailers` (fields a recipient may use there: see `NOT_TRAILERS`), as
 * text: `0\r\n`, the fields, the empty line.
 */
export function lastChunk(trailers: readonly (readonly [string, string])[] | undefined): string {
  let text = "0\r\n";
  if (trailers) {
    for (const [name, value] of trailers) {
      if (!NOT_TRAILERS.has(name.toLowerCase())) text += name + ": " + value + "\r\n";
    }
  }
  return text + "\r\n";
}

/** Longest chunk-size line (with extensions) or trailer line accepted. */
export const MAX_CHUNK_LINE = 4096;
/** Largest trailer section accepted after the last chunk, by default. */
export const MAX_TRAILER_BYTES = 64 * 1024;

/** tchar (RFC 9110 §5.6.2) by byte value: 1 for a token character. */
export const TCHAR: Uint8Array = (() => {
  const table = new Uint8Array(256);
  for (const c of "!#$%&'*+-.^_`|~0123456789") table[c.charCodeAt(0)] = 1;
  for (let c = 65; c <= 90; c++) table[c] = table[c + 32] = 1;
  return table;
})();

function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

function chunkError(what: string, buf: Uint8Array, from: number, to: number): ParseError {
  const text = latin1String(buf.subarray(from, Math.min(to, from + 20)));
  return new ParseError(`${what} ${JSON.stringify(text)}`);
}

/**
 * Checks `buf[i, eol)`, what follows a chunk size, against RFC 9112 §7.1.1:
 * `*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`. Whitespace at the end
 * of the line, a bare `;`, a bad token, NUL or a bare CR are refused.
 */
function checkChunkExtensions(buf: Uint8Array, i: number, eol: number, line: number): void {
  for (;;) {
    let blank = false;
    while (i < eol && (buf[i] === 32 || buf[i] === 9)) {
      i++;
      blank = true;
    }
    if (i === eol) {
      if (blank) throw chunkError("whitespace at the end of chunk line", buf, line, eol);
      return;
    }
    if (buf[i] !== 59 /* ; */) throw chunkError("invalid chunk extension in", buf, line, eol);
    i++;
    while (i < eol && (buf[i] === 32 || buf[i] === 9)) i++;
    const name = i;
    while (i < eol && TCHAR[buf[i]]) i++;
    if (i === name) throw chunkError("invalid chunk extension name in", buf, line, eol);
    let j = i;
    while (j < eol && (buf[j] === 32 || buf[j] === 9)) j++;
    if (j === eol || buf[j] !== 61 /* = */) continue; // the loop refuses what is left
    i = j + 1;
    while (i < eol && (buf[i] === 32 || buf[i] === 9)) i++;
    if (i < eol && buf[i] === 34 /* " */) {
      // quoted-string: qdtext / quoted-pair, no control characters but HTAB.
      for (i++;; i++) {
        if (i >= eol) throw chunkError("unterminated quoted chunk extension in", buf, line, eol);
        let c = buf[i];
        if (c === 34) break;
        if (c === 92 /* \ */ && i + 1 < eol) c = buf[++i]; // quoted-pair: any but controls
        if (c < 32 && c !== 9 || c === 127) {
          throw chunkError("invalid chunk extension value in", buf, line, eol);
        }
      }
      i++;
    } else {
      const value = i;
      while (i < eol && TCHAR[buf[i]]) i++;
      if (i === value) throw chunkError("invalid chunk extension value in", buf, line, eol);
    }
  }
}

/** Checks one trailer field line `buf[from, eol)`: token, colon, a value of VCHAR/obs-text/blanks. */
function checkTrailer(buf: Uint8Array, from: number, eol: number): void {
  let i = from;
  while (i < eol && TCHAR[buf[i]]) i++;
  if (i === from || i === eol || buf[i] !== 58 /* : */) {
    throw chunkError("malformed trailer", buf, from, eol);
  }
  for (i++; i < eol; i++) {
    const c = buf[i];
    if (c < 32 && c !== 9 || c === 127) throw chunkError("malformed trailer", buf, from, eol);
  }
}

/**
 * Incremental decoder for a chunked body (RFC 9112 §7.1): feeds framing bytes, reports data
 * spans. Strict: CRLF only, hex sizes below 2^48 with nothing but valid extensions after them,
 * well-formed trailer fields up to `maxTrailerBytes` in all. Works on the bytes in place:
 * no string is made unless there is an error to report.
 */
export class ChunkedDecoder {
  /** Bytes of chunk data still expected in the current chunk. */
  remaining = 0;
  /** True once the last chunk and trailer section were consumed. */
  done = false;
  /** Trailer fields after the last chunk, names as sent; undefined when there were none. */
  trailers: [string, string][] | undefined = undefined;
  #state: "size" | "data-crlf" | "trailers" = "size";
  #trailerBytes = 0;

  /** `maxTrailerBytes`: the trailer section's largest size. */
  constructor(readonly maxTrailerBytes: number = MAX_TRAILER_BYTES) {}

  /**
   * Consumes framing from buf[start, end) and returns the position reached: at chunk
   * data (remaining > 0), past the whole body (done), or where more input is needed.
   * Throws `ParseError` on anything the chunked grammar does not allow.
   */
  advance(buf: Uint8Array, start: number, end: number): number {
    let pos = start;
    while (pos < end && !this.done && this.remaining === 0) {
      if (this.#state === "data-crlf") {
        // Exactly CRLF after the data: anything else is data past the chunk's size.
        const c = buf[pos];
        if (c === 10) throw new ParseError("chunk line not ended by CRLF");
        if (c !== 13) throw new ParseError("chunk data longer than its size");
        if (pos + 1 >= end) return pos;
        if (buf[pos + 1] !== 10) throw new ParseError("chunk line not ended by CRLF");
        pos += 2;
        this.#state = "size";
        continue;
      }
      const lf = buf.indexOf(10, pos);
      if (lf === -1 || lf >= end) {
        if (end - pos > MAX_CHUNK_LINE) throw new ParseError("chunk framing line too long");
        if (this.#state === "trailers" && this.#trailerBytes + end - pos > this.maxTrailerBytes) {
          throw new ParseError("trailer section too large");
        }
        return pos;
      }
      if (lf === pos || buf[lf - 1] !== 13) throw new ParseError("chunk line not ended by CRLF");
      if (lf - pos > MAX_CHUNK_LINE) throw new ParseError("chunk framing line too long");
      const eol = lf - 1;
      if (this.#state === "size") {
        let i = pos;
        let size = 0;
        let digits = 0;
        for (; i < eol; i++) {
          const h = hexDigit(buf[i]);
          if (h < 0) break;
          if (digits > 0 || h !== 0) digits++;
          size = size * 16 + h;
        }
        const next = buf[i];
        if (
          i === pos || digits > 12 || (i < eol && next !== 59 && next !== 32 && next !== 9)
        ) throw chunkError("invalid chunk size", buf, pos, eol);
        if (i < eol) checkChunkExtensions(buf, i, eol, pos);
        if (size === 0) this.#state = "trailers";
        else {
          this.remaining = size;
          this.#state = "data-crlf";
        }
      } else if (eol === pos) {
        this.done = true;
      } else {
        this.#trailerBytes += lf + 1 - pos;
        if (this.#trailerBytes > this.maxTrailerBytes) {
          throw new ParseError("trailer section too large");
        }
        checkTrailer(buf, pos, eol);
        const line = latin1String(buf.subarray(pos, eol));
        const colon = line.indexOf(":");
        (this.trailers ??= []).push([line.slice(0, colon), trimOws(line, colon + 1)]);
      }
      pos = lf + 1;
    }
    return pos;
  }
}
