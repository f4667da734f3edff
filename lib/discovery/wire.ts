/**
 * The DNS message format (RFC 1035 §4, SRV from RFC 2782, EDNS(0) from RFC 6891), only as much
 * as discovery needs: one question out; A, AAAA, CNAME and SRV answers back, with their TTLs.
 */

/** Record types discovery asks for, with their RFC 1035 / 3596 / 2782 codes. */
export const TYPE = { A: 1, CNAME: 5, AAAA: 28, SRV: 33 } as const;
/** A record type discovery asks for. */
export type QueryType = keyof typeof TYPE;

const OPT = 41;
/** The UDP payload size offered through EDNS(0): the DNS Flag Day 2020 value, no fragmentation. */
export const EDNS_PAYLOAD = 1232;

/** Response codes (RFC 1035 §4.1.1) by number, for messages. */
export const RCODE_NAMES: Record<number, string> = {
  0: "NOERROR",
  1: "FORMERR",
  2: "SERVFAIL",
  3: "NXDOMAIN",
  4: "NOTIMP",
  5: "REFUSED",
};

/** One answer record, decoded. */
export type DnsRecord =
  | { type: "A" | "AAAA"; name: string; ttl: number; address: string }
  | { type: "CNAME"; name: string; ttl: number; target: string }
  | {
    type: "SRV";
    name: string;
    ttl: number;
    priority: number;
    weight: number;
    port: number;
    target: string;
  };

/** A decoded response: its header fields and the answer section (other types skipped). */
export interface DnsResponse {
  id: number;
  rcode: number;
  /** TC: the answer did not fit in the UDP payload; ask again over TCP. */
  truncated: boolean;
  /** The question as the server echoed it (lower case, no trailing dot). */
  question: { name: string; type: number } | undefined;
  answers: DnsRecord[];
}

/** Thrown for a message that does not follow the format. */
export class MalformedMessage extends Error {
  constructor(reason: string) {
    super(`malformed DNS response: ${reason}`);
    this.name = "MalformedMessage";
  }
}

/** Encodes a recursive query for `name` (normalized), with an EDNS(0) OPT record unless `edns` is false. */
export function encodeQuery(id: number, name: string, type: QueryType, edns = true): Uint8Array {
  const labels = name.split(".").map((l) => new TextEncoder().encode(l));
  const nameLength = labels.reduce((n, l) => n + 1 + l.length, 1);
  const out = new Uint8Array(12 + nameLength + 4 + (edns ? 11 : 0));
  const view = new DataView(out.buffer);
  view.setUint16(0, id);
  view.setUint16(2, 0x0100); // RD: the server resolves recursively when it can
  view.setUint16(4, 1); // QDCOUNT
  view.setUint16(10, edns ? 1 : 0); // ARCOUNT
  let at = 12;
  for (const l of labels) {
    out[at++] = l.length;
    out.set(l, at);
    at += l.length;
  }
  out[at++] = 0;
  view.setUint16(at, TYPE[type]);
  view.setUint16(at + 2, 1); // class IN
  at += 4;
  if (edns) {
    out[at] = 0; // root name
    view.setUint16(at + 1, OPT);
    view.setUint16(at + 3, EDNS_PAYLOAD); // the class field carries the payload size
    // TTL (extended rcode, version, flags) and RDLENGTH stay 0.
  }
  return out;
}

/** Decodes a response; throws {@linkcode MalformedMessage} when it is cut short or inconsistent. */
export function decodeResponse(msg: Uint8Array): DnsResponse {
  if (msg.length < 12) throw new MalformedMessage(`${msg.length} bytes, shorter than a header`);
  const view = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
  const id = view.getUint16(0);
  const flags = view.getUint16(2);
  if (!(flags & 0x8000)) throw new MalformedMessage("not a response (QR is 0)");
  const qdcount = view.getUint16(4);
  const ancount = view.getUint16(6);
  let at = 12;
  let question: DnsResponse["question"];
  for (let i = 0; i < qdcount; i++) {
    const [name, next] = readName(msg, at);
    need(msg, next + 4);
    if (i === 0) question = { name, type: view.getUint16(next) };
    at = next + 4;
  }
  const answers: DnsRecord[] = [];
  for (let i = 0; i < ancount; i++) {
    const [name, next] = readName(msg, at);
    need(msg, next + 10);
    const type = view.getUint16(next);
    // RFC 2181 §8: a TTL with the top bit set is treated as 0.
    const raw = view.getUint32(next + 4);
    const ttl = raw > 0x7fffffff ? 0 : raw;
    const length = view.getUint16(next + 8);
    const start = next + 10;
    at = start + length;
    need(msg, at);
    const rdata = msg.subarray(start, at);
    if (type === TYPE.A) {
      if (length !== 4) throw new MalformedMessage(`A record of ${length} bytes`);
      answers.push({ type: "A", name, ttl, address: rdata.join(".") });
    } else if (type === TYPE.AAAA) {
      if (length !== 16) throw new MalformedMessage(`AAAA record of ${length} bytes`);
      answers.push({ type: "AAAA", name, ttl, address: formatIPv6(rdata) });
    } else if (type === TYPE.CNAME) {
      answers.push({ type: "CNAME", name, ttl, target: readName(msg, start)[0] });
    } else if (type === TYPE.SRV) {
      if (length < 7) throw new MalformedMessage(`SRV record of ${length} bytes`);
      answers.push({
        type: "SRV",
        name,
        ttl,
        priority: view.getUint16(start),
        weight: view.getUint16(start + 2),
        port: view.getUint16(start + 4),
        target: readName(msg, start + 6)[0],
      });
    }
  }
  return { id, rcode: flags & 0x000f, truncated: (flags & 0x0200) !== 0, question, answers };
}

function need(msg: Uint8Array, end: number): void {
  if (end > msg.length) throw new MalformedMessage("cut short");
}

/**
 * Reads a possibly compressed name at `at`; returns it (lower case, no trailing dot; "" for the
 * root) and the offset after it in the original position.
 */
function readName(msg: Uint8Array, at: number): [string, number] {
  const labels: string[] = [];
  let end = -1;
  // Each pointer must go backwards (RFC 1035 §4.1.4 points at a prior occurrence), so no loops.
  let limit = at;
  for (let hops = 0;; hops++) {
    need(msg, at + 1);
    const len = msg[at];
    if (len === 0) {
      if (end < 0) end = at + 1;
      break;
    }
    if ((len & 0xc0) === 0xc0) {
      need(msg, at + 2);
      const target = ((len & 0x3f) << 8) | msg[at + 1];
      if (target >= limit || hops > 127) throw new MalformedMessage("bad compression pointer");
      if (end < 0) end = at + 2;
      at = limit = target;
      continue;
    }
    if (len > 63) throw new MalformedMessage(`label length ${len}`);
    need(msg, at + 1 + len);
    labels.push(String.fromCharCode(...msg.subarray(at + 1, at + 1 + len)));
    at += 1 + len;
  }
  return [labels.join(".").toLowerCase(), end];
}

/** RFC 5952 text for 16 address bytes, through the URL serializer (which implements it). */
function formatIPv6(bytes: Uint8Array): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] << 8) | bytes[i + 1]).toString(16));
  return new URL(`http://[${groups.join(":")}]/`).hostname.slice(1, -1);
}
