/** How an upstream exchange can fail. */

/** Why an upstream exchange failed; decides the status the client gets and whether to retry. */
export type UpstreamFailure =
  | "connect" // could not open a connection (refused, unreachable, connect timeout)
  | "reset" // the connection broke after it was opened
  | "timeout" // no response head within timeouts.response
  | "protocol"; // the backend sent something that is not valid HTTP/1.1

/** An upstream failure with its kind, whether request bytes reached the wire, and the cause. */
export class UpstreamError extends Error {
  constructor(
    readonly kind: UpstreamFailure,
    message: string,
    /** True once any byte of the request was written to the backend. */
    readonly sent: boolean,
  ) {
    super(message);
    this.name = "UpstreamError";
  }
}
