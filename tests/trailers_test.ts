/**
 * Trailer fields on chunked messages, both ways on the HTTP/1.1 path, through main.ts with raw
 * sockets on both sides: a backend's response trailers reach HTTP/1.1 clients (not HTTP/1.0
 * ones, which get a close-delimited body, nor HTTP/2 ones: Deno's server cannot send them), and
 * a client's request trailers reach the backend; fields that must not be trailers are dropped.
 */
import assert from "node:assert/strict";
import { ChunkedDecoder, lastChunk } from "../lib/http1/wire.ts";
import { concat } from "./helpers.ts";
import { launchSluice, type Sluice } from "./ops_helpers.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

Deno.test("trailers: the chunked decoder keeps trailer fields as sent; lastChunk drops forbidden ones", () => {
  const decoder = new ChunkedDecoder();
  const wire = encoder.encode(
    "3\r\nabc\r\n0\r\nX-Checksum: sha256=1\r\nContent-Length: 9\r\nX-Empty:\r\n\r\n",
  );
  let pos = 0;
  while (!decoder.done) {
    pos = decoder.advance(wire, pos, wire.length);
    if (decoder.remaining > 0) {
      pos += decoder.remaining;
      decoder.remaining = 0;
    }
  }
  assert.equal(pos, wire.length);
  assert.deepEqual(decoder.trailers, [
    ["X-Checksum", "sha256=1"],
    ["Content-Length", "9"],
    ["X-Empty", ""],
  ]);
  assert.equal(
    lastChunk(decoder.trailers),
    "0\r\nX-Checksum: sha256=1\r\nX-Empty: \r\n\r\n",
    "Content-Length is framing, never a trailer",
  );
  assert.equal(lastChunk(undefined), "0\r\n\r\n");
  const none = new ChunkedDecoder();
  none.advance(encoder.encode("0\r\n\r\n"), 0, 5);
  assert.equal(none.done, true);
  assert.equal(none.trailers, undefined, "no trailers: nothing allocated");
});

/** sluice (one plain listener with http2) in front of `backend`. */
function launch(backend: number): Promise<Sluice> {
  return launchSluice({
    listen: { host: "127.0.0.1", port: 0, http2: true },
    backends: [{ url: `http://127.0.0.1:${backend}` }],
  }, { settle: false });
}

/**
 * A raw backend: `GET /resp` answers a chunked body `hello world` ending in trailer fields;
 * `POST /req` reads a chunked request to its end and answers with the raw bytes after the
 * last chunk's size line (the trailer section as received). Health probes get 200.
 */
function trailerBackend() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of listener) {
      (async () => {
        let buf: Uint8Array = new Uint8Array(0);
        const chunk = new Uint8Array(65536);
        const fill = async () => {
          const n = await conn.read(chunk);
          if (n === null) throw new Error("closed");
          buf = concat([buf, chunk.subarray(0, n)]);
        };
        const write = async (text: string) => {
          const bytes = encoder.encode(text);
          for (let n = 0; n < bytes.length;) n += await conn.write(bytes.subarray(n));
        };
        for (;;) {
          while (!decoder.decode(buf).includes("\r\n\r\n")) await fill();
          const text = decoder.decode(buf);
          const end = text.indexOf("\r\n\r\n") + 4;
          const head = text.slice(0, end);
          buf = buf.slice(end);
          if (/sluice-health-check/i.test(head)) {
            await write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            return;
          }
          if (head.startsWith("GET /resp")) {
            await write(
              "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n" +
                "6\r\nhello \r\n5\r\nworld\r\n" +
                "0\r\nX-Checksum: sha256=abc\r\nContent-Length: 99\r\nX-Done: Yes\r\n\r\n",
            );
            continue;
          }
          // A chunked request: read up to the end of its trailer section.
          let body = decoder.decode(buf);
          while (!/(^|\r\n)0\r\n([^]*?\r\n)?\r\n$/.test(body)) {
            await fill();
            body = decoder.decode(buf);
          }
          buf = new Uint8Array(0);
          const trailer = body.slice(body.search(/(^|\r\n)0\r\n/)).replace(/^\r\n/, "");
          await write(`HTTP/1.1 200 OK\r\ncontent-length: ${trailer.length}\r\n\r\n${trailer}`);
        }
      })().catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch { /* closed */ }
      });
    }
  })().catch(() => {});
  return { port: (listener.addr as Deno.NetAddr).port, close: () => listener.close() };
}

/** Sends `request` on a new connection; everything received until the response ends. */
async function exchangeRaw(port: number, request: string, until: RegExp): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(encoder.encode(request));
    let text = "";
    const buf = new Uint8Array(65536);
    while (!until.test(text)) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += decoder.decode(buf.subarray(0, n));
    }
    return text;
  } finally {
    conn.close();
  }
}

Deno.test("trailers: a backend's response trailers reach HTTP/1.1 clients; HTTP/1.0 and HTTP/2 clients get the body alone", async () => {
  const backend = trailerBackend();
  try {
    await using s = await launch(backend.port);
    const http11 = await exchangeRaw(
      s.port,
      "GET /resp HTTP/1.1\r\nHost: x\r\n\r\n",
      /\r\n0\r\n([^]*?\r\n)?\r\n$/,
    );
    assert.match(http11, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(http11, /\r\ntransfer-encoding: chunked\r\n/i);
    const body = http11.slice(http11.indexOf("\r\n\r\n") + 4);
    assert.equal(
      body,
      "6\r\nhello \r\n5\r\nworld\r\n0\r\nX-Checksum: sha256=abc\r\nX-Done: Yes\r\n\r\n",
      "the trailers, less Content-Length",
    );

    const http10 = await exchangeRaw(s.port, "GET /resp HTTP/1.0\r\n\r\n", /(?!)/);
    assert.match(http10, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(http10, /\r\nconnection: close\r\n/i);
    assert.doesNotMatch(http10, /transfer-encoding|X-Checksum/i);
    assert.ok(http10.endsWith("\r\n\r\nhello world"), http10);

    const h2 = await new Deno.Command("curl", {
      args: ["-sS", "--http2-prior-knowledge", `http://127.0.0.1:${s.port}/resp`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(h2.code, 0, decoder.decode(h2.stderr));
    assert.equal(decoder.decode(h2.stdout), "hello world");
  } finally {
    backend.close();
  }
});

Deno.test("trailers: a client's request trailers reach the backend after its chunked body", async () => {
  const backend = trailerBackend();
  try {
    await using s = await launch(backend.port);
    const res = await exchangeRaw(
      s.port,
      "POST /req HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sig\r\n\r\n" +
        "4\r\ndata\r\n0\r\nX-Sig: s1\r\nHost: evil.example\r\nX-Sig: s2\r\n\r\n",
      /0\r\n[^]*\r\n\r\n$/,
    );
    assert.match(res, /^HTTP\/1\.1 200 OK\r\n/);
    assert.equal(
      res.slice(res.indexOf("\r\n\r\n") + 4),
      "0\r\nX-Sig: s1\r\nX-Sig: s2\r\n\r\n",
      "repeats kept in order; Host is no trailer",
    );
    // Without trailers, the body still ends with a bare last chunk.
    const plain = await exchangeRaw(
      s.port,
      "POST /req HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
      /0\r\n\r\n$/,
    );
    assert.equal(plain.slice(plain.indexOf("\r\n\r\n") + 4), "0\r\n\r\n");
  } finally {
    backend.close();
  }
});
