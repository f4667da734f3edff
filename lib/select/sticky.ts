/** Sticky sessions: a cookie naming the backend pins a client to it while it is available. */
import type { Backend } from "../pool.ts";
import { firstThen, type Selector } from "./types.ts";

/** Settings of `sticky:`. */
export interface StickyOptions {
  cookie: string;
  /** Cookie lifetime in ms; a session cookie if undefined. */
  ttl?: number;
}

/**
 * Wraps a strategy: the backend named by the cookie (`ctx.pinned`, parsed once per request by
 * the proxy) comes first when it is available.
 */
export function sticky(inner: Selector, backends: () => readonly Backend[]): Selector {
  return {
    candidates(ctx) {
      const value = ctx.pinned;
      const pinned = value === undefined ? undefined : backends().find((b) => b.cookie === value);
      if (pinned?.available) return firstThen(pinned, inner.candidates(ctx));
      return inner.candidates(ctx);
    },
  };
}

/** The Set-Cookie value that pins a client to `value`. */
export function stickyCookie(options: StickyOptions, value: string): string {
  const maxAge = options.ttl === undefined ? "" : `; Max-Age=${Math.floor(options.ttl / 1000)}`;
  return `${options.cookie}=${value}; Path=/; HttpOnly; SameSite=Lax${maxAge}`;
}
