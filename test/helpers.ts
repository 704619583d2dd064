/** Small helpers shared by the jest suites (fresh random inputs each run, typed-error checks). */
import { KvsqError } from '../lib';

export type FDType = 'f32' | 'f16' | 'bf16';

/** n uniform values in [lo, hi). */
export function rand(n: number, lo = -1, hi = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * Math.random();
  return a;
}

/** A uniform integer in [lo, hi]. */
export function randInt(lo: number, hi: number): number {
  return lo + Math.floor(Math.random() * (hi - lo + 1));
}

/** fn throws a KvsqError with this code. */
export function expectCode(fn: () => unknown, code: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(KvsqError);
  expect((err as KvsqError).code).toBe(code);
}
