/**
 * A bytes-first variant of `flat.ts`, for `deno task bench`'s `floors` section: both heads are
 * still checked byte by byte (`scanHead`) and the fields that matter are found by comparing
 * bytes, but no header becomes a string or an array. The request goes up as its own bytes plus
 * X-Forwarded-* and X-Request-Id lines; the response comes back as its own bytes less any
 * X-Request-Id line, plus ours (and Date when missing). Only the method, target and Host become
 * strings, as a log or a route would need them. It estimates what a request path built this way
 * could cost. GET requests without a body, answered by small responses that arrive whole with
 * their head: not a proxy for real use.
 *
 *   deno run --allow-net bench/floors/bytes.ts PORT BACKEND_PORT...
 */
import { httpDate, latin1String, scanHead } from "../../lib/http1/wire.ts";
import { Backends, bufferedHead, clientConnection, TIMEOUT } from "./common.ts";

const [port, ...ports] = Deno.args.map(Number);
const backends = new Backends(ports);
const random = crypto;
const ascii = new TextEncoder();
const HOST = ascii.encode("host");
const CONTENT_LENGTH = ascii.encode("content-length");
const DATE = ascii.encode("date");
const REQUEST_ID = ascii.encode("x-request-id");

/** Whether buf[from, from + length) is the lower-case field name `name`, in any case. */
function isName(buf: Uint8Array, from: number, length: number, name: Uint8Array): boolean {
  if (length !== name.length) return false;
  for (let i = 0; i < length; i++) if ((buf[from + i] | 0x20) !== name[i]) return false;
  return true;
}

/** buf[from, to) as a string, one character per byte. */
function latin1(buf: Uint8Array, from: number, to: number): string {
  return latin1String(buf.subarray(from, to), false);
}

/** Index of the first `byte` in buf at or after `from`. */
function find(buf: Uint8Array, from: number, byte: number): number {
  while (buf[from] !== byte) from++;
  return from;
}

async function serve(raw: Deno.Conn): Promise<void> {
  const peer = raw.remoteAddr as Deno.NetAddr;
  const forwarded = "x-forwarded-for: " + peer.hostname + "\r\nx-forwarded-proto: http\r\n";
  const client = clientConnection(raw);
  const out = new Uint8Array(16 * 1024);
  try {
    for (;;) {
      const end = await bufferedHead(client);
      if (end === -1) return;
      client.deadline.arm(TIMEOUT);
      const buf = client.buf, start = client.start;
      scanHead(buf.subarray(start, end - 2), "request");
      const space = find(buf, start, 32);
      const method = latin1(buf, start, space);
      const target = latin1(buf, space + 1, find(buf, space + 1, 32));
      let host = "";
      for (let line = find(buf, start, 10) + 1; line < end - 2;) {
        const eol = find(buf, line, 13);
        const colon = find(buf, line, 58);
        if (isName(buf, line, colon - line, HOST)) host = latin1(buf, colon + 2, eol);
        line = eol + 2;
      }
      out.set(buf.subarray(start, end - 2));
      let n = end - 2 - start;
      client.start = end;
      const started = performance.now();
      const requestId = random.randomUUID();
      n += ascii.encodeInto(
        forwarded + "x-forwarded-host: " + host + "\r\nx-request-id: " + requestId + "\r\n\r\n",
        out.subarray(n),
      ).written;
      const { conn: backend, index } = await backends.take();
      backend.deadline.arm(TIMEOUT);
      await backend.write(out.subarray(0, n));
      const responseEnd = await bufferedHead(backend);
      if (responseEnd === -1) throw new Error("backend closed the connection");
      const res = backend.buf, from = backend.start;
      scanHead(res.subarray(from, responseEnd - 2), "response");
      let length = 0, dated = false;
      let line = find(res, from, 10) + 1;
      out.set(res.subarray(from, line));
      n = line - from;
      while (line < responseEnd - 2) {
        const eol = find(res, line, 13);
        const colon = find(res, line, 58);
        const size = colon - line;
        let keep = true;
        if (isName(res, line, size, CONTENT_LENGTH)) {
          length = 0;
          for (let v = colon + 1; v < eol; v++) {
            if (res[v] !== 32) length = length * 10 + res[v] - 48;
          }
        } else if (isName(res, line, size, DATE)) dated = true;
        else if (isName(res, line, size, REQUEST_ID)) keep = false;
        if (keep) {
          out.set(res.subarray(line, eol + 2), n);
          n += eol + 2 - line;
        }
        line = eol + 2;
      }
      backend.deadline.disarm();
      const upstreamMs = performance.now() - started;
      n += ascii.encodeInto(
        (dated ? "" : "date: " + httpDate() + "\r\n") + "x-request-id: " + requestId + "\r\n\r\n",
        out.subarray(n),
      ).written;
      out.set(res.subarray(responseEnd, responseEnd + length), n);
      n += length;
      backend.start = responseEnd + length;
      backends.give(backend, index);
      client.deadline.arm(TIMEOUT);
      await client.write(out.subarray(0, n));
      client.deadline.disarm();
      if (upstreamMs < 0 || method.length + target.length === 0) throw new Error("unreachable");
    }
  } catch {
    // the client or a backend went away
  } finally {
    client.close();
  }
}

for await (const raw of Deno.listen({ hostname: "127.0.0.1", port })) serve(raw);
