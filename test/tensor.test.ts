import { Tensor, backend, KvsqError, ops } from '../lib';
import { native } from '../lib/native';

// Bad inputs first: every one is a KvsqError with a code, never a crash.
describe('Tensor: invalid arguments', () => {
  const cases: [string, () => unknown, string][] = [
    ['wrong typed array type', () => Tensor.from(new Float64Array(4) as unknown as Float32Array, [4]), 'KVSQ_ARG'],
    ['Uint8Array', () => Tensor.from(new Uint8Array(4) as unknown as Uint16Array, [4], { dtype: 'f16' }), 'KVSQ_ARG'],
    ['plain object as data', () => Tensor.from({} as unknown as Float32Array, [1]), 'KVSQ_ARG'],
    ['shape product mismatch', () => Tensor.from(new Float32Array(5), [2, 3]), 'KVSQ_SHAPE'],
    ['negative dim', () => Tensor.from(new Float32Array(0), [-1]), 'KVSQ_SHAPE'],
    ['fractional dim', () => Tensor.from(new Float32Array(3), [1.5, 2]), 'KVSQ_SHAPE'],
    ['NaN dim', () => Tensor.zeros([NaN]), 'KVSQ_SHAPE'],
    ['huge dim', () => Tensor.zeros([2 ** 31]), 'KVSQ_SHAPE'],
    ['string dim', () => Tensor.zeros(['3' as unknown as number]), 'KVSQ_SHAPE'],
    ['shape not an array', () => Tensor.zeros(3 as unknown as number[]), 'KVSQ_SHAPE'],
    ['rank 9', () => Tensor.zeros([1, 1, 1, 1, 1, 1, 1, 1, 1]), 'KVSQ_SHAPE'],
    ['unknown dtype', () => Tensor.zeros([2], { dtype: 'f64' as never }), 'KVSQ_DTYPE'],
    ['Uint16Array without dtype', () => Tensor.from(new Uint16Array(2), [2]), 'KVSQ_DTYPE'],
    ['Int32Array as f32', () => Tensor.from(new Int32Array(2), [2], { dtype: 'f32' }), 'KVSQ_DTYPE'],
    ['Float32Array as i32', () => Tensor.from(new Float32Array(2), [2], { dtype: 'i32' }), 'KVSQ_DTYPE'],
    ['Uint16Array as f32', () => Tensor.from(new Uint16Array(2), [2], { dtype: 'f32' }), 'KVSQ_DTYPE'],
    ['unknown device', () => Tensor.zeros([2], { device: 'tpu:0' }), 'KVSQ_DEVICE'],
    ['malformed cuda device', () => Tensor.zeros([2], { device: 'cuda:x' }), 'KVSQ_DEVICE'],
    ['device not a string', () => Tensor.zeros([2], { device: 3 as unknown as string }), 'KVSQ_DEVICE'],
    ['larger than 1 TiB', () => Tensor.zeros([2 ** 30, 2 ** 30]), 'KVSQ_SHAPE'],
  ];
  it.each(cases)('%s', (_name, fn, code) => {
    let err: unknown;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KvsqError);
    expect((err as KvsqError).code).toBe(code);
  });

  it('a cuda device when there is none names the reason', () => {
    const info = backend.info();
    if (info.cuda.available) return; // this check is for machines without a GPU
    let err: KvsqError | undefined;
    try {
      Tensor.zeros([2], { device: 'cuda:0' });
    } catch (e) {
      err = e as KvsqError;
    }
    expect(err?.code).toBe('KVSQ_DEVICE');
    expect(err?.message).toContain(info.cuda.reason as string);
  });

  it('a disposed tensor throws KVSQ_DISPOSED everywhere, dispose is idempotent', () => {
    const t = Tensor.from(new Float32Array([1, 2]), [2]);
    t.dispose();
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(t.nbytes).toBe(0);
    for (const f of [() => t.toArray(), () => t.toFloat32(), () => t.to('cpu')]) {
      expect(f).toThrow(expect.objectContaining({ code: 'KVSQ_DISPOSED' }));
    }
  });

  it('the native constructor checks its arguments too', () => {
    // Callers that bypass Tensor.from reach the same checks in C++.
    const { native } = require('../lib/native');
    expect(() => new native.NativeTensor(new Float32Array(3), [2], 'f32')).toThrow(expect.objectContaining({ code: 'KVSQ_SHAPE' }));
    expect(() => new native.NativeTensor(new Float32Array(2), [2], 'x')).toThrow(expect.objectContaining({ code: 'KVSQ_DTYPE' }));
    expect(() => new native.NativeTensor('abc', [2], 'f32')).toThrow(expect.objectContaining({ code: 'KVSQ_ARG' }));
    expect(() => new native.NativeTensor(null, [-2], 'f32')).toThrow(expect.objectContaining({ code: 'KVSQ_SHAPE' }));
    expect(() => new native.NativeTensor(null)).toThrow(expect.objectContaining({ code: 'KVSQ_ARG' }));
  });
});

// Reference conversions in plain TypeScript (float64 arithmetic).
function f16BitsToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1024 + m) * 2 ** (e - 25);
}
function roundToF16Ref(x: number): number {
  // nearest representable half (ties to even), by search over the positive table
  if (Number.isNaN(x)) return NaN;
  const ax = Math.abs(Math.fround(x));
  const sign = Math.sign(x) || (Object.is(x, -0) ? -1 : 1);
  if (ax >= 65520) return sign * Infinity;
  let lo = 0;
  let hi = 0x7bff;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (f16BitsToNumber(mid) <= ax) lo = mid;
    else hi = mid - 1;
  }
  let best = lo;
  if (lo < 0x7bff) {
    const d0 = ax - f16BitsToNumber(lo);
    const d1 = f16BitsToNumber(lo + 1) - ax;
    if (d1 < d0 || (d1 === d0 && lo & 1)) best = lo + 1;
  }
  return sign * f16BitsToNumber(best);
}
function roundToBf16Ref(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  const lo = u[0] & 0xffff0000;
  const hi = (lo + 0x10000) >>> 0;
  const a = new Float32Array(new Uint32Array([lo]).buffer)[0];
  const b = new Float32Array(new Uint32Array([hi]).buffer)[0];
  if (!Number.isFinite(f[0])) return f[0];
  const d0 = Math.abs(f[0] - a);
  const d1 = Number.isFinite(b) ? Math.abs(b - f[0]) : Math.abs(2 ** 128 * Math.sign(f[0]) - f[0]);
  return d1 < d0 || (d1 === d0 && (lo >>> 16) & 1) ? b : a;
}

describe('Tensor: values', () => {
  const rand = (n: number, spread = 20) =>
    Float32Array.from({ length: n }, () => (Math.random() * 2 - 1) * 2 ** Math.floor(Math.random() * spread - spread / 2));

  it.each([1, 17, 1000, 4097])('f32 round trip, n=%i', (n) => {
    const x = rand(n);
    const t = Tensor.from(x, [n]);
    expect(t.shape).toEqual([n]);
    expect(t.dtype).toBe('f32');
    expect(t.device).toBe('cpu');
    expect(t.nbytes).toBe(4 * n);
    expect(t.toArray()).toEqual(x);
    t.dispose();
  });

  it.each([1, 17, 1000, 4097])('f16 conversion rounds to nearest even, n=%i', (n) => {
    const x = rand(n, 40);
    x[0] = NaN;
    if (n > 3) {
      x[1] = Infinity;
      x[2] = -Infinity;
      x[3] = 65519; // rounds down to 65504
    }
    const t = Tensor.from(x, [n], { dtype: 'f16' });
    expect(t.nbytes).toBe(2 * n);
    const back = t.toFloat32();
    for (let i = 0; i < n; i++) {
      const ref = roundToF16Ref(x[i]);
      if (Number.isNaN(ref)) expect(Number.isNaN(back[i])).toBe(true);
      else expect(back[i]).toBe(ref);
    }
    // the stored bits decode to the same values
    const bits = t.toArray() as Uint16Array;
    expect(bits.constructor.name).toBe('Uint16Array'); // jest runs tests in another realm: compare by name
    for (let i = 1; i < n; i++) expect(f16BitsToNumber(bits[i])).toBe(back[i]);
    t.dispose();
  });

  it('f16 ties go to even', () => {
    // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: even mantissa (1) wins
    const x = new Float32Array([1 + 2 ** -11, 1 + 3 * 2 ** -11, -(1 + 2 ** -11), 2 ** -25, 3 * 2 ** -25]);
    const back = Tensor.from(x, [5], { dtype: 'f16' }).toFloat32();
    expect(Array.from(back)).toEqual([1, 1 + 2 * 2 ** -10, -1, 0, 2 ** -23]);
  });

  it.each([1, 17, 1000, 4097])('bf16 conversion rounds to nearest even, n=%i', (n) => {
    const x = rand(n, 200);
    x[0] = NaN;
    const t = Tensor.from(x, [n], { dtype: 'bf16' });
    const back = t.toFloat32();
    for (let i = 0; i < n; i++) {
      const ref = roundToBf16Ref(x[i]);
      if (Number.isNaN(ref)) expect(Number.isNaN(back[i])).toBe(true);
      else expect(back[i]).toBe(ref);
    }
  });

  it('Uint16Array bits are stored as they are', () => {
    const bits = new Uint16Array([0x3c00, 0x7c00, 0xfc00, 0x7e00, 0x0001]);
    const t = Tensor.from(bits, [5], { dtype: 'f16' });
    expect(t.toArray()).toEqual(bits);
    const f = t.toFloat32();
    expect(f[0]).toBe(1);
    expect(f[1]).toBe(Infinity);
    expect(f[2]).toBe(-Infinity);
    expect(Number.isNaN(f[3])).toBe(true);
    expect(f[4]).toBe(2 ** -24);
  });

  it('i32 and zeros, empty tensors, copies', () => {
    const t = Tensor.from(new Int32Array([1, -2, 3]), [3]);
    expect(t.dtype).toBe('i32');
    expect(Array.from(t.toArray())).toEqual([1, -2, 3]);
    const z = Tensor.zeros([2, 0, 3], { dtype: 'bf16' });
    expect(z.nbytes).toBe(0);
    expect(z.toArray().length).toBe(0);
    const y = Tensor.zeros([3, 2], { dtype: 'f16' });
    expect(Array.from(y.toFloat32())).toEqual([0, 0, 0, 0, 0, 0]);
    const c = t.to('cpu');
    t.dispose();
    expect(Array.from(c.toArray())).toEqual([1, -2, 3]);
    const fromList = Tensor.from([1.5, 2.5], [1, 2]);
    expect(fromList.shape).toEqual([1, 2]);
    expect(Array.from(fromList.toArray())).toEqual([1.5, 2.5]);
  });

  it('data is copied, not aliased', () => {
    const x = new Float32Array([1, 2, 3]);
    const t = Tensor.from(x, [3]);
    x[0] = 9;
    expect(t.toArray()[0]).toBe(1);
    const out = t.toArray();
    out[1] = 7;
    expect(t.toArray()[1]).toBe(2);
  });

  it('a view into a larger buffer reads only its own elements', () => {
    const big = new Float32Array([0, 1, 2, 3, 4, 5]);
    const t = Tensor.from(big.subarray(2, 5), [3]);
    expect(Array.from(t.toArray())).toEqual([2, 3, 4]);
  });
});

describe('backend.info', () => {
  it('reports cpu features and cuda state', () => {
    const i = backend.info();
    expect(i.cpu.threads).toBeGreaterThanOrEqual(1);
    expect(typeof i.cpu.avx2).toBe('boolean');
    expect(typeof i.cuda.compiled).toBe('boolean');
    if (!i.cuda.available) {
      expect(typeof i.cuda.reason).toBe('string');
      expect(i.cuda.reason!.length).toBeGreaterThan(0);
      expect(i.cuda.devices).toEqual([]);
    }
    if (i.cuda.compiled && !i.cuda.available) {
      // error 35 (no driver) or 100 (no device) are named, not reported as failures
      expect(i.cuda.reason).toMatch(/driver|no CUDA device|cuda/i);
    }
  });
  it('decodeRowCheck (what a cuda cache asks when it is made) validates its arguments', () => {
    const check = native.decodeRowCheck.bind(native) as (...a: unknown[]) => string | null;
    expect(() => check('0', 'f32', 64)).toThrow(expect.objectContaining({ code: 'KVSQ_ARG' }));
    expect(() => check(0, 'f32')).toThrow(expect.objectContaining({ code: 'KVSQ_ARG' }));
    expect(() => check(-1, 'f32', 64)).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
    expect(() => check(0.5, 'f32', 64)).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
    expect(() => check(0, 'f32', 0)).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
    expect(() => check(0, 'f32', NaN)).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
    expect(() => check(0, 'i32', 64)).toThrow(expect.objectContaining({ code: 'KVSQ_DTYPE' }));
    expect(() => check(0, 'f64', 64)).toThrow(expect.objectContaining({ code: 'KVSQ_DTYPE' }));
    // No CUDA device here: a reason, never null (a CUDA build names the missing device).
    if (!backend.info().cuda.available) expect(typeof check(0, 'f32', 64)).toBe('string');
  });
  it('setThreads validates and applies', () => {
    expect(() => backend.setThreads(-1)).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
    expect(() => backend.setThreads(1.5)).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
    expect(backend.setThreads(1)).toBe(1);
    expect(backend.setThreads(0)).toBeGreaterThanOrEqual(1);
  });
  it('setThreads while Async ops run on other threads: every op completes with the right result', async () => {
    // The pool used to be torn down under a running job (a hang the fuzzer
    // found); native test threadpool_resize_while_running is the exact case.
    const rows = 64, n = 20000, k = 16;
    const x = Float32Array.from({ length: rows * n }, (_, i) => Math.sin(i * 12.9898) * 43758.5453 % 1);
    const scores = Tensor.from(x, [rows, n]);
    const want = Array.from(ops.topk(scores, k).indices.toArray());
    const pending: Promise<{ indices: Tensor }>[] = [];
    for (let i = 0; i < 24; i++) {
      pending.push(ops.topkAsync(scores, k));
      backend.setThreads(1 + (i % 4));
    }
    for (const r of await Promise.all(pending)) {
      expect(Array.from(r.indices.toArray())).toEqual(want);
      r.indices.dispose();
    }
    backend.setThreads(0);
    scores.dispose();
  });
});

describe('Tensor.write (in-place refill)', () => {
  it('overwrites the first n elements of f32, i32 and f16 tensors; returns the tensor', () => {
    const f = Tensor.from(new Float32Array([1, 2, 3, 4]), [4]);
    expect(f.write(new Float32Array([9, 8]))).toBe(f);
    expect(Array.from(f.toFloat32())).toEqual([9, 8, 3, 4]);
    const i = Tensor.zeros([3], { dtype: 'i32' });
    i.write(new Int32Array([-5, 7, 2 ** 31 - 1]));
    expect(Array.from(i.toArray())).toEqual([-5, 7, 2 ** 31 - 1]);
    const h = Tensor.zeros([2], { dtype: 'f16' });
    h.write(new Uint16Array([0x3c00, 0xc000])); // 1, -2
    expect(Array.from(h.toFloat32())).toEqual([1, -2]);
    for (const t of [f, i, h]) t.dispose();
  });
  it('bad sources are typed errors and change nothing', () => {
    const f = Tensor.from(new Float32Array([1, 2]), [2]);
    expect(() => f.write(new Int32Array(1))).toThrow(expect.objectContaining({ code: 'KVSQ_DTYPE' }));
    expect(() => f.write(new Float32Array(3))).toThrow(expect.objectContaining({ code: 'KVSQ_SHAPE' }));
    expect(() => f.write([1, 2] as unknown as Float32Array)).toThrow(expect.objectContaining({ code: 'KVSQ_ARG' }));
    expect(Array.from(f.toFloat32())).toEqual([1, 2]);
    f.dispose();
    expect(() => f.write(new Float32Array(1))).toThrow(expect.objectContaining({ code: 'KVSQ_DISPOSED' }));
  });
  it('a tensor in use by a running async op is not writable (KVSQ_STATE)', async () => {
    const scores = Tensor.from(new Float32Array(1 << 20).map(() => Math.random()), [1, 1 << 20]);
    const p = ops.topkAsync(scores, 4);
    expect(() => scores.write(new Float32Array(1))).toThrow(expect.objectContaining({ code: 'KVSQ_STATE' }));
    const r = await p;
    scores.write(new Float32Array(1));
    for (const t of [scores, r.indices, r.counts]) t.dispose();
  });
});
