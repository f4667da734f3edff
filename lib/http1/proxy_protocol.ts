/**
 * The PROXY protocol (HAProxy's spec, doc/proxy-protocol.txt), versions 1 (text) and 2
 * (binary): an incremental parser over a connection's read buffer, for a listener behind a
 * TCP proxy, and encoders, for connections to backends that want to know the client.
 */
import { formatIp, isV4Mapped, parseIpInto } from "../cidr.ts";
import { ParseError } from "./wire.ts";

/** An address and port. */
export interface Endpoint {
  readonly ip: string;
  readonly port: number;
}

/** The two ends of the connection a PROXY header describes. */
export interface ProxyAddresses {
  /** The client. */
  readonly source: Endpoint;
  /** The address the client connected to. */
  readonly destination: Endpoint;
}

/** A parsed PROXY header. */
export interface ProxyHeader {
  version: 1 | 2;
  /**
   * The original connection's ends; undefined when the receiver is to use the real
   * connection's (v2 LOCAL, v1 UNKNOWN, v2 AF_UNSPEC or AF_UNIX).
   */
  addresses: ProxyAddresses | undefined;
  /** Bytes the header occupied, TLVs included. */
  size: number;
}

/** A PROXY header that does not match the spec; the connection is to be dropped. */
export class ProxyProtocolError extends ParseError {
  override name = "ProxyProtocolError";
}

/** The v2 signature, then version 2 in the 13th byte's high nibble. */
const V2_SIGNATURE = Uint8Array.of(
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
);
const V1_PREFIX = Uint8Array.of(0x50, 0x52, 0x4f, 0x58, 0x59, 0x20); // "PROXY "
/** The longest v1 line, CRLF included (spec §2.1). */
export const V1_MAX_LENGTH = 107;
/**
 * The longest v2 address-and-TLV block accepted by default: room for AF_UNIX addresses and
 * the TLVs HAProxy, AWS and others send (SSL details, a unique ID), not for a client cert.
 */
export const V2_MAX_LENGTH = 4096;

const words = new Uint32Array(4);

/**
 * Parses a PROXY header (v1 or v2) at buf[start, end). Returns it once complete, or undefined
 * when more bytes are needed (having checked those at hand are a valid start). Throws a
 * {@linkcode ProxyProtocolError} as soon as the bytes cannot be one: the receiver must never
 * guess, so anything else (an HTTP request, TLS) is an error. `maxV2Length` bounds a v2
 * header's variable part.
 */
export function parseProxyHeader(
  buf: Uint8Array,
  start: number,
  end: number,
  maxV2Length: number = V2_MAX_LENGTH,
): ProxyHeader | undefined {
  const n = end - start;
  if (n <= 0) return undefined;
  if (buf[start] === 0x0d) return parseV2(buf, start, n, maxV2Length);
  if (buf[start] === 0x50) return parseV1(buf, start, n);
  throw new ProxyProtocolError("not a PROXY protocol header");
}

function parseV1(buf: Uint8Array, start: number, n: number): ProxyHeader | undefined {
  for (let i = 0; i < V1_PREFIX.length && i < n; i++) {
    if (buf[start + i] !== V1_PREFIX[i]) {
      throw new ProxyProtocolError("not a PROXY protocol header");
    }
  }
  const limit = start + Math.min(n, V1_MAX_LENGTH);
  let lf = -1;
  for (let i = start; i < limit; i++) {
    const c = buf[i];
    if (c === 10) {
      lf = i;
      break;
    }
    // Printable ASCII only; a CR only right before the LF.
    if ((c < 0x20 || c > 0x7e) && !(c === 13 && i + 1 < start + n && buf[i + 1] === 10)) {
      if (c === 13 && i + 1 === start + n) return undefined; // the LF is yet to come
      throw new ProxyProtocolError(`invalid byte 0x${c.toString(16)} in PROXY v1 header`);
    }
  }
  if (lf === -1) {
    if (n >= V1_MAX_LENGTH) {
      throw new ProxyProtocolError(`PROXY v1 header longer than ${V1_MAX_LENGTH} bytes`);
    }
    return undefined;
  }
  if (lf === start || buf[lf - 1] !== 13) {
    throw new ProxyProtocolError("PROXY v1 header not ended by CRLF");
  }
  const line = String.fromCharCode.apply(null, buf.subarray(start, lf - 1) as unknown as number[]);
  const size = lf + 1 - start;
  const parts = line.split(" ");
  if (parts[1] === "UNKNOWN") {
    // The sender could not tell: use the real connection, ignoring the rest of the line.
    return { version: 1, addresses: undefined, size };
  }
  if (parts.length !== 6) {
    throw new ProxyProtocolError(`malformed PROXY v1 header ${JSON.stringify(line)}`);
  }
  const [, proto, src, dst, sport, dport] = parts;
  if (proto !== "TCP4" && proto !== "TCP6") {
    throw new ProxyProtocolError(`unknown PROXY v1 protocol ${JSON.stringify(proto)}`);
  }
  const kind = proto === "TCP4" ? 4 : 6;
  const source = v1Endpoint(src, sport, kind);
  const destination = v1Endpoint(dst, dport, kind);
  return { version: 1, addresses: { source, destination }, size };
}

function v1Endpoint(ip: string, port: string, kind: 4 | 6): Endpoint {
  if (parseIpInto(ip, words) !== kind) {
    throw new ProxyProtocolError(
      `invalid ${kind === 4 ? "IPv4" : "IPv6"} address ${JSON.stringify(ip)} in PROXY v1 header`,
    );
  }
  // Decimal 0-65535 without leading zeros (they would read as octal elsewhere).
  let value = 0;
  const valid = port.length > 0 && port.length <= 5 && (port === "0" || port[0] !== "0");
  for (let i = 0; valid && i < port.length; i++) {
    const d = port.charCodeAt(i) - 48;
    if (d < 0 || d > 9) {
      value = -1;
      break;
    }
    value = value * 10 + d;
  }
  if (!valid || value < 0 || value > 65535) {
    throw new ProxyProtocolError(`invalid port ${JSON.stringify(port)} in PROXY v1 header`);
  }
  return { ip: formatIp(words, kind === 6), port: value };
}

function parseV2(
  buf: Uint8Array,
  start: number,
  n: number,
  maxLength: number,
): ProxyHeader | undefined {
  for (let i = 0; i < V2_SIGNATURE.length && i < n; i++) {
    if (buf[start + i] !== V2_SIGNATURE[i]) {
      throw new ProxyProtocolError("not a PROXY protocol header");
    }
  }
  if (n < 16) return undefined;
  const verCmd = buf[start + 12];
  if (verCmd >> 4 !== 2) {
    throw new ProxyProtocolError(`unsupported PROXY protocol version ${verCmd >> 4}`);
  }
  const command = verCmd & 0x0f;
  if (command > 1) throw new ProxyProtocolError(`unknown PROXY v2 command ${command}`);
  const length = (buf[start + 14] << 8) | buf[start + 15];
  if (length > maxLength) {
    throw new ProxyProtocolError(`PROXY v2 header of ${16 + length} bytes is over the limit`);
  }
  if (n < 16 + length) return undefined;
  const size = 16 + length;
  // LOCAL: the proxy's own connection (a health check); the family and block are ignored.
  if (command === 0) return { version: 2, addresses: undefined, size };
  const famProto = buf[start + 13];
  const family = famProto >> 4, transport = famProto & 0x0f;
  if (family > 3 || transport > 2) {
    throw new ProxyProtocolError(
      `unknown PROXY v2 address family/protocol 0x${famProto.toString(16).padStart(2, "0")}`,
    );
  }
  // UNSPEC: the sender could not tell; use the real connection's ends.
  if (family === 0 || transport === 0) return { version: 2, addresses: undefined, size };
  const body = start + 16;
  const addressLength = family === 1 ? 12 : family === 2 ? 36 : 216;
  if (length < addressLength) {
    throw new ProxyProtocolError(
      `PROXY v2 address block of ${length} bytes is too short for its family`,
    );
  }
  checkTlvs(buf, body + addressLength, body + length);
  if (transport !== 1) throw new ProxyProtocolError("PROXY v2 header for a datagram transport");
  // AF_UNIX has no address to act on: the real connection's ends serve.
  if (family === 3) return { version: 2, addresses: undefined, size };
  let source: Endpoint, destination: Endpoint;
  if (family === 1) {
    source = { ip: v4At(buf, body), port: (buf[body + 8] << 8) | buf[body + 9] };
    destination = { ip: v4At(buf, body + 4), port: (buf[body + 10] << 8) | buf[body + 11] };
  } else {
    source = { ip: v6At(buf, body), port: (buf[body + 32] << 8) | buf[body + 33] };
    destination = { ip: v6At(buf, body + 16), port: (buf[body + 34] << 8) | buf[body + 35] };
  }
  return { version: 2, addresses: { source, destination }, size };
}

/** Walks the TLVs in buf[from, to): each must fit exactly; their contents are not used. */
function checkTlvs(buf: Uint8Array, from: number, to: number): void {
  let i = from;
  while (i < to) {
    if (i + 3 > to) throw new ProxyProtocolError("truncated TLV in PROXY v2 header");
    const length = (buf[i + 1] << 8) | buf[i + 2];
    i += 3 + length;
    if (i > to) throw new ProxyProtocolError("TLV longer than the PROXY v2 header");
  }
}

function v4At(buf: Uint8Array, at: number): string {
  return buf[at] + "." + buf[at + 1] + "." + buf[at + 2] + "." + buf[at + 3];
}

function v6At(buf: Uint8Array, at: number): string {
  for (let k = 0; k < 4; k++) {
    const o = at + 4 * k;
    words[k] = ((buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3]) >>> 0;
  }
  return formatIp(words, true);
}

const srcWords = new Uint32Array(4);
const dstWords = new Uint32Array(4);

/**
 * Which family both ends fit: 4 when both are IPv4 (or IPv4-mapped), 6 when both parse (an
 * IPv4 end is then sent IPv4-mapped), 0 when either is not an address. Fills the word arrays.
 */
function familyOf(addresses: ProxyAddresses): 0 | 4 | 6 {
  if (
    parseIpInto(addresses.source.ip, srcWords) === 0 ||
    parseIpInto(addresses.destination.ip, dstWords) === 0
  ) return 0;
  return isV4Mapped(srcWords) && isV4Mapped(dstWords) ? 4 : 6;
}

/**
 * A v1 header: `PROXY TCP4|TCP6 src dst sport dport\r\n`, or `PROXY UNKNOWN\r\n` without
 * addresses (or with ends that are not IP addresses).
 */
export function encodeProxyV1(addresses: ProxyAddresses | undefined): Uint8Array {
  let line = "PROXY UNKNOWN\r\n";
  const family = addresses ? familyOf(addresses) : 0;
  if (addresses && family !== 0) {
    const v6 = family === 6;
    line = `PROXY TCP${family} ${formatIp(srcWords, v6)} ${formatIp(dstWords, v6)} ` +
      `${addresses.source.port} ${addresses.destination.port}\r\n`;
  }
  const out = new Uint8Array(line.length);
  for (let i = 0; i < line.length; i++) out[i] = line.charCodeAt(i);
  return out;
}

/**
 * A v2 header: PROXY over TCP/IPv4 or TCP/IPv6, or LOCAL (the connection is the sender's
 * own, as for a health check) without addresses or with ends that are not IP addresses.
 */
export function encodeProxyV2(addresses: ProxyAddresses | undefined): Uint8Array {
  const family = addresses ? familyOf(addresses) : 0;
  const length = family === 4 ? 12 : family === 6 ? 36 : 0;
  const out = new Uint8Array(16 + length);
  out.set(V2_SIGNATURE);
  out[12] = family === 0 ? 0x20 : 0x21; // version 2; LOCAL or PROXY
  out[13] = family === 4 ? 0x11 : family === 6 ? 0x21 : 0x00;
  out[14] = length >> 8;
  out[15] = length & 0xff;
  if (!addresses || family === 0) return out;
  const view = new DataView(out.buffer);
  if (family === 4) {
    view.setUint32(16, srcWords[3]);
    view.setUint32(20, dstWords[3]);
    view.setUint16(24, addresses.source.port);
    view.setUint16(26, addresses.destination.port);
  } else {
    for (let k = 0; k < 4; k++) {
      view.setUint32(16 + 4 * k, srcWords[k]);
      view.setUint32(32 + 4 * k, dstWords[k]);
    }
    view.setUint16(48, addresses.source.port);
    view.setUint16(50, addresses.destination.port);
  }
  return out;
}
