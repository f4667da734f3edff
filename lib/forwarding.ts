/** What a proxy changes in a request on its way upstream: hop-by-hop headers out, X-Forwarded-* in. */
import { connectionTokens, HOP_BY_HOP } from "./upstream/http1.ts";

/** The request target (path and query) exactly as the client sent it. */
export function requestTarget(url: string): string {
  const slash = url.indexOf("/", url.indexOf("//") + 2);
  return slash === -1 ? "/" : url.slice(slash);
}

/** The upstream request head and how its body is framed. */
export interface ForwardHead {
  /** Head text up to, not including, the final CRLF; `host` is already in it when the client sent one. */
  text: string;
  /** Whether the client sent a Host header (otherwise the backend's authority is added). */
  hasHost: boolean;
  /** True when the body must be sent chunked (the client did not give a length). */
  chunked: boolean;
}

/**
 * Builds the upstream head: method, target and headers byte for byte, minus hop-by-hop
 * headers, with X-Forwarded-For appended to and X-Forwarded-Proto/-Host set, and
 * `addRequestId` as X-Request-Id when the client sent none.
 */
export function forwardHead(
  req: Request,
  target: string,
  clientIp: string,
  proto: string,
  addRequestId: string | undefined,
): ForwardHead {
  const tokens = connectionTokens(req.headers.get("connection"));
  let text = req.method + " " + target + " HTTP/1.1\r\n";
  let forwardedFor: string | undefined;
  let host: string | undefined;
  let hasLength = false;
  // forEach is several times cheaper than the Headers iterator in Deno.
  req.headers.forEach((value, name) => {
    if (HOP_BY_HOP.has(name) || tokens?.has(name)) return;
    switch (name) {
      case "x-forwarded-for":
        forwardedFor = value;
        return;
      case "x-forwarded-proto":
      case "x-forwarded-host":
        return;
      case "x-request-id":
        if (addRequestId !== undefined) return;
        break;
      case "host":
        host = value;
        break;
      case "content-length":
        hasLength = true;
        break;
    }
    text += name + ": " + value + "\r\n";
  });
  text += "x-forwarded-for: " + (forwardedFor ? forwardedFor + ", " + clientIp : clientIp) +
    "\r\nx-forwarded-proto: " + proto + "\r\n";
  if (host !== undefined) text += "x-forwarded-host: " + host + "\r\n";
  if (addRequestId !== undefined) text += "x-request-id: " + addRequestId + "\r\n";
  const chunked = req.body !== null && !hasLength;
  if (chunked) text += "transfer-encoding: chunked\r\n";
  return { text, hasHost: host !== undefined, chunked };
}
