/** lib/tls/certificates.ts against certificates made by openssl from a throwaway CA. */
import assert from "node:assert/strict";
import {
  loadCertificates,
  nameMatches,
  resolvePath,
  selectCertificate,
} from "../lib/tls/certificates.ts";
import { createTestCa, type TestCa } from "./tls_helpers.ts";

let ca: TestCa;
const setup = (async () => {
  ca = await createTestCa();
  await ca.issue("example", { sans: ["example.com", "www.example.com"] });
  await ca.issue("wild", { sans: ["*.apps.example.com", "apps.example.com"] });
  await ca.issue("cnonly", { cn: "legacy.example.org" });
  await ca.issue("expired", { sans: ["old.example.com"], expired: true });
  await ca.issue("mismatch", { sans: ["bad.example.com"], mismatchedKey: true });
  await ca.issue("rsa", { sans: ["rsa.example.com"], keyType: "rsa" });
})();

Deno.test("certificates: relative paths resolve against the base folder, names come from SAN", async () => {
  await setup;
  const result = loadCertificates([
    { cert: "example.pem", key: "example.key" },
    { cert: `${ca.dir}/wild.pem`, key: "wild.key" },
    { cert: "rsa.pem", key: "rsa.key" },
  ], { baseDir: ca.dir, field: "listen[1].tls.certificates" });
  assert.deepEqual(result.problems, []);
  assert.deepEqual(result.warnings, []);
  assert.equal(result.certificates.length, 3);
  assert.deepEqual(result.certificates[0].names, ["example.com", "www.example.com"]);
  assert.deepEqual(result.certificates[1].names, ["*.apps.example.com", "apps.example.com"]);
  assert.equal(result.certificates[0].certFile, `${ca.dir}/example.pem`);
  assert.match(result.certificates[0].cert, /BEGIN CERTIFICATE/);
  assert.match(result.certificates[0].key, /PRIVATE KEY/);
  assert.ok(result.certificates[0].notAfter.getTime() > Date.now());
});

Deno.test("certificates: the subject CN is the name only when there is no SAN", async () => {
  await setup;
  const result = loadCertificates([{ cert: "cnonly.pem", key: "cnonly.key" }], {
    baseDir: ca.dir,
  });
  assert.deepEqual(result.problems, []);
  assert.deepEqual(result.certificates[0].names, ["legacy.example.org"]);
});

Deno.test("certificates: every problem is reported at once as field: reason lines", async () => {
  await setup;
  await Deno.writeTextFile(`${ca.dir}/garbage.pem`, "hello, not a certificate\n");
  await Deno.writeTextFile(
    `${ca.dir}/broken.pem`,
    "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
  );
  const result = loadCertificates([
    { cert: "example.pem", key: "example.key" },
    { cert: "missing.pem", key: "missing.key" },
    { cert: "garbage.pem", key: "example.pem" },
    { cert: "mismatch.pem", key: "mismatch.key" },
    { cert: "broken.pem", key: "example.key" },
    { cert: ".", key: "example.key" },
  ], { baseDir: ca.dir, field: "listen[1].tls.certificates" });
  const f = "listen[1].tls.certificates";
  assert.equal(result.certificates.length, 0, "one bad certificate makes the list unusable");
  const expect = [
    `${f}[1].cert: cannot read: no such file`,
    `${f}[1].key: cannot read: no such file`,
    `${f}[2].cert: not a PEM certificate`,
    `${f}[2].key: not a PEM private key`,
    `${f}[3].key: does not match the certificate`,
    `${f}[4].cert: cannot parse the certificate`,
    `${f}[5].cert: cannot read: is a directory`,
  ];
  for (const line of expect) {
    assert.ok(
      result.problems.some((p) => p.startsWith(line)),
      `missing "${line}" in:\n${result.problems.join("\n")}`,
    );
  }
  assert.equal(result.problems.length, expect.length, result.problems.join("\n"));
  assert.ok(!result.problems.some((p) => p.startsWith(`${f}[0]`)));
});

Deno.test("certificates: an empty list is a problem; expired is a warning, not a problem", async () => {
  await setup;
  assert.deepEqual(loadCertificates([], { field: "tls.certificates" }).problems, [
    "tls.certificates: at least one certificate is required",
  ]);
  const result = loadCertificates([{ cert: "expired.pem", key: "expired.key" }], {
    baseDir: ca.dir,
    field: "c",
  });
  assert.deepEqual(result.problems, []);
  assert.equal(result.certificates.length, 1);
  assert.equal(result.warnings.length, 1);
  assert.match(result.warnings[0], /^c\[0\]\.cert: expired on \d{4}-/);
});

Deno.test("certificates: an encrypted key is refused with a reason", async () => {
  await setup;
  const out = await new Deno.Command("openssl", {
    args: [
      "pkcs8",
      "-topk8",
      "-in",
      "example.key",
      "-out",
      "encrypted.key",
      "-passout",
      "pass:secret",
    ],
    cwd: ca.dir,
    stderr: "null",
  }).output();
  assert.ok(out.success);
  const result = loadCertificates([{ cert: "example.pem", key: "encrypted.key" }], {
    baseDir: ca.dir,
    field: "c",
  });
  assert.deepEqual(result.problems, ["c[0].key: encrypted private keys are not supported"]);
});

Deno.test("certificates: selection by SNI — exact, RFC 6125 wildcard of one label, default", () => {
  const a = { id: "a", names: ["example.com", "www.example.com"] };
  const w = { id: "w", names: ["*.apps.example.com", "apps.example.com"] };
  const x = { id: "x", names: ["x.apps.example.com"] };
  const list = [a, w, x];
  const pick = (name: string | undefined) => selectCertificate(list, name).id;
  assert.equal(pick("example.com"), "a");
  assert.equal(pick("WWW.Example.COM"), "a", "case-insensitive");
  assert.equal(pick("www.example.com."), "a", "trailing dot");
  assert.equal(pick("api.apps.example.com"), "w", "wildcard covers one label");
  assert.equal(pick("apps.example.com"), "w");
  assert.equal(pick("x.apps.example.com"), "x", "an exact name beats an earlier wildcard");
  assert.equal(pick("a.b.apps.example.com"), "a", "wildcard never covers two labels");
  assert.equal(pick("unknown.test"), "a", "no match: the first certificate");
  assert.equal(pick(undefined), "a", "no SNI: the first certificate");
  assert.equal(pick(""), "a");
  const tld = [{ id: "d", names: ["d.test"] }, { id: "c", names: ["*.com"] }];
  assert.equal(selectCertificate(tld, "x.com").id, "d", "*.com never matches");
});

Deno.test("certificates: nameMatches follows RFC 6125 for single names", () => {
  assert.ok(nameMatches("*.example.com", "a.example.com"));
  assert.ok(nameMatches("*.Example.com", "A.EXAMPLE.COM."));
  assert.ok(!nameMatches("*.example.com", "example.com"));
  assert.ok(!nameMatches("*.example.com", "a.b.example.com"));
  assert.ok(!nameMatches("*.com", "example.com"), "no wildcard over a public suffix label alone");
  assert.ok(nameMatches("example.com", "EXAMPLE.com"));
  assert.ok(!nameMatches("example.com", "www.example.com"));
  assert.equal(resolvePath("/etc/sluice", "certs/a.pem"), "/etc/sluice/certs/a.pem");
  assert.equal(resolvePath("/etc/sluice", "/abs/a.pem"), "/abs/a.pem");
});

Deno.test("certificates: loaded PEM is accepted by Deno.listenTls and served", async () => {
  await setup;
  const { certificates } = loadCertificates([{ cert: "example.pem", key: "example.key" }], {
    baseDir: ca.dir,
  });
  const listener = Deno.listenTls({ hostname: "127.0.0.1", port: 0, ...certificates[0] });
  try {
    const port = (listener.addr as Deno.NetAddr).port;
    const accepted = listener.accept().then(async (conn) => {
      await conn.handshake();
      conn.close();
    });
    const client = await Deno.connectTls(
      {
        hostname: "127.0.0.1",
        port,
        caCerts: [ca.caCert],
        [Symbol.for("unstableServerName")]: "www.example.com",
      } as Deno.ConnectTlsOptions,
    );
    await client.handshake();
    client.close();
    await accepted;
  } finally {
    listener.close();
  }
});

Deno.test("certificates: clean up the throwaway CA", async () => {
  await setup;
  await ca.cleanup();
});
