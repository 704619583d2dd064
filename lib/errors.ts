/**
 * Typed errors. Every failure the library reports, from TypeScript checks or
 * from native code, is a KvsqError subclass with a stable `code`.
 */

export type ErrorCode =
  | 'KVSQ_ARG'
  | 'KVSQ_SHAPE'
  | 'KVSQ_DTYPE'
  | 'KVSQ_DEVICE'
  | 'KVSQ_DISPOSED'
  | 'KVSQ_RANGE'
  | 'KVSQ_OOM'
  | 'KVSQ_CUDA'
  | 'KVSQ_FORMAT'
  | 'KVSQ_NAN'
  | 'KVSQ_UNSUPPORTED'
  | 'KVSQ_STATE'
  | 'KVSQ_INTERNAL';

export class KvsqError extends Error {
  readonly code: ErrorCode;
  constructor(message: string, code: ErrorCode = 'KVSQ_INTERNAL') {
    super(message);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A value of the wrong JS type (not a Tensor, not a number, ...). */
export class ArgumentError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_ARG');
  }
}
/** Sizes inconsistent, negative, fractional or too large. */
export class ShapeError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_SHAPE');
  }
}
/** A dtype that is unknown or not accepted where it was given. */
export class DTypeError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_DTYPE');
  }
}
/** An unknown device, a device that is not there, or tensors on different devices. */
export class DeviceError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_DEVICE');
  }
}
/** A tensor, cache or sequence used after dispose()/remove(). */
export class DisposedError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_DISPOSED');
  }
}
/** An index, count or option value out of its range. */
export class KvsqRangeError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_RANGE');
  }
}
/** Host, device or page-pool memory exhausted. The operation changed nothing. */
export class OutOfMemoryError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_OOM');
  }
}
/** A CUDA runtime error; the message carries the CUDA error name. */
export class CudaError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_CUDA');
  }
}
/** A malformed file (safetensors trace, JSON options file). */
export class FormatError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_FORMAT');
  }
}
/** NaN where the contract forbids it (scores for top-k). */
export class NaNError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_NAN');
  }
}
/** Valid input, but this build cannot do it (e.g. CUDA op in a CPU-only build). */
export class UnsupportedError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_UNSUPPORTED');
  }
}
/** An operation in the wrong state (decode before prefill, a sequence of another cache). */
export class StateError extends KvsqError {
  constructor(message: string) {
    super(message, 'KVSQ_STATE');
  }
}

/** The classes by code; native code constructs errors from this table. */
export const errorClasses: Record<string, new (message: string) => KvsqError> = {
  KVSQ_ARG: ArgumentError,
  KVSQ_SHAPE: ShapeError,
  KVSQ_DTYPE: DTypeError,
  KVSQ_DEVICE: DeviceError,
  KVSQ_DISPOSED: DisposedError,
  KVSQ_RANGE: KvsqRangeError,
  KVSQ_OOM: OutOfMemoryError,
  KVSQ_CUDA: CudaError,
  KVSQ_FORMAT: FormatError,
  KVSQ_NAN: NaNError,
  KVSQ_UNSUPPORTED: UnsupportedError,
  KVSQ_STATE: StateError,
  KVSQ_INTERNAL: KvsqError,
};

/** A user value for an error message; never throws (Symbols, arrays of Symbols, revoked proxies...). */
export function show(x: unknown): string {
  try {
    if (typeof x === 'symbol') return x.toString();
    if (typeof x === 'bigint') return `${x.toString()}n`;
    if (typeof x === 'function') return 'a function';
    if (Array.isArray(x)) return `[${x.map(show).join(', ')}]`;
    return String(x);
  } catch {
    return Object.prototype.toString.call(x);
  }
}
