/**
 * A DNS stub client: one question to the configured (or the system's) name servers over UDP,
 * again over TCP when the answer was truncated. Our own rather than `node:dns` because Deno's
 * `node:dns` reports NXDOMAIN, NODATA and REFUSED all as ENOTFOUND and gives SRV answers no TTL.
 */
import dgram from "node:dgram";
import { formatNameServer, type NameServer, normalizeName, parseNameServer } from "./names.ts";
import {
  decodeResponse,
  type DnsResponse,
  encodeQuery,
  MalformedMessage,
  type QueryType,
  RCODE_NAMES,
  TYPE,
} from "./wire.ts";

/**
 * Why a lookup failed: `nxdomain` (the name does not exist), `nodata` (it exists but has no
 * record of the type asked), `servfail`, `refused` (the server's answers), `timeout` (no answer
 * from any server), `network` (a socket error, e.g. TCP connection refused), `malformed` (an
 * answer that does not parse), `config` (an invalid name or port, no usable name server).
 */
export type DnsErrorKind =
  | "nxdomain"
  | "nodata"
  | "servfail"
  | "refused"
  | "timeout"
  | "network"
  | "malformed"
  | "config";

/**
 * A failed lookup; `message` names the question and the reason, e.g.
 * `api.internal A: NXDOMAIN (no such name)` or `api.internal A: REFUSED from 127.0.0.1:5353`.
 */
export class DnsError extends Error {
  constructor(
    readonly kind: DnsErrorKind,
    /** The name asked for. */
    readonly query: string,
    /** The record type asked for. */
    readonly type: string,
    detail: string,
  ) {
    super(`${query} ${type}: ${detail}`);
    this.name = "DnsError";
  }
}

/**
 * The `nameserver` lines of resolv.conf (port 53), as glibc reads them; 127.0.0.1 when there
 * are none. Search domains are not applied: discovery names are absolute (as in HAProxy's
 * `parse-resolv-conf`). Throws a `config` {@linkcode DnsError} when the file cannot be read.
 */
export async function systemNameServers(path = "/etc/resolv.conf"): Promise<NameServer[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw new DnsError(
      "config",
      "(system)",
      "resolver",
      `cannot read ${path} (${(err as Error).message}); set discovery.nameServer`,
    );
  }
  const servers: NameServer[] = [];
  for (const line of text.split("\n")) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (!m) continue;
    try {
      // A scope id (fe80::1%eth0) is kept out: Deno cannot address it.
      servers.push(parseNameServer(m[1].includes(":") ? `[${m[1]}]` : m[1]));
    } catch { /* skipped, like glibc skips what it cannot parse */ }
  }
  return servers.length ? servers : [{ host: "127.0.0.1", port: 53 }];
}

/** How a query is sent. */
export interface QueryOptions {
  /**
   * Servers tried in order, for each attempt.
   * @default the system's ({@linkcode systemNameServers})
   */
  nameServers?: readonly NameServer[];
  /**
   * How long to wait for one server's answer (ms).
   * @default 2000
   */
  timeout?: number;
  /**
   * Rounds over the servers before giving up.
   * @default 2
   */
  attempts?: number;
  /** Ends the query early; it then rejects with the signal's reason. */
  signal?: AbortSignal;
}

/**
 * Asks for `name`'s records of `type`; resolves with the response when it is NOERROR (the
 * answer list may be empty: NODATA) or NXDOMAIN. SERVFAIL, REFUSED and the like, timeouts and
 * socket errors move on to the next server and attempt; if none answers usefully, throws a
 * {@linkcode DnsError} for the last failure.
 */
export async function query(
  name: string,
  type: QueryType,
  options: QueryOptions = {},
): Promise<DnsResponse> {
  const qname = normalizeName(name);
  const servers = options.nameServers ?? await systemNameServers();
  const timeout = options.timeout ?? 2_000;
  const attempts = options.attempts ?? 2;
  let last: DnsError | undefined;
  for (let attempt = 0; attempt < attempts; attempt++) {
    for (const server of servers) {
      options.signal?.throwIfAborted();
      const where = formatNameServer(server);
      try {
        let response = await exchange(server, qname, type, true, timeout, options.signal);
        // A server that does not know EDNS may answer FORMERR (RFC 6891 §7): ask it plainly.
        if (response.rcode === 1) {
          response = await exchange(server, qname, type, false, timeout, options.signal);
        }
        if (response.rcode === 0 || response.rcode === 3) return response;
        const rcode = RCODE_NAMES[response.rcode] ?? `RCODE ${response.rcode}`;
        const kind = response.rcode === 5 ? "refused" : "servfail";
        last = new DnsError(kind, qname, type, `${rcode} from ${where}`);
      } catch (err) {
        if (options.signal?.aborted) throw options.signal.reason;
        if (err instanceof TimedOut) {
          last = new DnsError(
            "timeout",
            qname,
            type,
            `no answer from ${where} within ${timeout}ms`,
          );
        } else if (err instanceof MalformedMessage) {
          last = new DnsError("malformed", qname, type, `${err.message} from ${where}`);
        } else {
          last = new DnsError("network", qname, type, `${(err as Error).message} (${where})`);
        }
      }
    }
  }
  throw last ?? new DnsError("config", qname, type, "no name server to ask");
}

class TimedOut extends Error {}

/** One question to one server: over UDP, then over TCP if the answer came back truncated. */
async function exchange(
  server: NameServer,
  name: string,
  type: QueryType,
  edns: boolean,
  timeout: number,
  signal: AbortSignal | undefined,
): Promise<DnsResponse> {
  const id = crypto.getRandomValues(new Uint16Array(1))[0];
  const message = encodeQuery(id, name, type, edns);
  const response = await overUdp(
    server,
    message,
    (r) => matches(r, id, name, type),
    timeout,
    signal,
  );
  if (!response.truncated) return response;
  const tcpId = crypto.getRandomValues(new Uint16Array(1))[0];
  const tcp = await overTcp(server, encodeQuery(tcpId, name, type, edns), timeout, signal);
  if (!matches(tcp, tcpId, name, type)) throw new MalformedMessage("answer to another question");
  return tcp;
}

function matches(r: DnsResponse, id: number, name: string, type: QueryType): boolean {
  return r.id === id && r.question?.name === name &&
    r.question.type === TYPE[type];
}

/**
 * Sends over a connected UDP socket (only that server's datagrams arrive) and waits for the
 * datagram that answers this question; others (late answers to an earlier try) are ignored.
 */
function overUdp(
  server: NameServer,
  message: Uint8Array,
  isAnswer: (r: DnsResponse) => boolean,
  timeout: number,
  signal: AbortSignal | undefined,
): Promise<DnsResponse> {
  const { promise, resolve, reject } = Promise.withResolvers<DnsResponse>();
  const socket = dgram.createSocket(server.host.includes(":") ? "udp6" : "udp4");
  const finish = (settle: () => void) => {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
    try {
      socket.close();
    } catch { /* closed already */ }
    settle();
  };
  const onAbort = () => finish(() => reject(signal!.reason));
  const timer = setTimeout(() => finish(() => reject(new TimedOut())), timeout);
  signal?.addEventListener("abort", onAbort, { once: true });
  socket.on("error", (err) => finish(() => reject(err)));
  socket.on("message", (data: Uint8Array) => {
    let r: DnsResponse;
    try {
      r = decodeResponse(data);
    } catch {
      return; // not something we can read, so not known to be ours
    }
    if (isAnswer(r)) finish(() => resolve(r));
  });
  socket.connect(server.port, server.host, () => {
    socket.send(message, (err) => {
      if (err) finish(() => reject(err));
    });
  });
  return promise;
}

/** Sends with the two-byte length prefix of RFC 1035 §4.2.2 and reads one answer. */
async function overTcp(
  server: NameServer,
  message: Uint8Array,
  timeout: number,
  signal: AbortSignal | undefined,
): Promise<DnsResponse> {
  const abort = new AbortController();
  let conn: Deno.TcpConn | undefined;
  // Closing the connection is what interrupts a pending read.
  const end = () => {
    abort.abort();
    try {
      conn?.close();
    } catch { /* closed already */ }
  };
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    end();
  }, timeout);
  signal?.addEventListener("abort", end, { once: true });
  try {
    conn = await Deno.connect({ hostname: server.host, port: server.port, signal: abort.signal });
    if (abort.signal.aborted) throw new Error("aborted");
    const framed = new Uint8Array(2 + message.length);
    new DataView(framed.buffer).setUint16(0, message.length);
    framed.set(message, 2);
    await conn.write(framed);
    const head = await readExactly(conn, 2);
    const length = new DataView(head.buffer).getUint16(0);
    return decodeResponse(await readExactly(conn, length));
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    if (timedOut) throw new TimedOut();
    throw err;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", end);
    try {
      conn?.close();
    } catch { /* closed by end() */ }
  }
}

async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const read = await conn.read(buf.subarray(got));
    if (read === null) throw new MalformedMessage("connection closed mid-answer");
    got += read;
  }
  return buf;
}
