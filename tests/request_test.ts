/** The listener's request parser: what it accepts, and the status it answers what it refuses with. */
import assert from "node:assert/strict";
import {
  DEFAULT_LIMITS,
  parseRequestHead,
  RequestError,
  type RequestLimits,
  validHost,
} from "../lib/listener/request.ts";

/** Parses a head given without its final empty line. */
function parse(head: string, limits?: Partial<RequestLimits>) {
  // One byte per character, as on the wire (TextEncoder would send é as two bytes).
  const bytes = Uint8Array.from(head, (c) => c.charCodeAt(0));
  return parseRequestHead(bytes, "127.0.0.1", 1, { ...DEFAULT_LIMITS, ...limits });
}

function refuses(
  head: string,
  status: number,
  why: RegExp,
  limits?: Partial<RequestLimits>,
): void {
  assert.throws(() => parse(head, limits), (err: Error) => {
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
  refuses("GET / HTTP/3.0\r\nHost: h\r\n", 505, /unsupported version/);
  refuses("GET / HTTP/0.9\r\nHost: h\r\n", 505, /unsupported version/);
  refuses("GET / HTTP/1.10\r\nHost: h\r\n", 400, /malformed request line/);
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

Deno.test("HTTP/1.2 and later 1.x minor versions are handled as HTTP/1.1 (RFC 9110 §6.2)", () => {
  for (const version of ["HTTP/1.2", "HTTP/1.9"]) {
    const req = parse(`GET / ${version}\r\nHost: h\r\n`);
    assert.equal(req.minor, 1, version);
    assert.equal(req.close, false, "keep-alive as on 1.1");
  }
  refuses("GET / HTTP/1.2\r\n", 400, /no Host/);
});

Deno.test("Host must be uri-host [: port]: userinfo, paths, lists and bad ports are 400", () => {
  for (
    const good of [
      "h",
      "h:80",
      "H.Example.COM:8080",
      "h:",
      "127.0.0.1:65535",
      "[::1]",
      "[::1]:8080",
      "[2001:db8::7]",
      "[v7.fe80::a+en1]",
      "xn--caf-dma.example",
      "a%2Db",
      "under_score.example",
    ]
  ) {
    assert.ok(validHost(good), JSON.stringify(good));
    assert.equal(parse(`GET / HTTP/1.1\r\nHost: ${good}\r\n`).host, good);
  }
  for (
    const bad of [
      "user@h",
      "user:pw@h:80",
      "h/x",
      "h/",
      "h?x",
      "h#x",
      "a, b",
      "a,b",
      "h h",
      "h:65536",
      "h:99999999999",
      "h:8o",
      "h:-1",
      "h:80:80",
      ":80",
      "[::1",
      "[::1]x",
      "[1.2.3.4]",
      "[::g]",
      "h\\x",
      "a%2",
      "a%zz",
      "caf\xe9",
      "",
    ]
  ) {
    assert.ok(!validHost(bad), JSON.stringify(bad));
    refuses(`GET / HTTP/1.1\r\nHost: ${bad}\r\n`, 400, /invalid Host/);
  }
  refuses("GET / HTTP/1.0\r\nHost: a@b\r\n", 400, /invalid Host/);
});

Deno.test("absolute form: the authority is the host; no userinfo; HTTP/1.1 still needs Host", () => {
  const abs = parse("GET http://app.example:81/p?q HTTP/1.1\r\nHost: other\r\n");
  assert.deepEqual([abs.target, abs.host, abs.absoluteForm], ["/p?q", "app.example:81", true]);
  assert.equal(parse("GET /p HTTP/1.1\r\nHost: h\r\n").absoluteForm, false);
  // HTTP/1.0 has no Host requirement.
  assert.equal(parse("GET http://h:1/x HTTP/1.0\r\n").host, "h:1");
  refuses("GET http://app.example/ HTTP/1.1\r\n", 400, /no Host/);
  refuses("GET http://user@app.example/ HTTP/1.1\r\nHost: app.example\r\n", 400, /authority/);
  refuses("GET http://a:b@app/ HTTP/1.1\r\nHost: app\r\n", 400, /authority/);
  refuses("GET http://app:99999/ HTTP/1.1\r\nHost: app\r\n", 400, /authority/);
  refuses("GET http:///p HTTP/1.1\r\nHost: app\r\n", 400, /invalid request target/);
});

Deno.test("a #fragment is dropped from the target", () => {
  assert.equal(parse("GET /a?b=1#frag HTTP/1.1\r\nHost: h\r\n").target, "/a?b=1");
  assert.equal(parse("GET /#x#y HTTP/1.1\r\nHost: h\r\n").target, "/");
  assert.equal(parse("GET http://h/p#x HTTP/1.1\r\nHost: h\r\n").target, "/p");
  assert.equal(parse("GET http://h#x HTTP/1.1\r\nHost: h\r\n").target, "/");
  refuses("GET #x HTTP/1.1\r\nHost: h\r\n", 400, /invalid request target/);
  refuses("OPTIONS *#x HTTP/1.1\r\nHost: h\r\n", 400, /invalid request target/);
});

Deno.test("Content-Length repeated with one value is one length", () => {
  const post = "POST / HTTP/1.1\r\nHost: h\r\n";
  assert.equal(parse(post + "Content-Length: 5\r\nContent-Length: 5\r\n").length, 5);
  assert.equal(parse(post + "Content-Length: 5, 5\r\n").length, 5);
  assert.equal(parse(post + "Content-Length: 5,5 , 5\r\n").length, 5);
  refuses(post + "Content-Length: 5, 6\r\n", 400, /conflicting/);
  refuses(post + "Content-Length: 5,\r\n", 400, /invalid content-length/);
});

Deno.test("limits: 414 for a long target, 431 for too many or too large headers, 413 for a body", () => {
  const limits = { maxUriLength: 20, maxHeaders: 3, maxHeaderBytes: 200, maxBodySize: 10 };
  const target = "/" + "a".repeat(19);
  assert.equal(parse(`GET ${target} HTTP/1.1\r\nHost: h\r\n`, limits).target, target);
  refuses(`GET ${target}b HTTP/1.1\r\nHost: h\r\n`, 414, /longer than 20 bytes/, limits);
  // The limit is on the target as sent, fragment included.
  refuses(`GET ${target}#f HTTP/1.1\r\nHost: h\r\n`, 414, /target/, limits);
  const three = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n";
  assert.equal(parse(three, limits).names.length, 3);
  refuses(three + "C: 3\r\n", 431, /more than 3 header fields/, limits);
  // 200 bytes in all, the final CRLF included.
  const head = (n: number) => `GET / HTTP/1.1\r\nHost: h\r\nX: ${"v".repeat(n)}\r\n`;
  const fits = head(200 - head(0).length - 2);
  assert.equal(parse(fits, limits).method, "GET");
  refuses(head(200 - head(0).length - 1), 431, /larger than 200 bytes/, limits);
  // A declared body over the limit is refused before anything is read.
  assert.equal(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n", limits).length, 10);
  refuses("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n", 413, /larger than 10/, limits);
  // A chunked body's size is not known yet: accepted here, counted while it is read.
  assert.ok(parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n", limits).chunked);
});

Deno.test("default limits: 64 KiB of head, 100 fields, 8 KiB of target, any body", () => {
  assert.deepEqual({ ...DEFAULT_LIMITS }, {
    maxHeaderBytes: 65536,
    maxHeaders: 100,
    maxUriLength: 8192,
    maxBodySize: Infinity,
  });
  const fields = (n: number) => Array.from({ length: n }, (_, i) => `X-${i}: ${i}\r\n`).join("");
  assert.equal(parse(`GET / HTTP/1.1\r\nHost: h\r\n${fields(99)}`).names.length, 100);
  refuses(`GET / HTTP/1.1\r\nHost: h\r\n${fields(100)}`, 431, /more than 100/);
  assert.equal(parse(`GET /${"a".repeat(8191)} HTTP/1.1\r\nHost: h\r\n`).target.length, 8192);
  refuses(`GET /${"a".repeat(8192)} HTTP/1.1\r\nHost: h\r\n`, 414, /8192/);
});

Deno.test("only SP and HTAB are trimmed from values: U+00A0 is obs-text, kept or refused", () => {
  const req = parse("GET / HTTP/1.1\r\nHost: h\r\nX-A: \xa0v\xa0 \r\n");
  assert.equal(req.header("x-a"), "\xa0v\xa0");
  const post = "POST / HTTP/1.1\r\nHost: h\r\n";
  // Read as 5 or as chunked by a laxer parser downstream: smuggling material.
  refuses(post + "Content-Length: 5\xa0\r\n", 400, /invalid content-length/);
  refuses(post + "Transfer-Encoding: chunked\xa0\r\n", 400, /does not end in chunked/);
  assert.equal(parse(post + "Connection: close\xa0\r\n").close, false);
});

Deno.test("a Host found valid before lets no other through unchecked, and lengths parse alike either way", () => {
  // The parser remembers the latest valid Host: an equal one is not checked again.
  for (const bad of ["", "user@h", "h h", "[::1"]) {
    assert.equal(parse("GET / HTTP/1.1\r\nHost: lb.test:8080\r\n").host, "lb.test:8080");
    refuses(`GET / HTTP/1.1\r\nHost: ${bad}\r\n`, 400, /invalid Host/);
  }
  assert.equal(parse("GET / HTTP/1.1\r\nHost: localhost\r\n").host, "localhost");
  // One plain number takes a shorter path than a list: both give the same answers.
  const post = "POST / HTTP/1.1\r\nHost: h\r\n";
  assert.equal(parse(post + "Content-Length: 000000000000005\r\n").length, 5);
  assert.equal(parse(post + "Content-Length: 5, 5\r\n").length, 5);
  assert.equal(parse(post + "Content-Length: 5\r\nContent-Length: 5\r\n").length, 5);
  refuses(post + "Content-Length: 1234567890123456\r\n", 400, /invalid content-length/);
  refuses(post + "Content-Length: 5\r\nContent-Length: 50\r\n", 400, /conflicting/);
});
