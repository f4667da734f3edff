/** The listener's request parser: what it accepts, and the status it answers what it refuses with. */
import assert from "node:assert/strict";
import { parseRequestHead, RequestError } from "../lib/listener/request.ts";
import { clientRequest } from "./helpers.ts";

/** Parses a head given without its final empty line. */
function parse(head: string) {
  return clientRequest(head + "\r\n");
}

function refuses(head: string, status: number, why: RegExp): void {
  assert.throws(() => parse(head), (err: Error) => {
    assert.ok(err instanceof RequestError, `${JSON.stringify(head)} threw ${err}`);
    assert.equal(err.status, status, JSON.stringify(head));
    assert.match(err.message, why, JSON.stringify(head));
    return true;
  }, `expected ${JSON.stringify(head)} to be refused`);
}

Deno.test("a GET: method, target byte for byte, version, headers as sent", () => {
  const req = parse("GET /a%2Fb//c?x=1&x=2 HTTP/1.1\r\nHost: h:8080\r\nX-Dup: 1\r\nx-dup:  2 \r\n");
  assert.equal(req.method, "GET");
  assert.equal(req.target, "/a%2Fb//c?x=1&x=2");
  assert.equal(req.minor, 1);
  assert.deepEqual(req.names, ["Host", "X-Dup", "x-dup"]);
  assert.deepEqual(req.keys, ["host", "x-dup", "x-dup"]);
  assert.deepEqual(req.values, ["h:8080", "1", "2"]);
  assert.equal(req.header("x-dup"), "1, 2");
  assert.equal(req.header("absent"), undefined);
  assert.equal(req.host, "h:8080");
  assert.deepEqual([req.length, req.chunked, req.close, req.expectContinue], [
    -1,
    false,
    false,
    false,
  ]);
});

Deno.test("repeated Cookie lines read as one Cookie header", () => {
  const req = parse("GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nCookie: b=2\r\n");
  assert.equal(req.header("cookie"), "a=1; b=2");
});

Deno.test("keep-alive: HTTP/1.1 unless close, HTTP/1.0 only when asked", () => {
  assert.equal(parse("GET / HTTP/1.1\r\nHost: h\r\n").close, false);
  assert.equal(parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n").close, true);
  assert.equal(parse("GET / HTTP/1.0\r\n").close, true);
  assert.equal(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n").close, false);
});

Deno.test("body framing: Content-Length, chunked, and Expect: 100-continue", () => {
  const sized = parse(
    "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\nExpect: 100-Continue\r\n",
  );
  assert.deepEqual([sized.length, sized.chunked, sized.expectContinue], [5, false, true]);
  const chunked = parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n");
  assert.deepEqual([chunked.length, chunked.chunked], [-1, true]);
  // HTTP/1.0 has no 100 Continue.
  assert.equal(
    parse("POST / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n").expectContinue,
    false,
  );
});

Deno.test("absolute-form and asterisk-form targets", () => {
  const abs = parse("GET http://App.example:81/p?q HTTP/1.1\r\nHost: other\r\n");
  assert.deepEqual([abs.target, abs.host], ["/p?q", "App.example:81"]);
  assert.equal(parse("GET http://h HTTP/1.1\r\nHost: h\r\n").target, "/");
  assert.equal(parse("OPTIONS * HTTP/1.1\r\nHost: h\r\n").target, "*");
});

Deno.test("malformed request lines are 400; unknown versions 505; CONNECT 501", () => {
  refuses("BAD\r\n", 400, /malformed request line/);
  refuses("GET /\r\nHost: h\r\n", 400, /malformed request line/);
  refuses("GET / HTTP/1.1 x\r\nHost: h\r\n", 400, /malformed request line/);
  refuses("GET  / HTTP/1.1\r\nHost: h\r\n", 400, /malformed request line|invalid/);
  refuses("G(T / HTTP/1.1\r\nHost: h\r\n", 400, /invalid method/);
  refuses("GET / HTTQ/1.1\r\nHost: h\r\n", 400, /malformed request line/);
  refuses("GET / HTTP/2.0\r\nHost: h\r\n", 505, /unsupported version/);
  refuses("GET / HTTP/1.2\r\nHost: h\r\n", 505, /unsupported version/);
  refuses("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n", 501, /CONNECT/);
  refuses("GET /caf\xe9 HTTP/1.1\r\nHost: h\r\n", 400, /invalid character in request target/);
  refuses("GET ftp://h/ HTTP/1.1\r\nHost: h\r\n", 400, /invalid request target/);
  refuses("GET * HTTP/1.1\r\nHost: h\r\n", 400, /OPTIONS only/);
});

Deno.test("malformed header lines are 400", () => {
  refuses("GET / HTTP/1.1\r\nHost: h\r\nNo colon\r\n", 400, /malformed header line/);
  refuses("GET / HTTP/1.1\r\nHost: h\r\n: v\r\n", 400, /malformed header line/);
  refuses("GET / HTTP/1.1\r\nHost : h\r\n", 400, /invalid header name/);
  refuses("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n folded\r\n", 400, /malformed header line/);
  refuses("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\tb: c\r\n", 400, /invalid header name/);
  refuses("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n", 400, /control character/);
  refuses("GET / HTTP/1.1\r\nHost: h\nX-A: 1\r\n", 400, /bare CR or LF/);
  refuses("GET / HTTP/1.1\r\nHost: h\rX-A: 1\r\n", 400, /bare CR or LF/);
});

Deno.test("Host: exactly one on HTTP/1.1", () => {
  refuses("GET / HTTP/1.1\r\nAccept: */*\r\n", 400, /no Host/);
  refuses("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n", 400, /more than one Host/);
  assert.equal(parse("GET / HTTP/1.0\r\n").host, undefined);
});

Deno.test("ambiguous or unsupported body framing is refused (no request smuggling)", () => {
  const te = "POST / HTTP/1.1\r\nHost: h\r\n";
  refuses(te + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400, /both/);
  refuses(te + "Content-Length: 5\r\nContent-Length: 6\r\n", 400, /conflicting content-length/);
  for (const bad of ["12abc", "-1", "+5", "", "0x10", "1 2"]) {
    refuses(te + `Content-Length: ${bad}\r\n`, 400, /invalid content-length/);
  }
  refuses(te + "Transfer-Encoding: gzip\r\n", 400, /does not end in chunked/);
  refuses(te + "Transfer-Encoding: chunked, gzip\r\n", 400, /does not end in chunked/);
  refuses(te + "Transfer-Encoding: gzip, chunked\r\n", 501, /unsupported transfer coding/);
  refuses(te + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 501, /unsupported/);
  refuses("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n", 400, /HTTP\/1.0/);
});

Deno.test("parseRequestHead takes the client's address along", () => {
  const req = parseRequestHead(new TextEncoder().encode("GET / HTTP/1.0\r\n"), "::1", 4321);
  assert.deepEqual([req.ip, req.port], ["::1", 4321]);
});

Deno.test("fuzz: mangled heads are parsed or refused with a status, never anything else", () => {
  const seeds = [
    "GET /a?b=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n",
    "POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nExpect: 100-continue\r\n",
    "PUT /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close, x\r\n",
    "GET http://h:1/p HTTP/1.0\r\nConnection: keep-alive\r\n",
  ];
  const alphabet = [0, 9, 10, 13, 32, 44, 47, 58, 59, 65, 127, 200, 255];
  let seed = 42;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  let parsed = 0;
  let refused = 0;
  for (let round = 0; round < 5_000; round++) {
    const bytes = [...new TextEncoder().encode(seeds[round % seeds.length])];
    for (let edits = 1 + Math.floor(next() * 4); edits > 0; edits--) {
      const at = Math.floor(next() * bytes.length);
      const op = next();
      const byte = alphabet[Math.floor(next() * alphabet.length)];
      if (op < 0.4) bytes[at] = byte;
      else if (op < 0.7) bytes.splice(at, 0, byte);
      else bytes.splice(at, 1);
    }
    const head = Uint8Array.from(bytes);
    try {
      const req = parseRequestHead(head, "127.0.0.1", 1);
      assert.ok(req.method.length > 0 && req.target.length > 0);
      assert.ok(!(req.chunked && req.length !== -1), "one framing at most");
      parsed++;
    } catch (err) {
      assert.ok(
        err instanceof RequestError,
        `${JSON.stringify(String.fromCharCode(...head))}: ${err}`,
      );
      assert.ok([400, 501, 505].includes(err.status), `status ${err.status}`);
      refused++;
    }
  }
  assert.ok(parsed > 100 && refused > 100, `parsed ${parsed}, refused ${refused}`);
});
