/**
 * Decode attention in onnxruntime-node (CPU) as an outside baseline: one
 * sequence, dense K/V [Hkv, L, D] (ORT gets the contiguous layout, not our
 * pages), GQA by batching the g query heads of each KV head:
 *
 *   q [Hkv, g, D] . Transpose(K) [Hkv, D, L] -> Mul(scale) -> Softmax(-1) -> MatMul V -> o [Hkv, g, D]
 *
 * f16 K/V are Cast to f32 inside the graph (ORT has no x86 fp16 MatMul).
 * The graph is built in Node with onnx-proto. Both packages are
 * devDependencies, loaded lazily: without them this reports 'unavailable'.
 */

export interface OrtDecode {
  /** runs one decode step; resolves when the output is ready */
  run(): Promise<void>;
  /** the output [Hkv * g * D] of the last run, for a sanity check */
  output(): Float32Array;
  dispose(): Promise<void>;
}

interface OrtModule {
  InferenceSession: { create(model: Uint8Array, opts: Record<string, unknown>): Promise<OrtSession> };
  Tensor: new (type: string, data: Float32Array | Uint16Array, dims: number[]) => unknown;
}
interface OrtSession {
  run(feeds: Record<string, unknown>): Promise<Record<string, { data: Float32Array }>>;
  release?(): Promise<void>;
}

/** Why the baseline cannot run, or null when both packages load. */
export function ortUnavailable(): string | null {
  try {
    require.resolve('onnxruntime-node');
    require.resolve('onnx-proto');
    return null;
  } catch {
    return 'onnxruntime-node / onnx-proto not installed (devDependencies)';
  }
}

export interface OrtDecodeShape {
  Hq: number;
  Hkv: number;
  D: number;
  L: number;
  kvDtype: 'f32' | 'f16';
  threads: number;
}

/**
 * Builds the session. q: [Hq * D] f32; k, v: [Hkv * L * D] as f32 values or
 * f16 bits (Uint16Array) for kvDtype f16.
 */
export async function ortDecode(s: OrtDecodeShape, q: Float32Array, k: Float32Array | Uint16Array, v: Float32Array | Uint16Array): Promise<OrtDecode> {
  /* eslint-disable @typescript-eslint/no-require-imports */
  const ort = require('onnxruntime-node') as OrtModule;
  const { onnx } = require('onnx-proto') as { onnx: Record<string, any> }; // eslint-disable-line @typescript-eslint/no-explicit-any
  /* eslint-enable @typescript-eslint/no-require-imports */
  const g = s.Hq / s.Hkv;
  const FLOAT = 1;
  const FLOAT16 = 10;
  const kvType = s.kvDtype === 'f16' ? FLOAT16 : FLOAT;
  const vi = (name: string, elemType: number, dims: number[]) =>
    onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType, shape: { dim: dims.map((d) => ({ dimValue: d })) } } } });
  const nodes = [];
  let kIn = 'k';
  let vIn = 'v';
  if (s.kvDtype === 'f16') {
    nodes.push(onnx.NodeProto.create({ opType: 'Cast', input: ['k'], output: ['kf'], attribute: [{ name: 'to', type: 2, i: FLOAT }] }));
    nodes.push(onnx.NodeProto.create({ opType: 'Cast', input: ['v'], output: ['vf'], attribute: [{ name: 'to', type: 2, i: FLOAT }] }));
    kIn = 'kf';
    vIn = 'vf';
  }
  // AttributeProto.AttributeType: FLOAT 1, INT 2, INTS 7
  nodes.push(onnx.NodeProto.create({ opType: 'Transpose', input: [kIn], output: ['kt'], attribute: [{ name: 'perm', type: 7, ints: [0, 2, 1] }] }));
  nodes.push(onnx.NodeProto.create({ opType: 'MatMul', input: ['q', 'kt'], output: ['z'] }));
  nodes.push(onnx.NodeProto.create({ opType: 'Mul', input: ['z', 'scale'], output: ['zs'] }));
  nodes.push(onnx.NodeProto.create({ opType: 'Softmax', input: ['zs'], output: ['p'], attribute: [{ name: 'axis', type: 2, i: -1 }] }));
  nodes.push(onnx.NodeProto.create({ opType: 'MatMul', input: ['p', vIn], output: ['o'] }));
  const graph = onnx.GraphProto.create({
    name: 'decode_attention',
    node: nodes,
    initializer: [onnx.TensorProto.create({ name: 'scale', dataType: FLOAT, dims: [], floatData: [1 / Math.sqrt(s.D)] })],
    input: [vi('q', FLOAT, [s.Hkv, g, s.D]), vi('k', kvType, [s.Hkv, s.L, s.D]), vi('v', kvType, [s.Hkv, s.L, s.D])],
    output: [vi('o', FLOAT, [s.Hkv, g, s.D])],
  });
  const model = onnx.ModelProto.create({ irVersion: 8, producerName: 'kvsqueeze-bench', opsetImport: [{ domain: '', version: 17 }], graph });
  const bytes: Uint8Array = onnx.ModelProto.encode(model).finish();
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: ['cpu'],
    intraOpNumThreads: s.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
  });
  const ty = s.kvDtype === 'f16' ? 'float16' : 'float32';
  const feeds = {
    q: new ort.Tensor('float32', q, [s.Hkv, g, s.D]),
    k: new ort.Tensor(ty, k, [s.Hkv, s.L, s.D]),
    v: new ort.Tensor(ty, v, [s.Hkv, s.L, s.D]),
  };
  let last: Float32Array = new Float32Array(0);
  return {
    async run() {
      const r = await session.run(feeds);
      last = r.o.data;
    },
    output: () => last,
    async dispose() {
      await session.release?.();
    },
  };
}
