/** What a proxy changes in a request on its way upstream: hop-by-hop headers out, X-Forwarded-* in. */
import type { ClientRequest } from "./message.ts";
import { isIp, MATCH_NONE } from "./cidr.ts";
import { connectionTokens, isHopByHop } from "./http1/wire.ts";

/** The upstream request head and how its body is framed. */
export interface ForwardHead {
  /** Head text up to, not including, the final CRLF; `host` is already in it when the client sent one. */
  text: string;
  /** Whether the head has a Host line (otherwise the backend's authority is to be added). */
  hasHost: boolean;
  /** True when the body must be sent chunked (the client did not give a length). */
  chunked: boolean;
  /** The client's non-empty X-Request-Id, kept in `text` (unless `addRequestId` replaced it). */
  requestId: string | undefined;
  /** The protocol the request asks to switch to, when its upgrade is forwarded (see `forwardHead`). */
  upgrade: string | undefined;
}

/**
 * Builds the upstream head: method, target and header lines as the client sent them (name
 * case, order and repeats kept), minus hop-by-hop headers, with X-Forwarded-Proto/-Host set,
 * and `addRequestId` as X-Request-Id when the client sent none.
 *
 * X-Forwarded-For: when the peer `clientIp` is `trusted` (a proxy in `trustedProxies`), the
 * client's X-Forwarded-For is kept and `clientIp` appended; from anyone else it is replaced by
 * `clientIp`, so no client can make a backend believe it is another address. `trusted`
 * defaults to trusting nobody. `proto` is `http`, or `https` for a TLS listener.
 *
 * Repeated identical Content-Length lines (or `5, 5`) go up as one line with the one value
 * (RFC 9110 §8.6); for an absolute-form target, its authority replaces the client's Host
 * line (RFC 9112 §3.2.2).
 *
 * An upgrade (`Connection: upgrade` with `Upgrade`, RFC 9110 §7.8) on an HTTP/1.1 request
 * without a body keeps both headers (Connection with the `upgrade` token alone) and is marked
 * on the request (`req.upgrade`), so the upstream client turns a `101` into a tunnel. Other
 * requests lose `Upgrade` like any hop-by-hop header: HTTP/1.0 cannot upgrade (the field is to
 * be ignored), a switch after a body is not supported, and `h2c` is never passed on (the
 * balancer speaks h2c itself; a backend that switched would take the connection's later
 * requests past it). Found in the hop-by-hop branch only: a request without hop-by-hop headers
 * pays nothing for it.
 */
export function forwardHead(
  req: ClientRequest,
  clientIp: string,
  proto: string,
  addRequestId: string | undefined,
  trusted: (ip: string) => boolean = MATCH_NONE,
): ForwardHead {
  let text = req.method + " " + req.target + " HTTP/1.1\r\n";
  let connection: string | undefined;
  let forwardedFor: string | undefined;
  let hasHost = false;
  let sizedLine = false;
  let requestId: string | undefined;
  let upgrade: number | undefined;
  const absolute = req.absoluteForm === true;
  const { names, keys, values } = req;
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i];
    const value = values[i];
    if (isHopByHop(key)) {
      if (key === "connection") connection = connection ? connection + "," + value : value;
      else if (key === "upgrade") upgrade = i;
      continue;
    }
    switch (key) {
      case "x-forwarded-for":
        forwardedFor = forwardedFor ? forwardedFor + ", " + value : value;
        continue;
      case "x-forwarded-proto":
      case "x-forwarded-host":
        continue;
      case "x-request-id":
        // An empty ID is as good as none; a generated one replaces the client's.
        if (addRequestId !== undefined || value === "" || requestId !== undefined) continue;
        requestId = value;
        break;
      case "content-length":
        // One line with the one value, however the client repeated it.
        if (!sizedLine) text += names[i] + ": " + req.length + "\r\n";
        sizedLine = true;
        continue;
      case "host":
        if (absolute) continue; // the target's authority goes up instead, below
        hasHost = true;
        break;
    }
    text += names[i] + ": " + value + "\r\n";
  }
  let host = req.host;
  // Headers named by Connection are hop-by-hop too; rare enough to filter afterwards.
  const tokens = connectionTokens(connection ?? null);
  if (tokens && [...tokens].some((t) => !isHopByHop(t) && t !== "close")) {
    const lines = text.split("\r\n");
    // Never Content-Length: the body's framing is not the client's to drop.
    text = lines.filter((line, i) => {
      const key = line.slice(0, line.indexOf(":")).toLowerCase();
      return i === 0 || key === "content-length" || !tokens.has(key);
    }).join("\r\n");
    if (tokens.has("host") && !absolute) {
      hasHost = false;
      host = undefined;
    }
    if (tokens.has("x-request-id")) requestId = undefined;
  }
  // An absolute-form target names the host the client wants, whatever its Host line said.
  if (!hasHost && host !== undefined) {
    text += "host: " + host + "\r\n";
    hasHost = true;
  }
  let switchTo: string | undefined;
  if (
    upgrade !== undefined && tokens?.has("upgrade") && req.minor === 1 &&
    req.protocol === undefined && req.length <= 0 && !req.chunked && values[upgrade] !== "" &&
    !/\bh2c\b/i.test(values[upgrade])
  ) {
    switchTo = values[upgrade];
    text += "connection: upgrade\r\n" + names[upgrade] + ": " + switchTo + "\r\n";
    req.upgrade = switchTo;
  }
  text += "x-forwarded-for: " +
    (forwardedFor !== undefined && trusted(clientIp) ? forwardedFor + ", " + clientIp : clientIp) +
    "\r\nx-forwarded-proto: " + proto + "\r\n";
  if (host !== undefined) text += "x-forwarded-host: " + host + "\r\n";
  if (addRequestId !== undefined) text += "x-request-id: " + addRequestId + "\r\n";
  const chunked = req.chunked;
  if (chunked) text += "transfer-encoding: chunked\r\n";
  return { text, hasHost, chunked, requestId, upgrade: switchTo };
}

/**
 * The client address sluice acts on (access log, `ip` hashing, rate limits, routes): walking
 * from the peer `req.ip` leftwards through X-Forwarded-For, the first address that is not
 * `trusted`, as nginx's `real_ip_recursive` does. The peer itself when it is not trusted (the
 * default); the left-most address when every hop is trusted; and at an entry that is not an
 * address (`unknown`, garbage), the last trusted hop before it, as nginx does.
 */
export function clientAddress(req: ClientRequest, trusted: (ip: string) => boolean): string {
  const peer = req.ip;
  if (trusted === MATCH_NONE || !trusted(peer)) return peer;
  let addr = peer;
  const { keys, values } = req;
  for (let i = keys.length - 1; i >= 0; i--) {
    if (keys[i] !== "x-forwarded-for") continue;
    const value = values[i];
    let end = value.length;
    while (end > 0) {
      const start = value.lastIndexOf(",", end - 1) + 1;
      let a = start, b = end;
      while (a < b && (value.charCodeAt(a) === 32 || value.charCodeAt(a) === 9)) a++;
      while (b > a && (value.charCodeAt(b - 1) === 32 || value.charCodeAt(b - 1) === 9)) b--;
      if (a < b) {
        const entry = value.slice(a, b);
        if (!trusted(entry)) return isIp(entry) ? entry : addr;
        addr = entry;
      }
      end = start - 1;
    }
  }
  return addr;
}
