/**
 * TCP_NODELAY for TLS listeners. `Deno.TlsConn` has no `setNoDelay` (Deno 2.9), so Nagle's
 * algorithm stays on for every TLS connection `Deno.listenTls` accepts, and with the client's
 * delayed ACK each response that leaves in more than one write waits ~40 ms (measured: 44 ms per
 * request for head + chunk writes). On Linux an accepted socket inherits TCP_NODELAY from its
 * listening socket, so setting it once on the listener fixes every connection it accepts
 * (measured: 95 us). Deno does not expose the listener's file descriptor, so this finds it with
 * libc over FFI: the listening sockets (SO_ACCEPTCONN) whose local port is `port`.
 * Needs `--allow-ffi`; without it (or off Linux) it reports why and does nothing.
 */

const SOL_SOCKET = 1;
const SO_ACCEPTCONN = 30;
const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const AF_INET = 2;
const AF_INET6 = 10;
/** Stop scanning after this many unused descriptors in a row past the last socket found. */
const GAP = 1024;

const SYMBOLS = {
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
} as const;
let libc: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;

/**
 * Sets TCP_NODELAY on every listening socket of this process bound to `port`; returns how many
 * it set, or the reason it could not.
 */
export function setListenerNoDelay(port: number): number | string {
  if (Deno.build.os !== "linux") return "only on Linux";
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return "needs --allow-ffi";
  try {
    libc ??= Deno.dlopen("libc.so.6", SYMBOLS);
  } catch (err) {
    return `cannot load libc: ${err instanceof Error ? err.message : err}`;
  }
  const { getsockopt, getsockname, setsockopt } = libc.symbols;
  const value = new Int32Array(1);
  const length = new Uint32Array(1);
  const address = new Uint8Array(128);
  const one = new Int32Array([1]);
  let set = 0;
  for (let fd = 0, unused = 0; unused < GAP; fd++) {
    length[0] = 4;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, value, length) !== 0) {
      unused++; // not a socket, or not open
      continue;
    }
    unused = 0;
    if (value[0] !== 1) continue; // a connection, not a listener
    length[0] = address.length;
    if (getsockname(fd, address, length) !== 0) continue;
    const family = address[0] | (address[1] << 8);
    if (family !== AF_INET && family !== AF_INET6) continue;
    if (((address[2] << 8) | address[3]) !== port) continue;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, one, 4) === 0) set++;
  }
  return set > 0 ? set : `no listening socket found on port ${port}`;
}
