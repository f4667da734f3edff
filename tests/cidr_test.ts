/** CIDR parsing and matching: IPv4, IPv6, IPv4-mapped IPv6, and clear errors for bad input. */
import assert from "node:assert/strict";
import { cidrMatcher, formatIp, isIp, parseCidr, parseIp } from "../lib/cidr.ts";

Deno.test("IPv4 ranges match their addresses and nothing else", () => {
  const inTen = cidrMatcher(["10.0.0.0/8"]);
  for (const ip of ["10.0.0.0", "10.0.0.1", "10.255.255.255", "10.1.2.3"]) assert.ok(inTen(ip), ip);
  for (const ip of ["11.0.0.0", "9.255.255.255", "110.0.0.1", "1.10.0.0"]) {
    assert.ok(!inTen(ip), ip);
  }
  const m = cidrMatcher(["192.168.1.0/24", "172.16.0.0/12", "203.0.113.7"]);
  assert.ok(m("192.168.1.200"));
  assert.ok(!m("192.168.2.1"));
  assert.ok(m("172.31.255.255"));
  assert.ok(!m("172.32.0.0"));
  assert.ok(m("203.0.113.7"), "a bare address is a /32");
  assert.ok(!m("203.0.113.8"));
  assert.ok(cidrMatcher(["0.0.0.0/0"])("8.8.8.8"));
  assert.ok(!cidrMatcher(["0.0.0.0/0"])("2001:db8::1"), "an IPv4 /0 is every IPv4 address only");
});

Deno.test("IPv6 ranges, :: forms, and embedded IPv4", () => {
  const m = cidrMatcher(["2001:db8::/32", "::1", "fe80::/10"]);
  assert.ok(m("2001:db8::1"));
  assert.ok(m("2001:0DB8:ffff:ffff:ffff:ffff:ffff:ffff"), "upper case and leading zeros");
  assert.ok(!m("2001:db9::1"));
  assert.ok(m("::1"));
  assert.ok(m("0:0:0:0:0:0:0:1"));
  assert.ok(!m("::2"));
  assert.ok(m("fe80::1"));
  assert.ok(m("febf:ffff::1"));
  assert.ok(!m("fec0::1"));
  assert.ok(cidrMatcher(["::/0"])("1.2.3.4"), "::/0 is every address");
  assert.ok(cidrMatcher(["::/128"])("::"));
  assert.ok(cidrMatcher(["64:ff9b::/96"])("64:ff9b::192.0.2.33"));
});

Deno.test("IPv4-mapped IPv6 addresses match IPv4 ranges, and the other way round", () => {
  const ten = cidrMatcher(["10.0.0.0/8"]);
  assert.ok(ten("::ffff:10.0.0.1"));
  assert.ok(ten("::FFFF:a00:1"), "hex form of ::ffff:10.0.0.1");
  assert.ok(ten("0:0:0:0:0:ffff:10.1.2.3"));
  assert.ok(!ten("::ffff:11.0.0.1"));
  assert.ok(!ten("::10.0.0.1"), "an IPv4-compatible address is not IPv4-mapped");
  assert.ok(cidrMatcher(["::ffff:10.0.0.0/104"])("10.9.9.9"));
});

Deno.test("anything that is not an address matches nothing", () => {
  const all = cidrMatcher(["0.0.0.0/0", "::/0"]);
  for (
    const bad of [
      "",
      "unknown",
      "localhost",
      "1.2.3",
      "1.2.3.4.5",
      "1.2.3.256",
      "01.2.3.4",
      "1.2.3.4 ",
      " 1.2.3.4",
      "1.2.3.4:80",
      "[::1]",
      ":::",
      "1::2::3",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7",
      "12345::1",
      "::g",
      "1:",
      ":1",
      "fe80::1%eth0",
      "::ffff:1.2.3",
      "1:2:3:4:5:6:7:1.2.3.4",
    ]
  ) {
    assert.ok(!all(bad), JSON.stringify(bad));
    assert.ok(!isIp(bad), JSON.stringify(bad));
  }
  assert.equal(cidrMatcher([])("127.0.0.1"), false, "an empty list trusts nobody");
});

Deno.test("parseCidr says what is wrong", () => {
  const cases: [string, RegExp][] = [
    ["10.0.0.0/33", /prefix length must be 0-32 for IPv4/],
    ["::/129", /prefix length must be 0-128 for IPv6/],
    ["10.0.0.0/", /prefix length/],
    ["10.0.0.0/08", /prefix length/],
    ["10.0.0.0/-1", /prefix length/],
    ["10.0.0.0/8/8", /prefix length/],
    ["10.0.0.256/8", /"10.0.0.256" is not an IPv4 or IPv6 address/],
    ["example.com/24", /not an IPv4 or IPv6 address/],
    ["fe80::1%eth0/64", /zones are not supported/],
    ["10.0.0.1/8", /bits set past the \/8 prefix \(did you mean 10.0.0.0\/8\?\)/],
    ["2001:db8::1/32", /did you mean 2001:db8::\/32\?/],
  ];
  for (const [text, why] of cases) {
    assert.throws(() => parseCidr(text), (err: Error) => {
      assert.match(err.message, why, text);
      assert.match(err.message, new RegExp(`invalid CIDR "${text.replace(/[/.*]/g, "\\$&")}"`));
      return true;
    }, text);
  }
  assert.throws(() => cidrMatcher(["10.0.0.0/8", "bogus"]), /invalid CIDR "bogus"/);
  assert.deepEqual(
    [parseCidr("10.0.0.0/8").prefix, parseCidr("10.0.0.0/8").v4],
    [104, true],
  );
  assert.equal(parseCidr("::1").prefix, 128);
});

Deno.test("formatIp: dotted quads and RFC 5952 IPv6", () => {
  const cases: [string, string][] = [
    ["1.2.3.4", "1.2.3.4"],
    ["::", "::"],
    ["::1", "::1"],
    ["2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["1:0:0:2:0:0:0:3", "1:0:0:2::3"],
    ["fe80::", "fe80::"],
    ["::ffff:10.0.0.1", "10.0.0.1"],
  ];
  for (const [text, want] of cases) assert.equal(formatIp(parseIp(text).words), want, text);
  assert.equal(formatIp(parseIp("10.0.0.1").words, true), "::ffff:10.0.0.1");
  assert.throws(() => parseIp("nope"), /"nope" is not an IPv4 or IPv6 address/);
});

Deno.test("a matcher call is cheap: a million checks well under a second", () => {
  const m = cidrMatcher(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]);
  const ips = ["192.168.3.4", "203.0.113.9", "2001:db8::1", "::ffff:10.1.1.1"];
  let hits = 0;
  const start = performance.now();
  for (let i = 0; i < 1_000_000; i++) if (m(ips[i & 3])) hits++;
  const ms = performance.now() - start;
  assert.equal(hits, 500_000);
  // Generous for a busy shared machine; typically ~50 ms.
  assert.ok(ms < 2_000, `${ms} ms`);
});
