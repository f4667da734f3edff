/**
 * Throwaway certificates for tests, made with openssl at test time in a temp dir: a test CA and
 * leaf certificates signed by it with given names, optionally expired or paired with the wrong
 * key. Nothing here is ever committed or trusted outside the test that made it.
 */

/** A PEM certificate and key, on disk and in memory. */
export interface TestCert {
  certFile: string;
  keyFile: string;
  cert: string;
  key: string;
}

/** Options of {@linkcode TestCa.issue}. */
export interface IssueOptions {
  /** DNS names (or `IP:1.2.3.4`) for subjectAltName; none makes a CN-only certificate. @default [] */
  sans?: string[];
  /** Subject CN. @default the first SAN, or the file name */
  cn?: string;
  /** Already expired (notAfter a day before notBefore, both around now). @default false */
  expired?: boolean;
  /** Write a different, freshly generated key next to the certificate. @default false */
  mismatchedKey?: boolean;
  /** Key algorithm. @default "ec" (P-256, fast) */
  keyType?: "ec" | "rsa";
}

/** A throwaway CA in a temp dir. */
export interface TestCa {
  readonly dir: string;
  /** The CA certificate file and its PEM text (what clients trust). */
  readonly caFile: string;
  readonly caCert: string;
  /** Issues a leaf certificate `<name>.pem` with key `<name>.key` in `dir`. */
  issue(name: string, options?: IssueOptions): Promise<TestCert>;
  /** Removes the temp dir. */
  cleanup(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Runs openssl; throws with its stderr when it fails. */
export async function openssl(args: string[], cwd?: string): Promise<string> {
  const out = await new Deno.Command("openssl", { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`openssl ${args[0]} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

function keyArgs(type: "ec" | "rsa"): string[] {
  return type === "ec"
    ? ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    : ["-newkey", "rsa:2048"];
}

let serial = Date.now();

/** Makes a CA (EC P-256, valid 2 days) in a new temp dir, or in `dir` when given. */
export async function createTestCa(dir?: string): Promise<TestCa> {
  const root = dir ?? await Deno.makeTempDir({ prefix: "sluice-tls-" });
  await openssl([
    "req",
    "-x509",
    ...keyArgs("ec"),
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=sluice test CA",
    "-addext",
    "basicConstraints=critical,CA:true",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ], root);
  const caFile = `${root}/ca.pem`;
  const caCert = await Deno.readTextFile(caFile);
  const ca: TestCa = {
    dir: root,
    caFile,
    caCert,
    async issue(name, options = {}) {
      const sans = options.sans ?? [];
      const cn = options.cn ?? (sans.find((s) => !s.startsWith("IP:")) ?? name);
      const type = options.keyType ?? "ec";
      // A new key in NAME.key and a signing request for it.
      const request = (csr: string, subject: string) =>
        openssl([
          "req",
          ...keyArgs(type),
          "-nodes",
          "-keyout",
          `${name}.key`,
          "-out",
          csr,
          "-subj",
          `/CN=${subject}`,
        ], root);
      await request(`${name}.csr`, cn);
      const ext = ["basicConstraints=CA:false", "extendedKeyUsage=serverAuth"];
      if (sans.length) {
        ext.push(
          "subjectAltName=" + sans.map((s) => s.startsWith("IP:") ? s : `DNS:${s}`).join(","),
        );
      }
      await Deno.writeTextFile(`${root}/${name}.ext`, ext.join("\n") + "\n");
      await openssl([
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        String(serial++),
        "-days",
        options.expired ? "-1" : "2",
        "-extfile",
        `${name}.ext`,
        "-out",
        `${name}.pem`,
      ], root);
      // Another key replaces the certificate's own.
      if (options.mismatchedKey) await request(`${name}.other.csr`, "other");
      const certFile = `${root}/${name}.pem`;
      const keyFile = `${root}/${name}.key`;
      return {
        certFile,
        keyFile,
        cert: await Deno.readTextFile(certFile),
        key: await Deno.readTextFile(keyFile),
      };
    },
    cleanup: () => dir ? Promise.resolve() : Deno.remove(root, { recursive: true }),
    [Symbol.asyncDispose]() {
      return this.cleanup();
    },
  };
  return ca;
}

/** What `openssl s_client` saw: the served certificate's subject CN, TLS version, ALPN. */
export interface HandshakeSeen {
  ok: boolean;
  cn: string | undefined;
  version: string | undefined;
  alpn: string | undefined;
  /** The whole s_client output, for failure messages. */
  output: string;
}

/**
 * Connects with `openssl s_client` to 127.0.0.1:`port`: `serverName` as SNI (undefined sends
 * none), optional ALPN list and TLS version flag (`-tls1_2`, `-tls1_3`).
 */
export async function sClient(
  port: number,
  options: { serverName?: string; alpn?: string[]; version?: "-tls1_2" | "-tls1_3"; ca?: string } =
    {},
): Promise<HandshakeSeen> {
  const args = ["s_client", "-connect", `127.0.0.1:${port}`];
  if (options.serverName !== undefined) args.push("-servername", options.serverName);
  else args.push("-noservername");
  if (options.alpn) args.push("-alpn", options.alpn.join(","));
  if (options.version) args.push(options.version);
  if (options.ca) args.push("-CAfile", options.ca);
  const child = new Deno.Command("openssl", {
    args,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  await child.stdin.close();
  const out = await child.output();
  const output = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  const cn = output.match(/^subject=.*?CN ?= ?([^,\n/]+)/m)?.[1]?.trim();
  const version = output.match(/New, (TLSv[\d.]+), Cipher/)?.[1];
  const alpn = output.match(/ALPN protocol: (\S+)/)?.[1];
  return { ok: version !== undefined, cn, version, alpn, output };
}
