// Error and header shapes shared by run.mjs and the cases.

// What a test checks of an error: its class chain (RateLimitError < APIError < ...) and the
// fields the three SDKs put on it.
export function describeError(err) {
  if (!(err instanceof Error)) return { classes: [], message: String(err) };
  const classes = [];
  for (let proto = Object.getPrototypeOf(err); proto && proto !== Object.prototype;
    proto = Object.getPrototypeOf(proto)) {
    classes.push(proto.constructor.name);
  }
  const out = { classes, name: err.name, message: err.message };
  for (const field of ['status', 'statusCode', 'code', 'type', 'param', 'isRetryable',
    'reason', 'requestID', 'error', 'responseBody']) {
    if (err[field] !== undefined) out[field] = err[field];
  }
  const headers = err.headers ?? err.responseHeaders;
  if (headers) out.headers = plainHeaders(headers);
  if (err.lastError) out.lastError = describeError(err.lastError);
  if (Array.isArray(err.errors)) out.attempts = err.errors.length;
  return out;
}

export function plainHeaders(headers) {
  const entries = typeof headers.entries === 'function' ? headers.entries()
    : Object.entries(headers);
  return Object.fromEntries([...entries].map(([k, v]) => [k.toLowerCase(), v]));
}
