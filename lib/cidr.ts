/**
 * IP addresses and CIDR ranges (IPv4, IPv6, IPv4-mapped IPv6), parsed without regexes and
 * matched without allocating. Every address is held as 128 bits (four 32-bit words, network
 * order); IPv4 `a.b.c.d` is `::ffff:a.b.c.d`, so `10.0.0.0/8` also matches `::ffff:10.0.0.1`
 * as a dual-stack socket reports an IPv4 peer. Zones (`fe80::1%eth0`) are not supported.
 */

/** One CIDR range: `address` with the low `128 - prefix` bits zero (IPv4 ranges mapped). */
export interface Cidr {
  /** Network address as four 32-bit words. */
  readonly words: Uint32Array;
  /** Prefix length in 128-bit space (an IPv4 `/8` is 104). */
  readonly prefix: number;
  /** Whether it was written as IPv4. */
  readonly v4: boolean;
}

const groups = new Uint16Array(8);

/** Parses dotted-quad IPv4 in text[from, to): the 32-bit value, or -1. No leading zeros (octal). */
function parseV4(text: string, from: number, to: number): number {
  let value = 0;
  let parts = 0;
  let i = from;
  while (parts < 4) {
    const start = i;
    let n = 0;
    while (i < to) {
      const c = text.charCodeAt(i) - 48;
      if (c < 0 || c > 9) break;
      n = n * 10 + c;
      i++;
    }
    const digits = i - start;
    if (digits === 0 || digits > 3 || n > 255 || (digits > 1 && text.charCodeAt(start) === 48)) {
      return -1;
    }
    value = value * 256 + n;
    parts++;
    if (parts < 4) {
      if (i >= to || text.charCodeAt(i) !== 46 /* . */) return -1;
      i++;
    }
  }
  return i === to ? value : -1;
}

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  c |= 0x20; // lower case
  if (c >= 97 && c <= 102) return c - 87;
  return -1;
}

/** Parses IPv6 text[from, to) into `groups`; false if it is not a (zone-less) IPv6 address. */
function parseV6(text: string, from: number, to: number): boolean {
  let count = 0;
  let gap = -1; // index in `groups` where "::" stands
  let i = from;
  if (to - from < 2) return false;
  if (text.charCodeAt(i) === 58 /* : */) {
    if (text.charCodeAt(i + 1) !== 58) return false;
    gap = 0;
    i += 2;
    if (i === to) {
      groups.fill(0);
      return true;
    }
  }
  for (;;) {
    const start = i;
    let n = 0;
    while (i < to && i - start < 5) {
      const h = hexValue(text.charCodeAt(i));
      if (h < 0) break;
      n = n * 16 + h;
      i++;
    }
    if (i < to && text.charCodeAt(i) === 46 /* . */) {
      // An embedded IPv4 address: the last 32 bits.
      if (count > 6) return false;
      const v4 = parseV4(text, start, to);
      if (v4 < 0) return false;
      groups[count++] = v4 >>> 16;
      groups[count++] = v4 & 0xffff;
      i = to;
      break;
    }
    const digits = i - start;
    if (digits === 0 || digits > 4 || count === 8) return false;
    groups[count++] = n;
    if (i === to) break;
    if (text.charCodeAt(i) !== 58) return false;
    i++;
    if (i < to && text.charCodeAt(i) === 58) {
      if (gap !== -1) return false; // a second "::"
      gap = count;
      i++;
      if (i === to) break;
    } else if (i === to) return false; // a single trailing ":"
  }
  if (gap === -1) return count === 8;
  if (count > 7) return false;
  // Move the groups after "::" to the end and zero the gap.
  const tail = count - gap;
  for (let k = 0; k < tail; k++) groups[7 - k] = groups[count - 1 - k];
  for (let k = gap; k < 8 - tail; k++) groups[k] = 0;
  return true;
}

/**
 * Parses `text` (IPv4 or IPv6) into `out` as four words, IPv4 mapped to `::ffff:0:0/96`.
 * Returns 4 for IPv4, 6 for IPv6, 0 for anything else (`out` is then undefined).
 * Allocation-free: the per-request check parses into a reused array.
 */
export function parseIpInto(text: string, out: Uint32Array, from = 0, to = text.length): 0 | 4 | 6 {
  if (to - from < 2) return 0;
  // A colon within the first 5 characters means IPv6; IPv4 has a dot by then.
  let colon = false;
  for (let i = from; i < to && i < from + 5; i++) {
    if (text.charCodeAt(i) === 58) {
      colon = true;
      break;
    }
  }
  if (!colon) {
    const v4 = parseV4(text, from, to);
    if (v4 < 0) return 0;
    out[0] = 0;
    out[1] = 0;
    out[2] = 0xffff;
    out[3] = v4;
    return 4;
  }
  if (!parseV6(text, from, to)) return 0;
  for (let k = 0; k < 4; k++) out[k] = ((groups[2 * k] << 16) | groups[2 * k + 1]) >>> 0;
  return 6;
}

/** Whether `text` is an IPv4 or (zone-less) IPv6 address. */
export function isIp(text: string, from = 0, to = text.length): boolean {
  return parseIpInto(text, scratch, from, to) !== 0;
}

/** Parses an address, throwing an Error that says why it is not one. */
export function parseIp(text: string): { words: Uint32Array; v4: boolean } {
  const words = new Uint32Array(4);
  const kind = parseIpInto(text, words);
  if (kind === 0) {
    if (text.includes("%")) throw new Error(`${JSON.stringify(text)}: zones are not supported`);
    throw new Error(`${JSON.stringify(text)} is not an IPv4 or IPv6 address`);
  }
  return { words, v4: kind === 4 };
}

/** Whether the words are an IPv4(-mapped) address. */
export function isV4Mapped(words: Uint32Array): boolean {
  return words[0] === 0 && words[1] === 0 && words[2] === 0xffff;
}

/** Formats four words as text: dotted quad for IPv4-mapped, else RFC 5952 IPv6. */
export function formatIp(words: Uint32Array, v6 = false): string {
  if (!v6 && isV4Mapped(words)) return formatV4(words[3]);
  for (let k = 0; k < 4; k++) {
    groups[2 * k] = words[k] >>> 16;
    groups[2 * k + 1] = words[k] & 0xffff;
  }
  // The longest run of two or more zero groups becomes "::" (the first one on a tie).
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  // ::ffff:a.b.c.d keeps its mixed notation (RFC 5952 §5).
  if (best === 0 && bestLen === 5 && groups[5] === 0xffff) return "::ffff:" + formatV4(words[3]);
  let out = "";
  for (let i = 0; i < 8; i++) {
    if (i === best) {
      out += "::";
      i += bestLen - 1;
      continue;
    }
    if (out !== "" && !out.endsWith(":")) out += ":";
    out += groups[i].toString(16);
  }
  return out;
}

function formatV4(v: number): string {
  return (v >>> 24) + "." + ((v >>> 16) & 255) + "." + ((v >>> 8) & 255) + "." + (v & 255);
}

/**
 * Parses `a.b.c.d/n`, `x::y/n`, or a bare address (a single host). Throws an Error with
 * the reason for anything else, including host bits set past the prefix (a likely typo).
 */
export function parseCidr(text: string): Cidr {
  const slash = text.indexOf("/");
  const addr = slash === -1 ? text : text.slice(0, slash);
  const words = new Uint32Array(4);
  const kind = parseIpInto(addr, words);
  if (kind === 0) {
    const why = addr.includes("%")
      ? "zones are not supported"
      : `${JSON.stringify(addr)} is not an IPv4 or IPv6 address`;
    throw new Error(`invalid CIDR ${JSON.stringify(text)}: ${why}`);
  }
  const v4 = kind === 4;
  const max = v4 ? 32 : 128;
  let bits = max;
  if (slash !== -1) {
    const len = text.slice(slash + 1);
    if (!/^(0|[1-9]\d{0,2})$/.test(len) || Number(len) > max) {
      throw new Error(
        `invalid CIDR ${JSON.stringify(text)}: prefix length must be 0-${max} for ${
          v4 ? "IPv4" : "IPv6"
        }`,
      );
    }
    bits = Number(len);
  }
  const prefix = v4 ? 96 + bits : bits;
  const mask = maskWords(prefix);
  for (let k = 0; k < 4; k++) {
    if ((words[k] & ~mask[k]) !== 0) {
      for (let j = 0; j < 4; j++) words[j] = (words[j] & mask[j]) >>> 0;
      throw new Error(
        `invalid CIDR ${JSON.stringify(text)}: bits set past the /${bits} prefix ` +
          `(did you mean ${formatIp(words)}/${bits}?)`,
      );
    }
  }
  return { words, prefix, v4 };
}

function maskWords(prefix: number): Uint32Array {
  const mask = new Uint32Array(4);
  for (let k = 0; k < 4; k++) {
    const bits = Math.max(0, Math.min(32, prefix - 32 * k));
    mask[k] = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  }
  return mask;
}

/** Whether `ip` is in `cidr` (string form, for tests and one-off checks). */
export function cidrContains(cidr: Cidr | string, ip: string): boolean {
  return cidrMatcher([cidr])(ip);
}

const scratch = new Uint32Array(4);

/** A matcher that matches nothing: no trusted proxies. */
export const MATCH_NONE: (ip: string) => boolean = () => false;

/**
 * A predicate telling whether an address is in any of `list` (CIDRs or bare addresses;
 * throws on an invalid entry, naming it). Precomputed once: a call parses `ip` into a
 * reused buffer and compares masked words, allocating nothing. Anything that is not an
 * address (a hostname, `unknown`, a zone) matches nothing.
 */
export function cidrMatcher(list: readonly (string | Cidr)[]): (ip: string) => boolean {
  if (list.length === 0) return MATCH_NONE;
  const n = list.length;
  const nets = new Uint32Array(4 * n);
  const masks = new Uint32Array(4 * n);
  let all = false;
  for (let i = 0; i < n; i++) {
    const item = list[i];
    const cidr = typeof item === "string" ? parseCidr(item.trim()) : item;
    if (cidr.prefix === 0) all = true;
    nets.set(cidr.words, 4 * i);
    masks.set(maskWords(cidr.prefix), 4 * i);
  }
  if (all) return (ip) => parseIpInto(ip, scratch) !== 0;
  return (ip: string): boolean => {
    if (parseIpInto(ip, scratch) === 0) return false;
    const w0 = scratch[0], w1 = scratch[1], w2 = scratch[2], w3 = scratch[3];
    for (let b = 0; b < nets.length; b += 4) {
      if (
        ((w3 & masks[b + 3]) >>> 0) === nets[b + 3] &&
        ((w2 & masks[b + 2]) >>> 0) === nets[b + 2] &&
        ((w1 & masks[b + 1]) >>> 0) === nets[b + 1] && ((w0 & masks[b]) >>> 0) === nets[b]
      ) return true;
    }
    return false;
  };
}
