/** Small helpers about addresses and URLs that several layers share. */

/** Brackets IPv6 addresses for use in a URL or a `host:port`. */
export function formatHost(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/** Whether a host name or address only listens on the loopback interface. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** Whether a listen address means "every interface". */
export function isWildcard(host: unknown): boolean {
  return host === "0.0.0.0" || host === "::" || host === "[::]";
}

/** A backend's stable id: its name, or host:port from its URL. */
export function backendId(b: { url: string; name?: string }): string {
  if (b.name) return b.name;
  const url = new URL(b.url);
  return `${formatHost(url.hostname.replace(/^\[|\]$/g, ""))}:${
    url.port || (url.protocol === "https:" ? 443 : 80)
  }`;
}
