// KilnError: every failure Kiln reports on purpose. `code` is stable and machine-readable
// (tests and callers check it, not the message); `where` names the thing at fault
// (a file, a tensor, an op, a model source location) when there is one.

export type KilnErrorCode =
  | "E_SAFETENSORS" // malformed or inconsistent safetensors file / index
  | "E_IO" // a file could not be read or written
  | "E_CONFIG" // a config.json value is missing or unsupported
  | "E_SHAPE" // shapes do not fit (tracing, verifier)
  | "E_DTYPE" // dtypes do not fit, or an unsupported dtype
  | "E_VERIFY" // the IR is malformed
  | "E_PARSE" // the IR text form could not be parsed
  | "E_INTERP" // the reference interpreter was given bad inputs
  | "E_WEIGHTS" // weights missing, unexpected or mis-shaped against a graph
  | "E_MODEL" // a model file could not be loaded or type-checked
  | "E_PASS" // a pass failed or broke the graph
  | "E_BUILD" // generating or compiling an artifact failed (the C++/CUDA compiler's message is included)
  | "E_ARTIFACT" // an artifact folder is missing, incomplete, or from another Kiln / ABI version
  | "E_RUNTIME" // a model run failed (bad values, out of memory, device errors)
  | "E_USAGE"; // bad command line / API arguments

export class KilnError extends Error {
  readonly code: KilnErrorCode;
  readonly where?: string;
  constructor(code: KilnErrorCode, message: string, options: { where?: string; cause?: unknown } = {}) {
    super(options.where ? `${options.where}: ${message}` : message, { cause: options.cause });
    this.name = "KilnError";
    this.code = code;
    this.where = options.where;
  }
}

export function isKilnError(e: unknown, code?: KilnErrorCode): e is KilnError {
  return e instanceof KilnError && (code === undefined || e.code === code);
}
