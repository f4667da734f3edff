/** The upstream HTTP/1.1 wire format: what sluice accepts from a backend and what it refuses. */
import assert from "node:assert/strict";
import {
  ChunkedDecoder,
  connectionTokens,
  findHeadEnd,
  latin1Bytes,
  latin1String,
  ParseError,
  parseResponseHead,
  type ResponseHead,
} from "../lib/http1/wire.ts";

/** Parses a head written as text with `\r\n` line ends; `text` ends with the last field's CRLF. */
function parse(text: string, method = "GET"): ResponseHead {
  return parseResponseHead(latin1Bytes(text), method);
}

function rejects(text: string, why: RegExp, method = "GET"): void {
  assert.throws(() => parse(text, method), (err: Error) => {
    assert.ok(err instanceof ParseError, `${JSON.stringify(text)} threw ${err}`);
    assert.match(err.message, why, JSON.stringify(text));
    return true;
  }, `expected ${JSON.stringify(text)} to be rejected`);
}

Deno.test("a plain 200 with Content-Length: status, reason, headers as sent, framing", () => {
  const text =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-Id:  a b \r\n";
  const head = parse(text);
  assert.equal(head.status, 200);
  assert.equal(head.reason, "OK");
  assert.deepEqual(head.headers, [["Content-Type", "text/plain"], ["X-Id", "a b"]]);
  assert.equal(head.framing, "length");
  assert.equal(head.length, 5);
  assert.equal(head.keepAlive, true);
  assert.equal(head.size, text.length + 2, "size counts the final empty line");
});

Deno.test("the reason phrase may be empty, missing, spaced or non-ASCII", () => {
  assert.equal(parse("HTTP/1.1 204 \r\n").reason, "");
  assert.equal(parse("HTTP/1.1 204\r\n").reason, "");
  assert.equal(
    parse("HTTP/1.1 404 Not  Found here\r\nContent-Length: 0\r\n").reason,
    "Not  Found here",
  );
  assert.equal(
    parse("HTTP/1.1 200 Tr\xe8s bien\tok\r\nContent-Length: 0\r\n").reason,
    "Tr\xe8s bien\tok",
  );
});

Deno.test("header values: surrounding blanks trimmed, empty and tab-containing values kept", () => {
  const head = parse(
    "HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Tab:\ta\tb\t\r\nX-Latin: caf\xe9\r\nContent-Length: 0\r\n",
  );
  assert.deepEqual(head.headers, [["X-Empty", ""], ["X-Tab", "a\tb"], ["X-Latin", "caf\xe9"]]);
});

Deno.test("HTTP/1.1 keeps the connection unless Connection: close", () => {
  assert.equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n").keepAlive, true);
  assert.equal(
    parse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n").keepAlive,
    false,
  );
  assert.equal(
    parse("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n").keepAlive,
    false,
  );
  assert.equal(
    parse("HTTP/1.1 200 OK\r\nConnection: x-a, close\r\nContent-Length: 0\r\n").keepAlive,
    false,
  );
});

Deno.test("HTTP/1.0 closes unless Connection: keep-alive", () => {
  assert.equal(parse("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n").keepAlive, false);
  const kept = parse(
    "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n",
  );
  assert.equal(kept.keepAlive, true);
  assert.deepEqual(kept.headers, []);
  assert.equal(kept.length, 2);
  assert.equal(
    parse("HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n").keepAlive,
    false,
  );
});

Deno.test("hop-by-hop headers and the headers Connection names are not passed on", () => {
  const head = parse(
    "HTTP/1.1 200 OK\r\nConnection: X-Trace, x-debug\r\nX-Trace: 1\r\nKeep-Alive: timeout=5\r\n" +
      "Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n" +
      "X-Debug: on\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\n",
  );
  assert.deepEqual(head.headers, [["X-Kept", "yes"]]);
  assert.equal(head.framing, "chunked");
  assert.equal(head.keepAlive, true);
});

Deno.test("repeated Connection headers all count (close in the first one still closes)", () => {
  const head = parse(
    "HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: X-Trace\r\nX-Trace: 1\r\nContent-Length: 0\r\n",
  );
  assert.deepEqual(head.headers, []);
  assert.equal(head.keepAlive, false, "the backend said close; reusing the connection would fail");
});

Deno.test("identical repeated Content-Length values are one length", () => {
  const twice = parse("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n");
  assert.deepEqual([twice.framing, twice.length], ["length", 7]);
  const listed = parse("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n");
  assert.deepEqual([listed.framing, listed.length], ["length", 7]);
});

Deno.test("HEAD, 204, 304, 1xx and Content-Length: 0 responses have no body", () => {
  assert.equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n", "HEAD").framing, "none");
  assert.equal(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n", "HEAD").framing, "none");
  assert.equal(parse("HTTP/1.1 204 No Content\r\n").framing, "none");
  assert.equal(parse("HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n").framing, "none");
  assert.equal(parse("HTTP/1.1 100 Continue\r\n").framing, "none");
  assert.equal(parse("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n").framing, "none");
  const empty = parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
  assert.deepEqual([empty.framing, empty.keepAlive], ["none", true]);
  assert.equal(parse("HTTP/1.1 204 No Content\r\n").keepAlive, true);
});

Deno.test("Transfer-Encoding: chunked (any case) means chunked framing", () => {
  assert.equal(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n").framing, "chunked");
});

Deno.test("no length and no chunking: the body runs to close and the connection is not reused", () => {
  const head = parse("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n");
  assert.deepEqual([head.framing, head.keepAlive], ["close", false]);
  assert.equal(parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n").keepAlive, false);
});

Deno.test("malformed status lines are refused", () => {
  for (
    const line of [
      "HTTP/1.1 20 OK",
      "HTTP/1.1 2000 OK",
      "HTTP/1.1 099 Low",
      "HTTP/1.1 2x0 OK",
      "HTTP/1.1 200OK",
      "HTTP/1.1  200 OK",
      " HTTP/1.1 200 OK",
      "HTTP/1.1\t200 OK",
      "HTTP/2 200 OK",
      "HTTP/1.2 200 OK",
      "HTTP/1 200 OK",
      "http/1.1 200 OK",
      "ICY 200 OK",
      "",
    ]
  ) {
    rejects(`${line}\r\nContent-Length: 0\r\n`, /status line/);
  }
});

Deno.test("status codes outside 100-599 are refused", () => {
  // A Response cannot carry them, so they must fail as a protocol error here, not later.
  rejects("HTTP/1.1 600 Custom\r\nContent-Length: 0\r\n", /status/);
  rejects("HTTP/1.1 999 Custom\r\nContent-Length: 0\r\n", /status/);
});

Deno.test("header lines that are not `token: value` are refused", () => {
  rejects("HTTP/1.1 200 OK\r\nContent-Length : 5\r\n", /header name/);
  rejects("HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 0\r\n", /header name/);
  rejects("HTTP/1.1 200 OK\r\nX(A): 1\r\nContent-Length: 0\r\n", /header name/);
  rejects("HTTP/1.1 200 OK\r\nX-\xe9: 1\r\nContent-Length: 0\r\n", /header name/);
  rejects("HTTP/1.1 200 OK\r\n: no name\r\nContent-Length: 0\r\n", /malformed header/);
  rejects("HTTP/1.1 200 OK\r\nno colon\r\nContent-Length: 0\r\n", /malformed header/);
  rejects("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", /malformed header/);
});

Deno.test("obsolete line folding is refused", () => {
  rejects("HTTP/1.1 200 OK\r\nX-Long: a\r\n  b\r\nContent-Length: 0\r\n", /header/);
  rejects("HTTP/1.1 200 OK\r\nX-Long: a\r\n\tb:c\r\nContent-Length: 0\r\n", /header/);
});

Deno.test("bare LF or CR line ends are refused", () => {
  rejects("HTTP/1.1 200 OK\nContent-Length: 0\r\n", /bare CR or LF/);
  rejects("HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 0\r\n", /bare CR or LF/);
  rejects("HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\nContent-Length: 0\r\n", /bare CR or LF/);
  rejects("HTTP/1.1 200 OK\r\nContent-Length: 0", /unterminated/);
});

Deno.test("NUL, control characters and DEL anywhere in the head are refused", () => {
  for (const c of ["\0", "\x01", "\x1b", "\x7f"]) {
    rejects(`HTTP/1.1 200 OK\r\nX-A: a${c}b\r\nContent-Length: 0\r\n`, /control character/);
    rejects(`HTTP/1.1 200 O${c}K\r\nContent-Length: 0\r\n`, /control character/);
  }
});

Deno.test("Content-Length must be one non-negative decimal number", () => {
  for (const bad of ["abc", "-1", "+5", "", "5 5", "0x10", "1e3", "5,", "1234567890123456"]) {
    rejects(`HTTP/1.1 200 OK\r\nContent-Length: ${bad}\r\n`, /invalid content-length/);
  }
  rejects("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n", /conflicting content-length/);
  rejects("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n", /conflicting/);
});

Deno.test("Transfer-Encoding together with Content-Length is refused (smuggling)", () => {
  rejects("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n", /both/);
  rejects("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n", /both/);
});

Deno.test("transfer codings other than a single chunked are refused", () => {
  for (const te of ["gzip", "gzip, chunked", "chunked, gzip", "identity", "chunked;q=1"]) {
    rejects(`HTTP/1.1 200 OK\r\nTransfer-Encoding: ${te}\r\n`, /unsupported transfer-encoding/);
  }
  rejects(
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    /repeated transfer-encoding/,
  );
});

Deno.test("findHeadEnd finds the index just past CRLFCRLF, or -1", () => {
  const bytes = latin1Bytes("HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody\r\n\r\n");
  assert.equal(findHeadEnd(bytes, 0, bytes.length), 25);
  assert.equal(latin1String(bytes.subarray(25, 29)), "body");
  assert.equal(findHeadEnd(bytes, 0, 24), -1, "bytes past `to` are not looked at");
  assert.equal(findHeadEnd(bytes, 25, bytes.length), bytes.length, "search starts at `from`");
  assert.equal(
    findHeadEnd(latin1Bytes("HTTP/1.1 200 OK\n\n"), 0, 17),
    -1,
    "LFLF does not end a head",
  );
  assert.equal(findHeadEnd(latin1Bytes("\r\n\r"), 0, 3), -1);
  assert.equal(findHeadEnd(latin1Bytes("\r\n\r\n"), 0, 4), 4);
});

Deno.test("findHeadEnd agrees with a plain search on every split of many inputs", () => {
  // Inputs built from CR, LF and letters exercise the skip-ahead; a fixed seed keeps it repeatable.
  let seed = 42;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let n = 0; n < 2000; n++) {
    const text = Array.from(
      { length: 4 + Math.floor(next() * 20) },
      () => "\r\nx"[Math.floor(next() * 3)],
    )
      .join("");
    const bytes = latin1Bytes(text);
    const at = text.indexOf("\r\n\r\n");
    const expected = at === -1 ? -1 : at + 4;
    assert.equal(findHeadEnd(bytes, 0, bytes.length), expected, JSON.stringify(text));
    // The client resumes 3 bytes before what it already scanned, so a split terminator is found.
    const cut = Math.floor(next() * bytes.length);
    const first = findHeadEnd(bytes, 0, cut);
    const resumed = first !== -1 ? first : findHeadEnd(bytes, Math.max(0, cut - 3), bytes.length);
    assert.equal(resumed, expected, `${JSON.stringify(text)} cut at ${cut}`);
  }
});

/**
 * Decodes a chunked body the way the upstream client does, with the wire split into `step`-byte
 * reads. Returns the body text and how many bytes the body occupied.
 */
function dechunk(wire: string, step = wire.length): { body: string; used: number } {
  const bytes = latin1Bytes(wire);
  const decoder = new ChunkedDecoder();
  let end = Math.min(step, bytes.length);
  let pos = 0;
  let body = "";
  while (!decoder.done) {
    pos = decoder.advance(bytes, pos, end);
    if (decoder.remaining > 0 && pos < end) {
      const take = Math.min(decoder.remaining, end - pos);
      body += latin1String(bytes.subarray(pos, pos + take));
      decoder.remaining -= take;
      pos += take;
      continue;
    }
    if (decoder.done) break;
    if (end === bytes.length) throw new Error(`body incomplete at byte ${pos}`);
    end = Math.min(end + step, bytes.length);
  }
  return { body, used: pos };
}

const STEPS = [1, 2, 3, 5, 7, 64];

Deno.test("chunked bodies decode the same however the bytes are split", () => {
  const wire = "5\r\nhello\r\n6\r\n world\r\nA\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n";
  for (const step of [...STEPS, wire.length]) {
    assert.deepEqual(dechunk(wire + "HTTP/1.1 200 OK", step), {
      body: "hello world0123456789abcdefghij",
      used: wire.length,
    }, `step ${step}`);
  }
});

Deno.test("chunk extensions are ignored", () => {
  const wire = '5;name=value\r\nhello\r\n3 ; q="x;y"\r\nabc\r\n0;last\r\n\r\n';
  for (const step of STEPS) assert.equal(dechunk(wire, step).body, "helloabc");
});

Deno.test("trailer fields after the last chunk are consumed", () => {
  const wire = "3\r\nabc\r\n0\r\nX-Checksum: 900150983cd2\r\nX-Other: 1\r\n\r\n";
  for (const step of STEPS) {
    assert.deepEqual(dechunk(wire + "next", step), { body: "abc", used: wire.length });
  }
});

Deno.test("an empty chunked body is just the last chunk", () => {
  assert.deepEqual(dechunk("0\r\n\r\n"), { body: "", used: 5 });
});

function dechunkFails(wire: string, why: RegExp): void {
  for (const step of [1, 3, wire.length]) {
    assert.throws(() => dechunk(wire, step), (err: Error) => {
      assert.ok(err instanceof ParseError, `${JSON.stringify(wire)} threw ${err}`);
      assert.match(err.message, why);
      return true;
    }, `${JSON.stringify(wire)} at step ${step}`);
  }
}

Deno.test("bad chunk sizes are refused", () => {
  for (const size of ["z", "", "-1", "0x5", " 5", "+5", "5.0", "1234567890abc"]) {
    dechunkFails(`${size}\r\nhello\r\n0\r\n\r\n`, /invalid chunk size/);
  }
});

Deno.test("chunk data must be followed by CRLF", () => {
  dechunkFails("5\r\nhelloX\r\n0\r\n\r\n", /longer than its size/);
  dechunkFails("5\r\nhello0\r\n\r\n", /longer than its size/);
});

Deno.test("chunk framing lines must end with CRLF", () => {
  dechunkFails("5\nhello\r\n0\r\n\r\n", /CRLF/);
  dechunkFails("5\r\nhello\n0\r\n\r\n", /CRLF/);
  dechunkFails("5\r\nhello\r\n0\r\n\n", /CRLF/);
});

Deno.test("malformed trailers and endless framing lines are refused", () => {
  dechunkFails("0\r\nnot a field\r\n\r\n", /malformed trailer/);
  const decoder = new ChunkedDecoder();
  const long = latin1Bytes("1" + ";x".repeat(3000));
  assert.throws(() => decoder.advance(long, 0, long.length), /too long/);
});

Deno.test("chunk-size lines follow the RFC 9112 §7.1.1 grammar exactly", () => {
  // Accepted: BWS before ";" and around "=" (recipients must parse BWS), token and quoted
  // values, quoted-pairs, leading zeros, upper-case hex.
  for (
    const line of [
      "5",
      "05",
      "000000000000005",
      "5;a",
      "5;a=b",
      "5 ;a",
      "5\t; a =\tb",
      '5;a="b c;d"',
      '5;a="q\\"uote"',
      '5;a="\xe9"',
      "5;a=b;c;d=e",
      "5 ; a ; b = c",
    ]
  ) {
    assert.equal(dechunk(`${line}\r\nhello\r\n0\r\n\r\n`).body, "hello", JSON.stringify(line));
  }
  const refused: [string, RegExp][] = [
    ["5 ", /whitespace at the end/],
    ["5\t", /whitespace at the end/],
    ["5;a ", /whitespace at the end/],
    ["5;a=b ", /whitespace at the end/],
    ["5;", /extension name/],
    ["5; ", /extension name/],
    ["5;;a", /extension name/],
    ["5;=b", /extension name/],
    ["5;a=", /extension value/],
    ["5;a=b c", /invalid chunk extension/],
    ["5;a b", /invalid chunk extension/],
    ["5;a@b", /invalid chunk extension/],
    ["5;a=b@", /invalid chunk extension/],
    ['5;a="b', /unterminated quoted/],
    ['5;a="b\0"', /extension value/],
    ['5;a="b\x7f"', /extension value/],
    ["5\0", /invalid chunk size/],
    ["5;a\0", /invalid chunk extension/],
    ["5\r;a", /invalid chunk size/],
    ["5;a\rb", /invalid chunk extension/],
    ["1000000000000", /invalid chunk size/],
  ];
  for (const [line, why] of refused) dechunkFails(`${line}\r\nhello\r\n0\r\n\r\n`, why);
});

Deno.test("trailer fields must be well-formed, and the trailer section is bounded", () => {
  dechunkFails("0\r\nX A: 1\r\n\r\n", /malformed trailer/);
  dechunkFails("0\r\n: 1\r\n\r\n", /malformed trailer/);
  dechunkFails("0\r\nX-A: 1\0\r\n\r\n", /malformed trailer/);
  dechunkFails("0\r\nX-A: 1\rb\r\n\r\n", /malformed trailer/);
  const good = "0\r\nX-A:\r\nX-B: \t\xe9 v\r\n\r\n";
  assert.equal(dechunk(good).used, good.length);
  // Many small trailer lines add up: refused past the limit even with every line short.
  const decoder = new ChunkedDecoder(100);
  const wire = latin1Bytes("0\r\n" + "X-A: 0123456789\r\n".repeat(10));
  assert.throws(() => decoder.advance(wire, 0, wire.length), /trailer section too large/);
  const slow = new ChunkedDecoder(100);
  const partial = latin1Bytes("0\r\nX-A: " + "v".repeat(200));
  assert.throws(() => slow.advance(partial, 0, partial.length), /trailer section too large/);
});

Deno.test("the chunked decoder never reads past `end`, whatever lies beyond", () => {
  const wire = latin1Bytes("5\r\nhello\r\n0\r\n\r\n");
  const decoder = new ChunkedDecoder();
  // Cut just before the LF of the size line: the bytes after `end` are not looked at.
  assert.equal(decoder.advance(wire, 0, 2), 0);
  assert.equal(decoder.remaining, 0);
  assert.equal(decoder.advance(wire, 0, 3), 3);
  assert.equal(decoder.remaining, 5);
});

Deno.test("latin1Bytes and latin1String map each byte to one character and back", () => {
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  const text = latin1String(all);
  assert.equal(text.length, 256);
  assert.equal(text, String.fromCharCode(...all));
  assert.deepEqual(latin1Bytes(text), all);
  // Not UTF-8: the two bytes of "é" in UTF-8 stay two characters.
  assert.equal(latin1String(new Uint8Array([0xc3, 0xa9])), "\xc3\xa9");
  assert.deepEqual(latin1Bytes("caf\xe9"), new Uint8Array([0x63, 0x61, 0x66, 0xe9]));
  assert.equal(latin1String(latin1Bytes("plain ascii")), "plain ascii");
  const big = new Uint8Array(10_000).map((_, i) => 0x80 + (i % 128));
  assert.deepEqual(latin1Bytes(latin1String(big)), big);
});

Deno.test("connectionTokens lists the lower-cased names a Connection header gives", () => {
  assert.equal(connectionTokens(null), undefined);
  assert.equal(connectionTokens(""), undefined);
  assert.deepEqual(
    connectionTokens("Close, X-Foo ,, keep-alive"),
    new Set(["close", "x-foo", "keep-alive"]),
  );
});
