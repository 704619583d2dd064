/**
 * Traces: one model's Q/K/V for a prompt (and optional decode steps), as
 * dumped from any framework into safetensors (architecture.md):
 *   q [NL, Hq, L, D], k, v [NL, Hkv, L, D]   (3-D = one layer)
 *   dq [NL, Hq, T, D], dk, dv [NL, Hkv, T, D] (optional decode steps)
 *   __metadata__.shots = "[[start, end], ...]" (ShotKV segments)
 */
import { FormatError } from './errors';
import { readSafetensorsFile, SafetensorsEntry } from './io/safetensors';
import { DType, Tensor } from './tensor';

export interface Trace {
  dtype: DType;
  numLayers: number;
  numQHeads: number;
  numKvHeads: number;
  seqLen: number;
  headDim: number;
  /** Decode steps (0 when the trace has none). */
  steps: number;
  metadata: Record<string, string>;
  /** Raw data, layer-major as in the file (F16/BF16 as bits). */
  q: SafetensorsEntry;
  k: SafetensorsEntry;
  v: SafetensorsEntry;
  dq?: SafetensorsEntry;
  dk?: SafetensorsEntry;
  dv?: SafetensorsEntry;
}

const DT: Record<string, DType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

function as4d(e: SafetensorsEntry, name: string): number[] {
  if (e.shape.length === 3) return [1, ...e.shape];
  if (e.shape.length === 4) return e.shape;
  throw new FormatError(`trace: ${name} must be 3-D or 4-D, got [${e.shape.join(', ')}]`);
}

export function traceFromEntries(tensors: Map<string, SafetensorsEntry>, metadata: Record<string, string>): Trace {
  const get = (n: string) => {
    const e = tensors.get(n);
    if (!e) throw new FormatError(`trace: tensor '${n}' is missing`);
    return e;
  };
  const q = get('q');
  const k = get('k');
  const v = get('v');
  const dtype = DT[q.dtype];
  if (!dtype) throw new FormatError(`trace: q has dtype ${q.dtype}; expected F32, F16 or BF16`);
  for (const [e, n] of [[k, 'k'], [v, 'v']] as const) if (e.dtype !== q.dtype) throw new FormatError(`trace: ${n} has dtype ${e.dtype}, q has ${q.dtype}`);
  const [NL, Hq, L, D] = as4d(q, 'q');
  const ks = as4d(k, 'k');
  const vs = as4d(v, 'v');
  const Hkv = ks[1];
  if (ks[0] !== NL || ks[2] !== L || ks[3] !== D) throw new FormatError(`trace: k [${k.shape}] does not match q [${q.shape}]`);
  if (vs.join() !== ks.join()) throw new FormatError(`trace: v [${v.shape}] differs from k [${k.shape}]`);
  if (Hkv < 1 || Hq % Hkv) throw new FormatError(`trace: ${Hq} query heads are not a multiple of ${Hkv} KV heads`);
  if (L < 1 || D < 1 || NL < 1) throw new FormatError('trace: empty q');
  const t: Trace = { dtype, numLayers: NL, numQHeads: Hq, numKvHeads: Hkv, seqLen: L, headDim: D, steps: 0, metadata, q, k, v };
  const dq = tensors.get('dq');
  if (dq) {
    const dk = get('dk');
    const dv = get('dv');
    for (const [e, n] of [[dq, 'dq'], [dk, 'dk'], [dv, 'dv']] as const) if (e.dtype !== q.dtype) throw new FormatError(`trace: ${n} has dtype ${e.dtype}, q has ${q.dtype}`);
    const s = as4d(dq, 'dq');
    const sk = as4d(dk, 'dk');
    if (s[0] !== NL || s[1] !== Hq || s[3] !== D) throw new FormatError(`trace: dq [${dq.shape}] does not match q [${q.shape}]`);
    if (sk.join() !== [NL, Hkv, s[2], D].join() || as4d(dv, 'dv').join() !== sk.join())
      throw new FormatError(`trace: dk/dv must be [${[NL, Hkv, s[2], D].join(', ')}]`);
    Object.assign(t, { dq, dk, dv, steps: s[2] });
  }
  return t;
}

export function loadTrace(path: string): Trace {
  const f = readSafetensorsFile(path);
  return traceFromEntries(f.tensors, f.metadata);
}

/** ShotKV segments from the metadata (`shots`), or undefined. */
export function traceShots(t: Trace): Array<[number, number]> | undefined {
  const raw = t.metadata.shots;
  if (raw === undefined) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new FormatError('trace: __metadata__.shots is not valid JSON');
  }
  if (!Array.isArray(v) || !v.every((s) => Array.isArray(s) && s.length === 2 && s.every((x) => Number.isInteger(x))))
    throw new FormatError('trace: __metadata__.shots must be [[start, end], ...] with integers');
  return v as Array<[number, number]>;
}

function slice(e: SafetensorsEntry, start: number, len: number): Float32Array | Uint16Array {
  return (e.data as Float32Array | Uint16Array).subarray(start, start + len);
}

/** Prompt tensors of one layer: q [Hq, L, D], k and v [Hkv, L, D]. The caller disposes them. */
export function layerTensors(t: Trace, layer: number): { q: Tensor; k: Tensor; v: Tensor } {
  const { numQHeads: Hq, numKvHeads: Hkv, seqLen: L, headDim: D, dtype } = t;
  const qn = Hq * L * D;
  const kn = Hkv * L * D;
  return {
    q: Tensor.from(slice(t.q, layer * qn, qn), [Hq, L, D], { dtype }),
    k: Tensor.from(slice(t.k, layer * kn, kn), [Hkv, L, D], { dtype }),
    v: Tensor.from(slice(t.v, layer * kn, kn), [Hkv, L, D], { dtype }),
  };
}

/** Decode step `step` of one layer: q [1, Hq, D], k and v [1, Hkv, D]. */
export function stepTensors(t: Trace, layer: number, step: number): { q: Tensor; k: Tensor; v: Tensor } {
  const { numQHeads: Hq, numKvHeads: Hkv, headDim: D, steps: T, dtype } = t;
  const rows = (e: SafetensorsEntry, H: number) => {
    const src = e.data as Float32Array | Uint16Array;
    const out = dtype === 'f32' ? new Float32Array(H * D) : new Uint16Array(H * D);
    for (let h = 0; h < H; h++) out.set(src.subarray(((layer * H + h) * T + step) * D, ((layer * H + h) * T + step + 1) * D), h * D);
    return out;
  };
  return {
    q: Tensor.from(rows(t.dq!, Hq), [1, Hq, D], { dtype }),
    k: Tensor.from(rows(t.dk!, Hkv), [1, Hkv, D], { dtype }),
    v: Tensor.from(rows(t.dv!, Hkv), [1, Hkv, D], { dtype }),
  };
}
