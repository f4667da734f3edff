/** Small socket helpers the listener, the TLS front and the tunnels share. */

/** Something that can be written to, like `Deno.Conn`. */
export interface Writable {
  write(bytes: Uint8Array): Promise<number>;
}

/** Writes all of `bytes` (a socket write may take only part). */
export async function writeAll(to: Writable, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await to.write(bytes.subarray(off));
}

/** A short human cause for a socket error: "connection refused", "connection reset", … */
export function describeError(err: unknown): string {
  if (err instanceof Deno.errors.ConnectionRefused) return "connection refused";
  if (err instanceof Deno.errors.ConnectionReset) return "connection reset";
  if (err instanceof Deno.errors.ConnectionAborted) return "connection aborted";
  if (err instanceof Deno.errors.BrokenPipe) return "broken pipe";
  if (err instanceof Deno.errors.TimedOut) return "timed out";
  if (err instanceof Deno.errors.NotConnected) return "not connected";
  if (err instanceof Deno.errors.BadResource || err instanceof Deno.errors.Interrupted) {
    return "connection closed";
  }
  if (err instanceof Error) return err.message.split("\n")[0].replace(/ \(os error \d+\)$/, "");
  return String(err);
}

/** Closes `resource`, ignoring that it may be closed already. */
export function closeQuietly(resource: { close(): void }): void {
  try {
    resource.close();
  } catch {
    // already closed
  }
}

/** Copies `from` to `to`; at EOF half-closes `to`, on any error closes both. */
export async function pump(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      await writeAll(to, buf.subarray(0, n));
    }
    await to.closeWrite();
  } catch {
    closeQuietly(to);
    closeQuietly(from);
  }
}
