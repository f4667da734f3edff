/**
 * Reads and writes on a `Deno.Conn` through the runtime's read and write ops, skipping the
 * public methods' wrappers, when this Deno exposes them (`Deno[Deno.internal].core`, as in 2.9);
 * and head bytes decoded through its `core.decode` the same way.
 *
 * Why: `Deno.Conn.read` is an async function that also adds its promise to a `Set` and deletes
 * it again (for `unref()`, which sluice never calls); per request that is two more async frames,
 * two promises and a new hash table. Calling the ops directly cost 4–5 % less CPU per request in
 * the same-core pairing (docs/benchmark.md). Anything that is not the runtime's own connection
 * object (the node-based TLS backend socket, a test's stand-in), or a Deno without these ops,
 * goes through the public `read` and `write`, with the same results.
 */

interface CoreOps {
  read(rid: number, buf: Uint8Array): Promise<number>;
  write(rid: number, buf: Uint8Array): Promise<number>;
}

/** `core.decode`: UTF-8 bytes to a string, without `TextDecoder`'s wrapper. */
type CoreDecode = (bytes: Uint8Array) => string;

/** `Deno[Deno.internal]`: the runtime's internals (undefined in a Deno without them). */
export const DENO_INTERNALS: Record<string, unknown> | undefined =
  (Deno as unknown as Record<symbol, Record<string, unknown> | undefined>)[
    Object.getOwnPropertySymbols(Deno).find((s) => s.description === "Deno.internal") ?? Symbol()
  ];

const candidate = DENO_INTERNALS?.core as Partial<CoreOps> | undefined;
const core: CoreOps | undefined =
  typeof candidate?.read === "function" && typeof candidate.write === "function"
    ? candidate as CoreOps
    : undefined;

/** The symbol under which a runtime connection keeps its resource id, found on the first one. */
let ridKey: symbol | undefined;

/** True when this Deno has the ops: connections it made are read and written through them. */
export const DIRECT_IO: boolean = core !== undefined;

/**
 * `conn`'s resource id when it is the runtime's own connection object and this Deno has the ops,
 * else -1 (then use its public `read` and `write`).
 */
export function directRid(conn: Deno.Conn): number {
  if (core === undefined) return -1;
  ridKey ??= Object.getOwnPropertySymbols(conn).find((s) => s.description === "Deno.internal.rid");
  if (ridKey === undefined || !Object.hasOwn(conn, ridKey)) return -1;
  const rid = (conn as unknown as Record<symbol, unknown>)[ridKey];
  return typeof rid === "number" ? rid : -1;
}

/** Reads into `buf` (never empty) on a {@linkcode directRid}; the byte count, 0 at EOF. */
export function readDirect(rid: number, buf: Uint8Array): Promise<number> {
  return core!.read(rid, buf);
}

/** Writes from `buf` on a {@linkcode directRid}; how many bytes were taken (perhaps fewer). */
export function writeDirect(rid: number, buf: Uint8Array): Promise<number> {
  return core!.write(rid, buf);
}

const coreDecode = (DENO_INTERNALS?.core as { decode?: unknown } | undefined)?.decode;

/** True when this Deno has `core.decode`: {@linkcode decodeAscii} goes through it. */
export const DIRECT_DECODE: boolean = typeof coreDecode === "function";

/**
 * Decodes ASCII bytes (UTF-8 gives the same string): through the runtime's `core.decode` when
 * this Deno has it, at half the cost of `TextDecoder.decode`, whose wrapper checks its arguments
 * and options (two heads a request); else through a `TextDecoder`.
 */
export const decodeAscii: CoreDecode = DIRECT_DECODE
  ? coreDecode as CoreDecode
  : ((decoder) => (bytes: Uint8Array) => decoder.decode(bytes))(new TextDecoder());
