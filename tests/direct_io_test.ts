/** Reads and writes through the runtime's ops (lib/http1/direct_io.ts), and the public fallback. */
import assert from "node:assert/strict";
import { Connection, FramedBody } from "../lib/http1/connection.ts";
import { decodeAscii, DIRECT_DECODE, DIRECT_IO, directRid } from "../lib/http1/direct_io.ts";

/** A connected pair on 127.0.0.1: ours and the peer's end. */
async function pair(): Promise<{ ours: Deno.TcpConn; peer: Deno.TcpConn; close(): void }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [ours, peer] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  listener.close();
  return {
    ours,
    peer,
    close() {
      for (const c of [ours, peer]) {
        try {
          c.close();
        } catch { /* closed already */ }
      }
    },
  };
}

/** Only the methods `Connection` calls, delegating to `conn`: not the runtime's own object. */
function standIn(conn: Deno.Conn): Deno.Conn {
  return {
    read: (p: Uint8Array) => conn.read(p),
    write: (p: Uint8Array) => conn.write(p),
    close: () => conn.close(),
    closeWrite: () => conn.closeWrite(),
    localAddr: conn.localAddr,
    remoteAddr: conn.remoteAddr,
  } as unknown as Deno.Conn;
}

Deno.test("this Deno's connections are read and written through its ops, stand-ins are not", async () => {
  // If a Deno upgrade drops the internals, this fails rather than sluice silently slowing down.
  assert.equal(DIRECT_IO, true);
  const { ours, close } = await pair();
  try {
    assert.ok(directRid(ours) >= 0);
    assert.equal(directRid(standIn(ours)), -1);
  } finally {
    close();
  }
});

for (const [mode, wrap] of [["ops", (c: Deno.Conn) => c], ["public methods", standIn]] as const) {
  Deno.test(`through ${mode}: a head, its body, a write and EOF arrive as sent`, async () => {
    const { ours, peer, close } = await pair();
    try {
      const conn = new Connection(wrap(ours), () => {}, 4096);
      await conn.writeJoined("GET / HTTP/1.1\r\nhost: x\r\n\r\n");
      const got = new Uint8Array(64);
      let n = 0;
      while (!new TextDecoder().decode(got.subarray(0, n)).endsWith("\r\n\r\n")) {
        n += (await peer.read(got.subarray(n)))!;
      }
      assert.equal(
        new TextDecoder().decode(got.subarray(0, n)),
        "GET / HTTP/1.1\r\nhost: x\r\n\r\n",
      );

      const head = "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n";
      await peer.write(new TextEncoder().encode(head + "hello"));
      while (conn.end - conn.start < head.length) assert.notEqual(await conn.fill(), null);
      conn.start += head.length;
      const body = new FramedBody(conn, "length", 11);
      const first = await body.next();
      assert.equal(new TextDecoder().decode(first!), "hello");
      await peer.write(new TextEncoder().encode(" world"));
      peer.closeWrite();
      const rest = await body.next();
      assert.equal(new TextDecoder().decode(rest!), " world");
      assert.equal(body.done, true);
      assert.equal(await conn.fill(), null, "EOF reads as null");
    } finally {
      close();
    }
  });

  Deno.test(`through ${mode}: a parked connection learns that its peer closed`, async () => {
    const { ours, peer, close } = await pair();
    try {
      const conn = new Connection(wrap(ours), () => {}, 4096);
      const dead = Promise.withResolvers<Connection>();
      conn.park(dead.resolve);
      peer.close();
      assert.equal(await dead.promise, conn);
    } finally {
      close();
    }
  });
}

Deno.test("ASCII heads are decoded through the runtime's decode, as a TextDecoder would", () => {
  // Like the ops above: an upgrade that drops it fails here instead of slowing every head.
  assert.equal(DIRECT_DECODE, true);
  const bytes = new TextEncoder().encode("xxHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nyy");
  const decoder = new TextDecoder();
  for (const view of [bytes, bytes.subarray(2, bytes.length - 2), bytes.subarray(5, 5)]) {
    assert.equal(decodeAscii(view), decoder.decode(view));
  }
});
