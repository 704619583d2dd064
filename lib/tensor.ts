/**
 * Tensor: dtype, shape and device over an owned native buffer.
 *
 * f16/bf16 data are given and read back as Uint16Array bit patterns, or
 * converted from/to Float32Array (round to nearest even, NaN and Inf kept).
 * Device memory is not seen by the garbage collector: call dispose() (or use
 * `using t = ...`); the finalizer only catches what was forgotten.
 */
import { ArgumentError, DTypeError, DisposedError, ShapeError, show } from './errors';
import { native, NativeTensorHandle } from './native';

export type DType = 'f32' | 'f16' | 'bf16' | 'i32';
export type Device = 'cpu' | `cuda:${number}` | 'cuda';
export type TensorData = Float32Array | Uint16Array | Int32Array | readonly number[];

export interface TensorOptions {
  /** Storage dtype. Default: f32 for Float32Array/number[], i32 for Int32Array; required for Uint16Array. */
  dtype?: DType;
  /** 'cpu' (default) or 'cuda:N'. */
  device?: string;
}

export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32'];
const MAX_RANK = 8;

export function checkShape(shape: unknown, what = 'shape'): number[] {
  if (!Array.isArray(shape)) throw new ShapeError(`${what} must be an array of non-negative integers`);
  if (shape.length > MAX_RANK) throw new ShapeError(`${what} has ${shape.length} dimensions; at most ${MAX_RANK} are supported`);
  return shape.map((d, i) => {
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0 || d >= 2 ** 31)
      throw new ShapeError(`${what}[${i}] = ${show(d)}: expected an integer in [0, 2^31)`);
    return d;
  });
}

export function checkDType(dtype: unknown, what = 'dtype'): DType {
  if (typeof dtype !== 'string' || !(DTYPES as readonly string[]).includes(dtype))
    throw new DTypeError(`${what}: unknown dtype '${show(dtype)}' (expected one of ${DTYPES.join(', ')})`);
  return dtype as DType;
}

/**
 * The kind of a typed array, by its tag rather than instanceof: arrays made in
 * another realm (a vm context, a test runner's sandbox, the addon) still count.
 */
function typedKind(x: unknown): 'Float32Array' | 'Uint16Array' | 'Int32Array' | null {
  if (!ArrayBuffer.isView(x)) return null;
  const tag = Object.prototype.toString.call(x).slice(8, -1);
  return tag === 'Float32Array' || tag === 'Uint16Array' || tag === 'Int32Array' ? tag : null;
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export class Tensor {
  /** @internal the native object; ops pass it to the addon. */
  readonly handle: NativeTensorHandle;

  private constructor(handle: NativeTensorHandle) {
    this.handle = handle;
  }

  /** @internal wraps a handle made by native code. */
  static fromHandle(handle: NativeTensorHandle): Tensor {
    return new Tensor(handle);
  }

  /** A tensor holding a copy of `data` (converted to `dtype` when it differs). */
  static from(data: TensorData, shape: readonly number[], options: TensorOptions = {}): Tensor {
    if (options === null || typeof options !== 'object') throw new ArgumentError('Tensor.from: options must be an object');
    const dims = checkShape(shape);
    let src: Float32Array | Uint16Array | Int32Array;
    let kind = typedKind(data);
    if (Array.isArray(data)) {
      if (!data.every((x) => typeof x === 'number')) throw new ArgumentError('Tensor.from: a number[] must hold numbers only');
      src = Float32Array.from(data as number[]);
      kind = 'Float32Array';
    } else if (kind) {
      src = data as Float32Array | Uint16Array | Int32Array;
    } else {
      throw new ArgumentError('Tensor.from: data must be a Float32Array, Uint16Array (f16/bf16 bits), Int32Array or number[]');
    }
    let dtype: DType;
    if (options.dtype !== undefined) dtype = checkDType(options.dtype);
    else if (kind === 'Int32Array') dtype = 'i32';
    else if (kind === 'Uint16Array')
      throw new DTypeError("Tensor.from: a Uint16Array holds f16 or bf16 bits; say which with { dtype: 'f16' | 'bf16' }");
    else dtype = 'f32';
    const ok =
      (kind === 'Float32Array' && dtype !== 'i32') ||
      (kind === 'Uint16Array' && (dtype === 'f16' || dtype === 'bf16')) ||
      (kind === 'Int32Array' && dtype === 'i32');
    if (!ok) throw new DTypeError(`Tensor.from: a ${kind} cannot hold dtype '${dtype}'`);
    if (src.length !== numel(dims))
      throw new ShapeError(`Tensor.from: data has ${src.length} elements but shape [${dims.join(', ')}] needs ${numel(dims)}`);
    return new Tensor(new native.NativeTensor(src, dims, dtype, options.device ?? 'cpu'));
  }

  /** A zero-filled tensor. */
  static zeros(shape: readonly number[], options: TensorOptions = {}): Tensor {
    const dims = checkShape(shape);
    const dtype = checkDType(options.dtype ?? 'f32');
    return new Tensor(new native.NativeTensor(null, dims, dtype, options.device ?? 'cpu'));
  }

  get shape(): number[] {
    return this.handle.shape;
  }
  get dtype(): DType {
    return this.handle.dtype as DType;
  }
  get device(): string {
    return this.handle.device;
  }
  /** Bytes held (0 once disposed). */
  get nbytes(): number {
    return this.handle.nbytes;
  }
  get disposed(): boolean {
    return this.handle.disposed;
  }
  get numel(): number {
    return numel(this.handle.shape);
  }

  /** The data as stored: Float32Array (f32), Uint16Array bits (f16, bf16), Int32Array (i32). */
  toArray(): Float32Array | Uint16Array | Int32Array {
    return this.handle.toArray();
  }
  /**
   * The data converted to f32: a new array, or written into the first numel
   * values of `into` (which is returned) so a loop can reuse one buffer.
   */
  toFloat32(into?: Float32Array): Float32Array {
    return this.handle.toFloat32(into);
  }
  /**
   * Overwrites the first `src.length` elements in place from a typed array of
   * the storage type (Float32Array for f32, Int32Array for i32, Uint16Array
   * bits for f16/bf16); returns this. For buffers refilled every step.
   */
  write(src: Float32Array | Int32Array | Uint16Array): this {
    this.handle.write(src);
    return this;
  }
  /** A copy on another device. */
  to(device: string): Tensor {
    return new Tensor(this.handle.to(device));
  }
  /** Frees the memory now. Idempotent; later use throws KVSQ_DISPOSED. */
  dispose(): void {
    this.handle.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal throws KVSQ_DISPOSED when disposed. */
  assertLive(what = 'tensor'): void {
    if (this.handle.disposed) throw new DisposedError(`${what} was disposed`);
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device}${this.disposed ? ', disposed' : ''})`;
  }
}
