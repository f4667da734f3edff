/**
 * The floor of a Deno proxy, for `deno task bench`'s `floors` section: a shared keep-alive pool
 * per backend, round robin, and per request only the head's end and the response's
 * Content-Length found (the end with sluice's `findHeadEnd`); bytes are copied as they came,
 * through the public `Deno.Conn` methods.
 * Nothing is validated or added. GET requests without a body only: not a proxy for real use.
 *
 *   deno run --allow-net bench/floors/minimal.ts PORT BACKEND_PORT...
 */
import { findHeadEnd } from "../../lib/http1/wire.ts";

const [port, ...backends] = Deno.args.map(Number);
const idle: Deno.Conn[][] = backends.map(() => []);
let next = 0;
const ascii = new TextDecoder();

/** The Content-Length of the head in buf[0, end), 0 without one. */
function contentLength(buf: Uint8Array, end: number): number {
  const text = ascii.decode(buf.subarray(0, end)).toLowerCase();
  const at = text.indexOf("content-length:");
  return at < 0 ? 0 : parseInt(text.slice(at + 15));
}

async function serve(client: Deno.Conn): Promise<void> {
  const request = new Uint8Array(16 * 1024);
  const response = new Uint8Array(16 * 1024);
  for (;;) {
    let n = 0, end = -1;
    while (end < 0) {
      const got = await client.read(request.subarray(n));
      if (got === null) return;
      n += got;
      end = findHeadEnd(request, 0, n);
    }
    const i = next++ % backends.length;
    const backend = idle[i].pop() ??
      await Deno.connect({ hostname: "127.0.0.1", port: backends[i] });
    for (let sent = 0; sent < n;) sent += await backend.write(request.subarray(sent, n));
    let m = 0, responseEnd = -1;
    while (responseEnd < 0) {
      const got = await backend.read(response.subarray(m));
      if (got === null) throw new Error("backend closed the connection");
      m += got;
      responseEnd = findHeadEnd(response, 0, m);
    }
    const total = responseEnd + contentLength(response, responseEnd);
    while (m < total) {
      const got = await backend.read(response.subarray(m));
      if (got === null) throw new Error("backend closed the connection");
      m += got;
    }
    idle[i].push(backend);
    for (let sent = 0; sent < m;) sent += await client.write(response.subarray(sent, m));
  }
}

for await (const client of Deno.listen({ hostname: "127.0.0.1", port })) {
  serve(client).catch(() => {}).finally(() => client.close());
}
