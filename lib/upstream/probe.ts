/** One active health probe: `GET path` on a fresh connection, answered by its status code. */
import { findHeadEnd, parseResponseHead } from "../http1/wire.ts";
import { describeError } from "../http1/io.ts";
import type { ConnectionPool } from "./connection_pool.ts";

/** What a probe learned: the status, or why there is none. */
export interface ProbeOutcome {
  status?: number;
  error?: string;
}

/**
 * Sends `GET path` to the backend behind `pool` over a new connection (so a probe also tests
 * that connections can be opened, and speaks TLS or PROXY protocol as traffic does), reads the
 * response head and closes. Never throws; gives up after `timeout` ms.
 */
export async function probe(
  pool: ConnectionPool,
  path: string,
  authority: string,
  timeout: number,
): Promise<ProbeOutcome> {
  let timedOut = false;
  let close: (() => void) | undefined;
  const timer = setTimeout(() => {
    timedOut = true;
    close?.();
  }, timeout);
  try {
    const conn = await Promise.race([
      pool.connect(),
      new Promise<never>((_, reject) =>
        close = () => reject(new Error(`health check timed out after ${timeout}ms`))
      ),
    ]);
    close = () => pool.discard(conn);
    try {
      await conn.writeJoined(
        `GET ${path} HTTP/1.1\r\nhost: ${authority}\r\nuser-agent: sluice-health-check\r\n` +
          "connection: close\r\naccept: */*\r\n\r\n",
      );
      for (;;) {
        // Heads are small: rescanning from the start after each read costs nothing.
        const end = findHeadEnd(conn.buf, conn.start, conn.end);
        if (end !== -1) {
          const head = parseResponseHead(conn.buf.subarray(conn.start, end - 2), "GET");
          if (head.status >= 200) return { status: head.status };
          conn.start = end; // 1xx: keep reading
          continue;
        }
        if ((await conn.fill()) === null) return { error: "connection closed before a response" };
      }
    } finally {
      pool.discard(conn);
    }
  } catch (err) {
    if (timedOut) return { error: `health check timed out after ${timeout}ms` };
    const message = describeError(err).replace(/^connect timeout/, "health check connect timeout");
    return { error: message };
  } finally {
    clearTimeout(timer);
  }
}
