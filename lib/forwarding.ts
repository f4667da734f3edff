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
  /** The client's non-empty X-Request-Id, kept in `text` (unless `addRequestId` replaced it). */
  requestId: string | undefined;
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
  let text = req.method + " " + target + " HTTP/1.1\r\n";
  let connection: string | undefined;
  let forwardedFor: string | undefined;
  let host: string | undefined;
  let requestId: string | undefined;
  let hasLength = false;
  // One pass, and no Headers.get(): in Deno.serve each get() is a call into the runtime,
  // and forEach is several times cheaper than the Headers iterator.
  req.headers.forEach((value, name) => {
    if (HOP_BY_HOP.has(name)) {
      if (name === "connection") connection = value;
      return;
    }
    switch (name) {
      case "x-forwarded-for":
        forwardedFor = value;
        return;
      case "x-forwarded-proto":
      case "x-forwarded-host":
        return;
      case "x-request-id":
        // An empty ID is as good as none; a generated one replaces the client's.
        if (addRequestId !== undefined || value === "") return;
        requestId = value;
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
  // Headers named by Connection are hop-by-hop too; rare enough to filter afterwards.
  const tokens = connectionTokens(connection ?? null);
  if (tokens && [...tokens].some((t) => !HOP_BY_HOP.has(t) && t !== "close")) {
    const lines = text.split("\r\n");
    text = lines.filter((line, i) => i === 0 || !tokens.has(line.slice(0, line.indexOf(":"))))
      .join("\r\n");
    if (tokens.has("content-length")) hasLength = false;
    if (tokens.has("host")) host = undefined;
    if (tokens.has("x-request-id")) requestId = undefined;
  }
  text += "x-forwarded-for: " + (forwardedFor ? forwardedFor + ", " + clientIp : clientIp) +
    "\r\nx-forwarded-proto: " + proto + "\r\n";
  if (host !== undefined) text += "x-forwarded-host: " + host + "\r\n";
  if (addRequestId !== undefined) text += "x-request-id: " + addRequestId + "\r\n";
  const chunked = req.body !== null && !hasLength;
  if (chunked) text += "transfer-encoding: chunked\r\n";
  return { text, hasHost: host !== undefined, chunked, requestId };
}
