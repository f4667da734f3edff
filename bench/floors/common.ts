/** What the floor proxies that use sluice's connections share: head reads and backend pools. */
import { Connection } from "../../lib/http1/connection.ts";
import { findHeadEnd } from "../../lib/http1/wire.ts";

const ignore = () => {};
/** The timeouts armed around each wait, as sluice's are (they never fire here). */
export const TIMEOUT = 60_000;

/** A client connection as sluice's listener makes one (its small idle buffer included). */
export function clientConnection(raw: Deno.Conn): Connection {
  return new Connection(raw, ignore, 4 * 1024, 512);
}

/**
 * Reads until `conn` holds a whole head: the index just past its CRLFCRLF, or -1 when the peer
 * closed first.
 */
export async function bufferedHead(conn: Connection): Promise<number> {
  let end: number;
  while ((end = findHeadEnd(conn.buf, conn.start, conn.end)) === -1) {
    const got = await conn.receive();
    if (got === 0) return -1;
    conn.end += got;
  }
  return end;
}

/** Keep-alive connections to the backends on 127.0.0.1, taken in turn (round robin). */
export class Backends {
  readonly #idle: Connection[][];
  #next = 0;

  constructor(readonly ports: number[]) {
    this.#idle = ports.map(() => []);
  }

  /** The next backend's idle connection, or a new one. */
  async take(): Promise<{ conn: Connection; index: number }> {
    const index = this.#next++ % this.ports.length;
    const conn = this.#idle[index].pop() ?? new Connection(
      await Deno.connect({ hostname: "127.0.0.1", port: this.ports[index] }),
      ignore,
      16 * 1024,
    );
    conn.idle = false;
    return { conn, index };
  }

  /** Parks a connection whose response has been read whole, for the next request. */
  give(conn: Connection, index: number): void {
    conn.park(ignore);
    this.#idle[index].push(conn);
  }
}
