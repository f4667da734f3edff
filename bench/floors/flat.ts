/**
 * sluice's own request-path parts in one flat loop per client connection, for `deno task
 * bench`'s `floors` section: the same connection reads and writes, the same strict parsers of
 * both heads, the same upstream head (X-Forwarded-* and X-Request-Id), response edits and
 * deadlines, but none of the layers around them (data plane, forwarder, upstream exchange,
 * listener exchange, records, statistics). Paired with nginx beside sluice, it shows what the
 * parts cost and what the layers add. GET requests without a body, answered by small responses
 * that arrive whole with their head: not a proxy for real use.
 *
 *   deno run --allow-net bench/floors/flat.ts PORT BACKEND_PORT...
 */
import { Connection } from "../../lib/http1/connection.ts";
import { findHeadEnd, httpDate, isField, parseResponseHead } from "../../lib/http1/wire.ts";
import { parseRequestHead } from "../../lib/listener/request.ts";
import { forwardHead } from "../../lib/forwarding.ts";

const [port, ...backends] = Deno.args.map(Number);
const idle: Connection[][] = backends.map(() => []);
let next = 0;
const random = crypto;
const local = { ip: "127.0.0.1", port };
const ignore = () => {};
/** The timeouts armed around each wait, as sluice's are (they never fire here). */
const TIMEOUT = 60_000;

async function serve(raw: Deno.Conn): Promise<void> {
  const peer = raw.remoteAddr as Deno.NetAddr;
  const client = new Connection(raw, ignore, 4 * 1024, 512);
  try {
    for (;;) {
      let end: number;
      while ((end = findHeadEnd(client.buf, client.start, client.end)) === -1) {
        const got = await client.receive();
        if (got === 0) return;
        client.end += got;
      }
      client.deadline.arm(TIMEOUT);
      const request = parseRequestHead(
        client.buf.subarray(client.start, end - 2),
        peer.hostname,
        peer.port,
        undefined,
        local,
      );
      client.start = end;
      const started = performance.now();
      const requestId = random.randomUUID();
      const head = forwardHead(request, request.ip, "http", undefined).text +
        "x-request-id: " + requestId + "\r\n\r\n";
      const i = next++ % backends.length;
      const backend = idle[i].pop() ?? new Connection(
        await Deno.connect({ hostname: "127.0.0.1", port: backends[i] }),
        ignore,
        16 * 1024,
      );
      backend.idle = false;
      backend.deadline.arm(TIMEOUT);
      await backend.writeJoined(head);
      let responseEnd: number;
      while ((responseEnd = findHeadEnd(backend.buf, backend.start, backend.end)) === -1) {
        const got = await backend.receive();
        if (got === 0) throw new Error("backend closed the connection");
        backend.end += got;
      }
      const response = parseResponseHead(
        backend.buf.subarray(backend.start, responseEnd - 2),
        request.method,
      );
      backend.start = responseEnd;
      backend.deadline.disarm();
      const headers = response.headers;
      let dated = false;
      for (let j = 0; j < headers.length; j++) {
        const name = headers[j][0];
        if (isField(name, "x-request-id")) headers.splice(j--, 1);
        else if (isField(name, "date")) dated = true;
      }
      if (!dated) headers.push(["date", httpDate()]);
      headers.push(["x-request-id", requestId]);
      let reply = "HTTP/1.1 " + response.status + " " + response.reason + "\r\n";
      for (const [name, value] of headers) reply += name + ": " + value + "\r\n";
      reply += "content-length: " + response.length + "\r\n\r\n";
      const body = backend.buf.subarray(backend.start, backend.start + response.length);
      backend.start += response.length;
      const upstreamMs = performance.now() - started;
      client.deadline.arm(TIMEOUT);
      await client.writeJoined(reply, body, undefined, () => {
        backend.park(ignore);
        idle[i].push(backend);
      });
      client.deadline.disarm();
      if (upstreamMs < 0) throw new Error("the clock went back");
    }
  } catch {
    // the client or a backend went away
  } finally {
    client.close();
  }
}

for await (const raw of Deno.listen({ hostname: "127.0.0.1", port })) serve(raw);
