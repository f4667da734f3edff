/**
 * The client side of the idle-connection measurement (`bench/idle.ts` runs it as its own process,
 * so its sockets do not count against the server's file descriptors or memory).
 *
 *   deno run --allow-net bench/idle_client.ts PORT COUNT [STAGES] [SHARE]
 *
 * Opens COUNT connections to 127.0.0.1:PORT in STAGES equal steps (default 1); in each step a
 * SHARE of them (default 0.5) first send `GET /` and read the whole response (Content-Length),
 * the rest send nothing. Prints `ready <open>` after each step and waits for a line on stdin
 * before the next; holds every connection until stdin closes. Exits 1 with a message if a
 * connection fails or a response is not 200.
 */
const [port, count] = Deno.args.map(Number);
const stages = Number(Deno.args[2] ?? 1);
const share = Number(Deno.args[3] ?? 0.5);
const REQUEST = new TextEncoder().encode("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
const conns: Deno.TcpConn[] = [];
const latin1 = new TextDecoder("latin1");

async function open(request: boolean): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conns.push(conn);
  if (!request) return;
  await conn.write(REQUEST);
  const buf = new Uint8Array(8192);
  let got = "";
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) throw new Error("connection closed before the response ended");
    got += latin1.decode(buf.subarray(0, n));
    const end = got.indexOf("\r\n\r\n");
    if (end < 0) continue;
    if (!got.startsWith("HTTP/1.1 200")) {
      throw new Error(`got ${got.slice(0, got.indexOf("\r\n"))}`);
    }
    const length = /\r\ncontent-length: *(\d+)/i.exec(got.slice(0, end + 2));
    if (!length || got.length - end - 4 >= Number(length[1])) return;
  }
}

const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
const BATCH = 200;
const step = Math.floor(count / stages);
try {
  for (let s = 0; s < stages; s++) {
    const requested = Math.round(step * share);
    for (let i = 0; i < step; i += BATCH) {
      const batch: Promise<void>[] = [];
      for (let j = i; j < Math.min(step, i + BATCH); j++) batch.push(open(j < requested));
      await Promise.all(batch);
    }
    console.log(`ready ${conns.length}`);
    if (s < stages - 1 && (await lines.read()).done) break;
  }
} catch (err) {
  console.log(`failed after ${conns.length} connections: ${(err as Error).message}`);
  Deno.exit(1);
}
while (!(await lines.read()).done) { /* hold until stdin closes */ }
for (const conn of conns) {
  try {
    conn.close();
  } catch { /* already closed */ }
}
