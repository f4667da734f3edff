/** One HTTP/1.1 connection (a client's, or ours to a backend) with its read buffer and deadline. */
import { coarseNow, Deadline } from "./deadlines.ts";
import { directRid, readDirect, writeDirect } from "./direct_io.ts";
import { type BodyFraming, ChunkedDecoder, lastChunk, latin1Bytes, ParseError } from "./wire.ts";

/**
 * Largest read of body bytes at a time. 128 KiB rather than 64: a 256 MB download took about a
 * fifth less CPU and went 10–15 % faster (fewer reads, writes and chunk allocations per byte);
 * 256 KiB gained nothing more. A streamed response holds at most two such pieces: one being
 * written and the next, read ahead.
 */
const READ_SIZE = 128 * 1024;
/**
 * Whole pieces given back once written (see {@linkcode recyclePiece}). Without them every piece is
 * a new 128 KiB buffer: zeroed, and counted by V8 as external memory, whose growth forces a
 * collection every few dozen megabytes of a download.
 */
const freePieces: Uint8Array[] = [];
/** At most 2 MiB kept: two pieces per download under way (one written, one read ahead). */
const MAX_FREE_PIECES = 16;
/** Writes up to this size are joined into one buffer (see `writeJoined`). */
const JOINED_SIZE = 32 * 1024;
const MAX_SPARE = 64;
const spareJoined: Uint8Array[] = [];
/** Head buffers lent to connections with an idle buffer while a head is under way. */
const lent: Uint8Array[] = [];
const MAX_LENT = 256;
const utf8 = new TextEncoder();
const CRLF = new Uint8Array([13, 10]);
const NO_BYTES = new Uint8Array(0);
const LAST_CHUNK = new Uint8Array([48, 13, 10, 13, 10]);
/** Largest response head accepted from a backend. */
export const MAX_HEAD = 64 * 1024;

/** Thrown when a head does not fit the connection's `maxHead` (by default {@linkcode MAX_HEAD}). */
export class HeadTooLarge extends Error {
  constructor(readonly limit: number = MAX_HEAD) {
    super(`head larger than ${limit} bytes`);
    this.name = "HeadTooLarge";
  }
}

/** Thrown by a {@linkcode FramedBody} whose chunked body grows past its size limit (a 413). */
export class BodyTooLarge extends Error {
  readonly status = 413;
  constructor(readonly limit: number) {
    super(`body larger than ${limit} bytes`);
    this.name = "BodyTooLarge";
  }
}

/** A connection plus the bytes read from it but not consumed yet (buf[start, end)). */
export class Connection {
  buf: Uint8Array;
  start = 0;
  end = 0;
  /** True while the connection sits unused in its pool (backend connections). */
  idle = false;
  /** When it was last parked, by {@linkcode coarseNow}. */
  idleSince = 0;
  closed = false;
  /**
   * For a backend connection opened with a PROXY protocol header: which header (client and
   * destination), so it is only reused for requests that would send the same one.
   */
  origin: string | undefined = undefined;
  /** How far the read buffer may grow for one head; {@linkcode HeadTooLarge} past that. */
  maxHead = MAX_HEAD;
  #pending: Promise<number> | undefined;
  /** `raw`'s resource id for reads and writes through the runtime's ops, or -1 (`direct_io.ts`). */
  readonly #rid: number;
  /** The deadline of what the connection waits for now; the owner says what firing does. */
  readonly deadline: Deadline<Connection>;

  /** While idle, the small buffer of its own that the pending read fills (see `idleSize`). */
  readonly #idleBuf: Uint8Array | undefined;

  /**
   * `bufferSize`: the read buffer to start with; it grows up to `maxHead` for a large head.
   * `idleSize` (client connections): the connection owns only a buffer this small, which an idle
   * read fills; a `bufferSize` one is borrowed from a shared free list while a head does not fit,
   * and given back once nothing is buffered. Idle keep-alive connections are many.
   */
  constructor(
    readonly raw: Deno.Conn,
    onTimeout: (conn: Connection) => void,
    readonly bufferSize: number,
    idleSize = 0,
  ) {
    this.#rid = directRid(raw);
    if (idleSize > 0) this.buf = this.#idleBuf = new Uint8Array(idleSize);
    else this.buf = new Uint8Array(bufferSize);
    // A shared function and its subject: no closure per connection.
    this.deadline = new Deadline<Connection>(onTimeout, this);
  }

  /** Reads into `buf` (never empty): the byte count, 0 at EOF. */
  #read(buf: Uint8Array): Promise<number> {
    const rid = this.#rid;
    return rid >= 0 ? readDirect(rid, buf) : this.raw.read(buf).then(orZero);
  }

  /** Writes from `buf`: how many bytes were taken. */
  #write(buf: Uint8Array): Promise<number> {
    const rid = this.#rid;
    return rid >= 0 ? writeDirect(rid, buf) : this.raw.write(buf);
  }

  /** Reads more bytes after `end`, growing the buffer up to `maxHead` if full. Null at EOF. */
  async fill(): Promise<number | null> {
    const n = await this.receive();
    if (n === 0) return null;
    this.end += n;
    return n;
  }

  /**
   * The read behind {@linkcode fill} without its async wrapper, for the response-head hot
   * path: makes room, starts the read, and leaves adding the count to `end` to the caller.
   * Resolves with the count, 0 at EOF.
   */
  receive(): Promise<number> {
    if (this.start === this.end) {
      this.start = this.end = 0;
      const idle = this.#idleBuf;
      if (idle !== undefined && this.buf !== idle) {
        // Nothing buffered: give the big buffer back and wait on the small one.
        if (this.buf.length === this.bufferSize && lent.length < MAX_LENT) lent.push(this.buf);
        this.buf = idle;
      }
    } else if (this.end === this.buf.length) {
      if (this.buf === this.#idleBuf) {
        const big = lent.pop() ?? new Uint8Array(this.bufferSize);
        big.set(this.buf.subarray(this.start, this.end));
        this.end -= this.start;
        this.start = 0;
        this.buf = big;
      } else if (this.start > 0) {
        this.buf.copyWithin(0, this.start, this.end);
        this.end -= this.start;
        this.start = 0;
      } else {
        if (this.buf.length >= this.maxHead) throw new HeadTooLarge(this.maxHead);
        const bigger = new Uint8Array(Math.min(this.buf.length * 2, this.maxHead));
        bigger.set(this.buf);
        this.buf = bigger;
      }
    }
    const pending = this.#pending;
    if (pending === undefined) {
      // The whole buffer when it is empty: no view object kept alive by an idle read.
      return this.#read(this.end === 0 ? this.buf : this.buf.subarray(this.end));
    }
    this.#pending = undefined;
    return pending;
  }

  /** A head with bare LF line endings never contains CRLFCRLF: refuse it instead of waiting. */
  rejectBareLf(from: number, what: "request" | "response"): void {
    const buf = this.buf;
    for (let i = Math.max(from, this.start); i < this.end; i++) {
      if (buf[i] === 10 && (i === this.start || buf[i - 1] !== 13)) {
        throw new ParseError(`bare LF in ${what} head`);
      }
    }
  }

  /**
   * Up to `max` bytes: buffered ones first, otherwise straight from the socket into a piece of
   * their own (a recycled one when `max` asks for a whole piece). Null at EOF.
   */
  async take(max: number): Promise<Uint8Array | null> {
    // Never called while parked: a body is read after its head, and reading the head took over
    // the parked connection's pending read (`receive`).
    if (this.start < this.end) {
      const n = Math.min(max, this.end - this.start);
      const chunk = this.buf.slice(this.start, this.start + n);
      this.start += n;
      return chunk;
    }
    const chunk = max >= READ_SIZE
      ? freePieces.pop() ?? new Uint8Array(READ_SIZE)
      : new Uint8Array(max);
    const n = await this.#read(chunk);
    return n === 0 ? null : chunk.subarray(0, n);
  }

  /**
   * Writes `text` (a head or a chunk-size line, one byte per character), then `bytes` and
   * `tail`: in one write from a pooled buffer when they fit, as a client sees one packet.
   * `copied` is called once `bytes` and `tail` are no longer needed, before any wait when they
   * fit (they are copied into the buffer first), after the writes otherwise, and on failure.
   */
  async writeJoined(
    text: string,
    bytes: Uint8Array = NO_BYTES,
    tail?: Uint8Array,
    copied?: () => void,
  ): Promise<void> {
    const size = text.length + bytes.length + (tail?.length ?? 0);
    if (size <= JOINED_SIZE) {
      // Pooled: allocating a buffer per response costs more than filling one.
      const out = spareJoined.pop() ?? new Uint8Array(JOINED_SIZE);
      try {
        const { read, written } = utf8.encodeInto(text, out);
        if (read === text.length && written === text.length) {
          out.set(bytes, written);
          if (tail) out.set(tail, written + bytes.length);
          if (copied) {
            copied();
            copied = undefined;
          }
          // The write loop inline rather than through write(): one async frame less per head.
          const joined = out.subarray(0, size);
          let sent = await this.#write(joined);
          while (sent < size) sent += await this.#write(joined.subarray(sent));
          return;
        }
        // Not ASCII: the separate writes below encode one byte per character.
      } finally {
        if (spareJoined.length < MAX_SPARE) spareJoined.push(out);
      }
    }
    try {
      await this.write(latin1Bytes(text));
      if (bytes.length) await this.write(bytes);
      if (tail) await this.write(tail);
    } finally {
      copied?.();
    }
  }

  /** Writes `bytes` as one chunk of a chunked body. */
  writeChunk(bytes: Uint8Array): Promise<void> {
    return this.writeJoined(bytes.length.toString(16) + "\r\n", bytes, CRLF);
  }

  /** Ends a chunked body, with `trailers` when there are any. */
  writeLastChunk(trailers?: readonly (readonly [string, string])[]): Promise<void> {
    if (trailers === undefined || trailers.length === 0) return this.write(LAST_CHUNK);
    return this.writeJoined(lastChunk(trailers));
  }

  /** Writes all of `bytes`. */
  async write(bytes: Uint8Array): Promise<void> {
    let written = 0;
    while (written < bytes.length) written += await this.#write(bytes.subarray(written));
  }

  /**
   * Parks the connection while idle with a read outstanding: any byte or EOF that
   * arrives before the next request means the backend closed it, so `onDead` runs
   * and the connection is never handed out stale.
   */
  park(onDead: (conn: Connection) => void): void {
    this.start = this.end = 0;
    this.idle = true;
    this.idleSince = coarseNow();
    this.#onDead = onDead;
    const pending = this.#read(this.buf);
    this.#pending = pending;
    // Made on the first park, then kept: client connections never park, backend ones park
    // after every response.
    const settled = this.#settled ??= () => {
      if (this.idle) this.#onDead?.(this);
    };
    pending.then(settled, settled);
  }

  #onDead: ((conn: Connection) => void) | undefined;
  #settled: (() => void) | undefined;

  /** Closes the socket; safe to call twice. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.idle = false;
    try {
      this.raw.close();
    } catch {
      // already closed by the peer
    }
  }
}

/** Streams of pieces straight from {@linkcode Connection.take}, which nothing else has seen. */
const pieceStreams = new WeakSet<ReadableStream<Uint8Array>>();

/** Marks `stream` as yielding pieces from `take` that no one else holds: see {@linkcode recyclePiece}. */
export function markPieceStream(stream: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  pieceStreams.add(stream);
  return stream;
}

/**
 * Whether `stream` is one marked by {@linkcode markPieceStream}: its reader may recycle each piece
 * once written. A stream a hook made, or a branch of a tee, is not: its pieces may be kept.
 */
export function isPieceStream(stream: ReadableStream<Uint8Array>): boolean {
  return pieceStreams.has(stream);
}

/**
 * Gives back a piece from {@linkcode Connection.take} once its bytes are written and nothing else
 * holds it, so the next body read reuses its memory. Anything but a whole piece is left to the GC.
 */
export function recyclePiece(piece: Uint8Array): void {
  const buffer = piece.buffer;
  if (
    buffer.byteLength === READ_SIZE && buffer instanceof ArrayBuffer &&
    freePieces.length < MAX_FREE_PIECES
  ) freePieces.push(new Uint8Array(buffer));
}

/** Thrown when a connection ends before the body it carries does; `where` says how far it got. */
export class BodyCutShort extends Error {
  constructor(readonly where: string) {
    super(`connection closed ${where}`);
    this.name = "BodyCutShort";
  }
}

function orZero(n: number | null): number {
  return n ?? 0;
}

/** One message body on a connection, read piece by piece as its framing says (both sides use it). */
export class FramedBody {
  /** The whole body has been read. */
  done = false;
  #remaining: number;
  /** Chunked data bytes so far, against `max`. */
  #received = 0;
  readonly #chunked: ChunkedDecoder | undefined;

  /** Trailer fields that ended a chunked body, once it is done; undefined when none came. */
  get trailers(): [string, string][] | undefined {
    return this.#chunked?.trailers;
  }

  /**
   * `length` counts for `length` framing only; `none` is an empty body. `max`: the largest
   * chunked body; one growing past it throws {@linkcode BodyTooLarge} (a declared length is
   * the caller's to check).
   */
  constructor(
    readonly conn: Connection,
    readonly framing: BodyFraming,
    length: number,
    readonly max: number = Infinity,
  ) {
    this.#remaining = length;
    this.#chunked = framing === "chunked" ? new ChunkedDecoder() : undefined;
    this.done = framing === "none" || (framing === "length" && length <= 0);
  }

  /**
   * The next piece, or null once the body is complete. After a piece, `done` may already be
   * true (a length reached). Throws {@linkcode BodyCutShort}, `ParseError` on bad chunking, or
   * {@linkcode BodyTooLarge}.
   */
  async next(): Promise<Uint8Array | null> {
    if (this.done) return null;
    const conn = this.conn;
    const chunked = this.#chunked;
    if (chunked) {
      for (;;) {
        if (chunked.remaining > 0) {
          const piece = await conn.take(chunked.remaining);
          if (!piece) throw new BodyCutShort("inside a chunk");
          chunked.remaining -= piece.length;
          return piece;
        }
        conn.start = chunked.advance(conn.buf, conn.start, conn.end);
        if (chunked.remaining > 0) {
          // Refused on the chunk's declared size, before any of its bytes are read.
          this.#received += chunked.remaining;
          if (this.#received > this.max) throw new BodyTooLarge(this.max);
          continue;
        }
        if (chunked.done) {
          this.done = true;
          return null;
        }
        if (chunked.remaining === 0 && (await conn.fill()) === null) {
          throw new BodyCutShort("before the last chunk");
        }
      }
    }
    if (this.framing === "length") {
      const piece = await conn.take(this.#remaining);
      if (!piece) throw new BodyCutShort(`with ${this.#remaining} bytes left`);
      this.#remaining -= piece.length;
      if (this.#remaining === 0) this.done = true;
      return piece;
    }
    // Delimited by close: everything until EOF is the body.
    const piece = await conn.take(READ_SIZE);
    if (!piece) this.done = true;
    return piece;
  }
}
