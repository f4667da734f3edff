/**
 * Reads a TLS ClientHello from the first bytes of a connection (RFC 8446 §4.1.2) for what
 * `Deno.listenTls` does not tell: the server name (SNI), the versions the client offers, and
 * its ALPN list. Used by the listener front that enforces `minVersion: "1.3"`.
 */

/** What a ClientHello says. */
export interface ClientHello {
  /** The SNI host name, lower-case, or undefined when the client sent none. */
  serverName: string | undefined;
  /** Offered versions: supported_versions entries, or the legacy version when absent (0x0304 = TLS 1.3). */
  versions: number[];
  /** Offered ALPN protocol names. */
  alpn: string[];
  /** Bytes the ClientHello took on the wire (records included). */
  consumed: number;
}

/** TLS 1.3 in `versions`. */
export const TLS13 = 0x0304;
/** TLS 1.2 in `versions`. */
export const TLS12 = 0x0303;
/** Largest ClientHello accepted (records included). */
export const MAX_HELLO = 64 * 1024;

/** A fatal `protocol_version` alert (70), sent to a client that offers too old a TLS version. */
export const ALERT_PROTOCOL_VERSION: Uint8Array = new Uint8Array([
  0x15,
  0x03,
  0x03,
  0x00,
  0x02,
  0x02,
  70,
]);

const ascii = new TextDecoder("latin1");

/**
 * Parses the ClientHello at the start of `buf[0, end)`: "more" when more bytes are needed,
 * "invalid" when this is not a TLS ClientHello, else what it says.
 */
export function parseClientHello(buf: Uint8Array, end: number): ClientHello | "more" | "invalid" {
  // The handshake message may be split over several records: gather their payloads.
  let at = 0;
  let gathered = new Uint8Array(0);
  let need = -1;
  while (need < 0 || gathered.length < need) {
    if (end - at < 5) return end >= MAX_HELLO ? "invalid" : "more";
    if (buf[at] !== 0x16 || buf[at + 1] !== 0x03) return "invalid";
    const length = (buf[at + 3] << 8) | buf[at + 4];
    if (length === 0 || length > 16384 + 2048) return "invalid";
    if (end - at - 5 < length) return at + 5 + length > MAX_HELLO ? "invalid" : "more";
    const next = new Uint8Array(gathered.length + length);
    next.set(gathered);
    next.set(buf.subarray(at + 5, at + 5 + length), gathered.length);
    gathered = next;
    at += 5 + length;
    if (need < 0 && gathered.length >= 4) {
      if (gathered[0] !== 1) return "invalid";
      need = 4 + ((gathered[1] << 16) | (gathered[2] << 8) | gathered[3]);
      if (need > MAX_HELLO) return "invalid";
    }
  }
  const hello = readHello(gathered.subarray(4, need));
  if (hello === undefined) return "invalid";
  hello.consumed = at;
  return hello;
}

function readHello(b: Uint8Array): ClientHello | undefined {
  const hello: ClientHello = { serverName: undefined, versions: [], alpn: [], consumed: 0 };
  let p = 0;
  const u16 = (i: number) => (b[i] << 8) | b[i + 1];
  if (b.length < 2 + 32 + 1) return undefined;
  const legacy = u16(p);
  p += 2 + 32;
  p += 1 + b[p]; // legacy_session_id
  if (p + 2 > b.length) return undefined;
  p += 2 + u16(p); // cipher_suites
  if (p + 1 > b.length) return undefined;
  p += 1 + b[p]; // legacy_compression_methods
  if (p > b.length) return undefined;
  if (p + 2 <= b.length) {
    const extEnd = p + 2 + u16(p);
    if (extEnd > b.length) return undefined;
    p += 2;
    while (p + 4 <= extEnd) {
      const type = u16(p);
      const len = u16(p + 2);
      const q = p + 4;
      if (q + len > extEnd) return undefined;
      if (type === 0 && len >= 5) {
        // server_name: list of (type, length, name); type 0 is host_name.
        let i = q + 2;
        while (i + 3 <= q + len) {
          const nameType = b[i];
          const nameLen = u16(i + 1);
          if (nameType === 0) {
            hello.serverName = ascii.decode(b.subarray(i + 3, i + 3 + nameLen)).toLowerCase();
            break;
          }
          i += 3 + nameLen;
        }
      } else if (type === 43 && len >= 1) {
        for (let i = q + 1; i + 1 < q + 1 + b[q] && i + 1 < q + len; i += 2) {
          hello.versions.push(u16(i));
        }
      } else if (type === 16 && len >= 2) {
        let i = q + 2;
        while (i < q + len) {
          const l = b[i];
          hello.alpn.push(ascii.decode(b.subarray(i + 1, i + 1 + l)));
          i += 1 + l;
        }
      }
      p = q + len;
    }
  }
  if (hello.versions.length === 0) hello.versions.push(legacy);
  return hello;
}
