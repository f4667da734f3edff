/**
 * Names and name-server addresses as discovery accepts them: pure checks with messages fit for
 * config validation (no sockets here, so config.ts may import it).
 */

/**
 * A normalized name: lower case, no trailing dot. Throws for names DNS cannot carry (a label
 * over 63 bytes, a name over 253, an empty label, non-ASCII: IDNs must be given in punycode).
 */
export function normalizeName(name: string): string {
  const n = name.endsWith(".") ? name.slice(0, -1) : name;
  if (n === "") throw new Error("must not be empty");
  if (!/^[\x21-\x7e]+$/.test(n)) {
    throw new Error("must be ASCII without spaces (write internationalized names in punycode)");
  }
  if (n.length > 253) throw new Error("must be at most 253 characters");
  for (const label of n.split(".")) {
    if (label === "") throw new Error("must not contain an empty label (..)");
    if (label.length > 63) throw new Error(`label "${label}" is longer than 63 characters`);
  }
  return n.toLowerCase();
}

/** A name server's address. */
export interface NameServer {
  host: string;
  port: number;
}

const NAME_SERVER_HINT = "must be an IP address with an optional port, such as 127.0.0.1:5353 " +
  "or [::1]:53";

/**
 * Parses `host[:port]`: an IPv4 address, or an IPv6 address (in brackets when a port follows);
 * the port defaults to 53. Throws with a message suited to config validation.
 */
export function parseNameServer(text: string): NameServer {
  const s = text.trim();
  let host: string;
  let port = "53";
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(s);
  if (bracketed) {
    host = bracketed[1];
    port = bracketed[2] ?? port;
  } else if (s.split(":").length > 2) {
    host = s; // a bare IPv6 address
  } else {
    [host, port = port] = s.split(":");
  }
  const n = Number(port);
  if (!/^\d+$/.test(port) || n < 1 || n > 65535 || !isIP(host)) {
    throw new Error(`${NAME_SERVER_HINT} (got ${JSON.stringify(text)})`);
  }
  return { host: host.includes(":") ? canonicalIPv6(host) : host, port: n };
}

function isIP(host: string): boolean {
  if (/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(host)) {
    return host.split(".").every((o) => Number(o) <= 255 && (o === "0" || !o.startsWith("0")));
  }
  if (!host.includes(":")) return false;
  try {
    new URL(`http://[${host}]/`);
    return true;
  } catch {
    return false;
  }
}

function canonicalIPv6(host: string): string {
  return new URL(`http://[${host}]/`).hostname.slice(1, -1);
}

/** `host:port`, bracketing IPv6 addresses. */
export function formatNameServer(s: NameServer): string {
  return s.host.includes(":") ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`;
}
