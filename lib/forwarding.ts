/** What a proxy changes in a request on its way upstream: hop-by-hop headers out, X-Forwarded-* in. */
import type { ClientRequest } from "./listener/request.ts";
import { connectionTokens, HOP_BY_HOP } from "./http1/wire.ts";

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
 * Builds the upstream head: method, target and header lines as the client sent them (name
 * case, order and repeats kept), minus hop-by-hop headers, with X-Forwarded-For appended to
 * and X-Forwarded-Proto/-Host set, and `addRequestId` as X-Request-Id when the client sent none.
 */
export function forwardHead(
  req: ClientRequest,
  clientIp: string,
  proto: string,
  addRequestId: string | undefined,
): ForwardHead {
  let text = req.method + " " + req.target + " HTTP/1.1\r\n";
  let connection: string | undefined;
  let forwardedFor: string | undefined;
  let hasHost = false;
  let requestId: string | undefined;
  const { names, keys, values } = req;
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i];
    const value = values[i];
    if (HOP_BY_HOP.has(key)) {
      if (key === "connection") connection = connection ? connection + "," + value : value;
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
      case "host":
        hasHost = true;
        break;
    }
    text += names[i] + ": " + value + "\r\n";
  }
  let host = req.host;
  // Headers named by Connection are hop-by-hop too; rare enough to filter afterwards.
  const tokens = connectionTokens(connection ?? null);
  if (tokens && [...tokens].some((t) => !HOP_BY_HOP.has(t) && t !== "close")) {
    const lines = text.split("\r\n");
    // Never Content-Length: the body's framing is not the client's to drop.
    text = lines.filter((line, i) => {
      const key = line.slice(0, line.indexOf(":")).toLowerCase();
      return i === 0 || key === "content-length" || !tokens.has(key);
    }).join("\r\n");
    if (tokens.has("host")) {
      hasHost = false;
      host = undefined;
    }
    if (tokens.has("x-request-id")) requestId = undefined;
  }
  // An absolute-form target without a Host line still names the host the client wants.
  if (!hasHost && host !== undefined) {
    text += "host: " + host + "\r\n";
    hasHost = true;
  }
  text += "x-forwarded-for: " + (forwardedFor ? forwardedFor + ", " + clientIp : clientIp) +
    "\r\nx-forwarded-proto: " + proto + "\r\n";
  if (host !== undefined) text += "x-forwarded-host: " + host + "\r\n";
  if (addRequestId !== undefined) text += "x-request-id: " + addRequestId + "\r\n";
  const chunked = req.chunked;
  if (chunked) text += "transfer-encoding: chunked\r\n";
  return { text, hasHost, chunked, requestId };
}
