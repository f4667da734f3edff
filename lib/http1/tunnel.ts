/**
 * The byte tunnel an upgraded connection becomes (WebSocket and any other `Upgrade` after a
 * `101 Switching Protocols`): bytes copied both ways between the client and the backend, never
 * parsed, with half-closes passed on and one idle deadline for both directions.
 */
import { closeQuietly, describeError, writeAll } from "./io.ts";

/** One side of a tunnel: the part of `Deno.Conn` the relay uses. */
export interface TunnelEnd {
  read(buf: Uint8Array): Promise<number | null>;
  write(bytes: Uint8Array): Promise<number>;
  /** Half-closes: the peer reads EOF, and may still send. */
  closeWrite(): Promise<void>;
  close(): void;
}

/** What a relay did, once it is over. */
export interface RelayResult {
  /** Bytes written to the backend (the client's early bytes included). */
  toBackend: number;
  /** Bytes written to the client (the backend's early bytes included). */
  toClient: number;
  /** Why the tunnel ended other than by both sides closing, if it did. */
  error: string | undefined;
}

/** Bytes read at a time in each direction: small, as a tunnel may stay open for hours. */
const BUFFER = 16 * 1024;

/**
 * Relays bytes both ways until each side has closed its sending half (each close passed on to
 * the other side as a half-close), or until either side fails or {@linkcode Relay.abort} is
 * called (then both are closed at once). `activity` runs for every chunk read, either way: the
 * caller's idle deadline.
 */
export class Relay {
  toBackend = 0;
  toClient = 0;
  error: string | undefined;
  /** Resolves once both ends are closed. */
  readonly finished: Promise<RelayResult>;
  #closed = false;

  constructor(
    readonly client: TunnelEnd,
    readonly backend: TunnelEnd,
    options: {
      /** Client bytes that arrived with (after) its request head: sent to the backend first. */
      clientEarly?: Uint8Array;
      /** Backend bytes that arrived with its 101 head, already written to the client. */
      backendEarly?: number;
      activity?: () => void;
    } = {},
  ) {
    this.toClient = options.backendEarly ?? 0;
    const activity = options.activity ?? (() => {});
    const up = this.#copy(client, backend, options.clientEarly, "client", "backend", (n) => {
      this.toBackend += n;
    }, activity);
    const down = this.#copy(backend, client, undefined, "backend", "client", (n) => {
      this.toClient += n;
    }, activity);
    this.finished = Promise.all([up, down]).then(() => {
      this.#close();
      return { toBackend: this.toBackend, toClient: this.toClient, error: this.error };
    });
  }

  /** Ends the tunnel now, closing both sides; `why` becomes its error unless one came first. */
  abort(why: string): void {
    this.error ??= why;
    this.#close();
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.client);
    closeQuietly(this.backend);
  }

  async #copy(
    from: TunnelEnd,
    to: TunnelEnd,
    early: Uint8Array | undefined,
    fromName: string,
    toName: string,
    count: (n: number) => void,
    activity: () => void,
  ): Promise<void> {
    let reading = true;
    try {
      if (early !== undefined && early.length > 0) {
        reading = false;
        await writeAll(to, early);
        count(early.length);
      }
      const buf = new Uint8Array(BUFFER);
      for (;;) {
        reading = true;
        const n = await from.read(buf);
        if (n === null) break;
        activity();
        reading = false;
        await writeAll(to, buf.subarray(0, n));
        count(n);
      }
    } catch (err) {
      if (!this.#closed) {
        this.error ??= `${reading ? fromName : toName}: ${describeError(err)}`;
        this.#close();
      }
      return;
    }
    // `from` is done sending: tell `to`, which may still answer.
    try {
      await to.closeWrite();
    } catch {
      // `to` is gone already; its own direction ends with it.
    }
  }
}
