/**
 * TLS certificates for listeners: PEM certificate and key files loaded and checked (readable,
 * PEM, key matches certificate), the names each certificate answers for (SAN DNS names, else
 * the subject CN), and the choice of certificate for a TLS server name (RFC 6125 wildcards).
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { isAbsolute, join } from "node:path";

/** One certificate as configured: file paths, relative ones against the config file's folder. */
export interface CertificateFiles {
  cert: string;
  key: string;
}

/** A certificate ready for `Deno.listenTls`. */
export interface LoadedCertificate {
  /** Resolved paths. */
  certFile: string;
  keyFile: string;
  /** PEM text: the certificate (chain) and its private key. */
  cert: string;
  key: string;
  /** Lower-case DNS names it covers (SAN DNS entries, else the subject CN); `*.` wildcards kept. */
  names: string[];
  /** End of validity. */
  notAfter: Date;
}

/** Options of {@linkcode loadCertificates}. */
export interface LoadOptions {
  /** Folder relative paths resolve against (the config file's). @default Deno.cwd() */
  baseDir?: string;
  /** Config path of the list, for messages, e.g. `listen[1].tls.certificates`. @default "certificates" */
  field?: string;
  /** The time validity is judged at. @default now */
  now?: Date;
}

/** What {@linkcode loadCertificates} found. */
export interface LoadResult {
  /** Every certificate that loaded cleanly, in configured order (empty when any failed). */
  certificates: LoadedCertificate[];
  /** `field: reason` lines; any makes the whole list unusable. */
  problems: string[];
  /** `field: reason` lines worth a log line but usable (expired, not yet valid, no names). */
  warnings: string[];
}

/**
 * Reads and checks every certificate and key, reporting every problem at once as
 * `listen[1].tls.certificates[0].cert: cannot read: no such file` lines. Synchronous: a few small
 * files at startup or reload, and config validation is synchronous.
 */
export function loadCertificates(
  files: readonly CertificateFiles[],
  options: LoadOptions = {},
): LoadResult {
  const baseDir = options.baseDir ?? Deno.cwd();
  const field = options.field ?? "certificates";
  const now = options.now ?? new Date();
  const problems: string[] = [];
  const warnings: string[] = [];
  const certificates: LoadedCertificate[] = [];
  if (files.length === 0) problems.push(`${field}: at least one certificate is required`);
  files.forEach((entry, i) => {
    const at = `${field}[${i}]`;
    const certFile = resolvePath(baseDir, entry.cert);
    const keyFile = resolvePath(baseDir, entry.key);
    const certText = readText(certFile, `${at}.cert`, problems);
    const keyText = readText(keyFile, `${at}.key`, problems);
    let x509: X509Certificate | undefined;
    if (certText !== undefined) {
      if (!certText.includes("-----BEGIN CERTIFICATE-----")) {
        problems.push(`${at}.cert: not a PEM certificate (no BEGIN CERTIFICATE block)`);
      } else {
        try {
          x509 = new X509Certificate(certText);
        } catch (err) {
          problems.push(`${at}.cert: cannot parse the certificate: ${message(err)}`);
        }
      }
    }
    let keyOk = false;
    if (keyText !== undefined) {
      if (/-----BEGIN ENCRYPTED PRIVATE KEY-----/.test(keyText)) {
        problems.push(`${at}.key: encrypted private keys are not supported`);
      } else if (!/-----BEGIN (RSA |EC )?PRIVATE KEY-----/.test(keyText)) {
        problems.push(`${at}.key: not a PEM private key (no BEGIN PRIVATE KEY block)`);
      } else {
        try {
          const key = createPrivateKey(keyText);
          keyOk = true;
          if (x509 && !x509.checkPrivateKey(key)) {
            problems.push(`${at}.key: does not match the certificate in ${entry.cert}`);
            keyOk = false;
          }
        } catch (err) {
          problems.push(`${at}.key: cannot parse the private key: ${message(err)}`);
        }
      }
    }
    if (!x509 || !keyOk) return;
    const names = certificateNames(x509);
    if (names.length === 0) {
      warnings.push(`${at}.cert: names no DNS host (only the default for unmatched names)`);
    }
    const notAfter = new Date(x509.validTo);
    if (notAfter.getTime() < now.getTime()) {
      warnings.push(`${at}.cert: expired on ${notAfter.toISOString()}`);
    } else if (new Date(x509.validFrom).getTime() > now.getTime()) {
      warnings.push(`${at}.cert: not valid before ${new Date(x509.validFrom).toISOString()}`);
    }
    certificates.push({ certFile, keyFile, cert: certText!, key: keyText!, names, notAfter });
  });
  return { certificates: problems.length ? [] : certificates, problems, warnings };
}

/** `path` against `baseDir` unless absolute. */
export function resolvePath(baseDir: string, path: string): string {
  return isAbsolute(path) ? path : join(baseDir, path);
}

/** The DNS names a certificate covers, lower-case: its SAN DNS entries, else its subject CN. */
export function certificateNames(x509: X509Certificate): string[] {
  const names: string[] = [];
  // Node's format: `DNS:a.example.com, DNS:*.b.example.com, IP Address:127.0.0.1`.
  for (const entry of (x509.subjectAltName ?? "").split(/,\s*/)) {
    if (entry.startsWith("DNS:")) names.push(entry.slice(4).replace(/^"|"$/g, "").toLowerCase());
  }
  if (names.length > 0 || x509.subjectAltName) return names;
  // No SAN at all: the CN is the name (RFC 6125 §6.4.4 fallback clients still apply).
  const cn = x509.subject.split("\n").find((line) => line.startsWith("CN="));
  return cn ? [cn.slice(3).toLowerCase()] : [];
}

/**
 * The certificate for a TLS server name (SNI): the first whose names contain it exactly, else
 * the first with a matching wildcard (`*.example.com` covers exactly one more label, RFC 6125
 * §6.4.3), else the first certificate — also for no SNI (an IP literal or an old client).
 */
export function selectCertificate<T extends { names: readonly string[] }>(
  certificates: readonly T[],
  serverName: string | undefined | null,
): T {
  if (!serverName) return certificates[0];
  let name = serverName.toLowerCase();
  if (name.endsWith(".")) name = name.slice(0, -1);
  for (const cert of certificates) if (cert.names.includes(name)) return cert;
  const dot = name.indexOf(".");
  // A wildcard never matches a bare top-level label or the empty label before the first dot.
  if (dot > 0 && name.indexOf(".", dot + 1) !== -1) {
    const wildcard = "*" + name.slice(dot);
    for (const cert of certificates) if (cert.names.includes(wildcard)) return cert;
  }
  return certificates[0];
}

/** Whether `pattern` (a certificate name, maybe `*.`-wildcarded) covers `serverName`. */
export function nameMatches(pattern: string, serverName: string): boolean {
  const name = serverName.toLowerCase().replace(/\.$/, "");
  const p = pattern.toLowerCase();
  if (!p.startsWith("*.")) return p === name;
  const dot = name.indexOf(".");
  return dot > 0 && name.slice(dot) === p.slice(1) && p.indexOf(".", 2) !== -1;
}

function readText(path: string, at: string, problems: string[]): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch (err) {
    problems.push(`${at}: cannot read: ${readReason(err)} (${path})`);
    return undefined;
  }
}

function readReason(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "no such file";
  if (err instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (err instanceof Deno.errors.IsADirectory) return "is a directory";
  if (err instanceof TypeError || err instanceof Deno.errors.InvalidData) {
    return "not text (binary or DER?)";
  }
  return message(err);
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
