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
import { parseResponseHead } from "../../lib/http1/wire.ts";
import { parseRequestHead } from "../../lib/listener/request.ts";
import { forwardHead } from "../../lib/forwarding.ts";
import { stampResponse } from "../../lib/upstream/client.ts";
import { Backends, bufferedHead, clientConnection, TIMEOUT } from "./common.ts";

const [port, ...ports] = Deno.args.map(Number);
const backends = new Backends(ports);
const random = crypto;
const local = { ip: "127.0.0.1", port };

async function serve(raw: Deno.Conn): Promise<void> {
  const peer = raw.remoteAddr as Deno.NetAddr;
  const client = clientConnection(raw);
  try {
    for (;;) {
      const end = await bufferedHead(client);
      if (end === -1) return;
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
      const { conn: backend, index } = await backends.take();
      backend.deadline.arm(TIMEOUT);
      await backend.writeJoined(head);
      const responseEnd = await bufferedHead(backend);
      if (responseEnd === -1) throw new Error("backend closed the connection");
      const response = parseResponseHead(
        backend.buf.subarray(backend.start, responseEnd - 2),
        request.method,
      );
      backend.start = responseEnd;
      backend.deadline.disarm();
      stampResponse(response.headers, requestId);
      let reply = "HTTP/1.1 " + response.status + " " + response.reason + "\r\n";
      for (const [name, value] of response.headers) reply += name + ": " + value + "\r\n";
      reply += "content-length: " + response.length + "\r\n\r\n";
      const body = backend.buf.subarray(backend.start, backend.start + response.length);
      backend.start += response.length;
      const upstreamMs = performance.now() - started;
      client.deadline.arm(TIMEOUT);
      await client.writeJoined(reply, body, undefined, () => backends.give(backend, index));
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
