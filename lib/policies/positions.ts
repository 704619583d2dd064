/**
 * Index bookkeeping shared by the policies: turning top-k results into kept
 * position lists. No score arithmetic here; that is the kernels' job.
 */
import { ops } from '../ops';
import { Tensor } from '../tensor';

/** [start, end) as an Int32Array. */
export function range(start: number, end: number): Int32Array {
  const out = new Int32Array(Math.max(0, end - start));
  for (let i = 0; i < out.length; i++) out[i] = start + i;
  return out;
}

/** Concatenates ascending, disjoint pieces whose ranges do not interleave. */
export function concat(...parts: Int32Array[]): Int32Array {
  const out = new Int32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Row-wise top-k of scores [rows, n] (ties to the lower index), as ascending
 * Int32Arrays, one per row. Disposes nothing it did not create.
 */
export function topkRows(scores: Tensor, k: number, n?: number): Int32Array[] {
  const rows = scores.shape.length === 1 ? 1 : scores.shape[0];
  const width = scores.shape[scores.shape.length - 1];
  let lengths: Tensor | undefined;
  if (n !== undefined && n !== width) lengths = Tensor.from(new Int32Array(rows).fill(n), [rows]);
  const r = ops.topk(scores, k, { lengths });
  lengths?.dispose();
  const idx = r.indices.toArray() as Int32Array;
  const cnt = r.counts.toArray() as Int32Array;
  const w = r.indices.shape[r.indices.shape.length - 1] ?? 0;
  r.indices.dispose();
  r.counts.dispose();
  const out: Int32Array[] = [];
  for (let i = 0; i < rows; i++) out.push(idx.slice(i * w, i * w + cnt[i]));
  return out;
}

/** Expands selected chunk indices (ascending) into their positions, clipped to n. */
export function chunkPositions(chunks: Int32Array, chunk: number, n: number): Int32Array {
  const parts: Int32Array[] = [];
  for (const c of chunks) parts.push(range(c * chunk, Math.min(n, (c + 1) * chunk)));
  return concat(...parts);
}
