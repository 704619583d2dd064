/**
 * Independent float64 reference for the decode side of spec/methods.md:
 * H2O (prefill scores + decode eviction), StreamingLLM decode, Quest page
 * selection, ShotKV decode and composition with any prefill kept set.
 *
 * Written from the spec only: nothing here imports lib/policies or lib/cache.
 * Inputs are plain numbers (the caller rounds them through the cache dtype
 * first); every sum, softmax and score is float64.
 *
 * State per (layer, KV head): the held tokens in slot order with their K/V
 * rows and accumulated score. Lists are kept in ascending position order; for
 * Quest (which never evicts) that is exactly the cache's slot order, so the
 * pages of a list are consecutive runs of `pageSize` held tokens (with keep-all
 * prefill and no eviction, slot = position).
 */

export type Reduce = 'mean' | 'sum' | 'max';

/** A decode policy as the reference understands it (budgets already in tokens). */
export type RefDecode =
  | { kind: 'none' }
  | { kind: 'h2o'; heavy: number; recent: number; reduce?: Reduce }
  | { kind: 'streaming'; sinks: number; budget: number }
  | { kind: 'quest'; budget: number; pageSize: number; denseLayers: number; share: boolean }
  | { kind: 'shotkv'; decodeBudget: number };

export interface RefToken {
  pos: number;
  k: Float64Array;
  v: Float64Array;
  score: number;
}

/** Relative closeness below which two scores count as a float32/float64 near-tie. */
export const TIE_REL = 1e-4;
export const nearTie = (a: number, b: number, rel = TIE_REL): boolean => Math.abs(a - b) <= rel * Math.max(Math.abs(a), Math.abs(b), 1e-3);

function reduce(xs: number[], how: Reduce): number {
  if (how === 'sum') return xs.reduce((a, b) => a + b, 0);
  if (how === 'max') return Math.max(...xs);
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

function dot(a: ArrayLike<number>, ao: number, b: ArrayLike<number>, bo: number, D: number): number {
  let s = 0;
  for (let d = 0; d < D; d++) s += a[ao + d] * b[bo + d];
  return s;
}

function softmax(z: number[]): number[] {
  const m = Math.max(...z);
  const e = z.map((x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

/**
 * H2O prefill scores (methods.md "H2O"): S_j[t] = group reduce over the heads
 * of group j of sum_i P_i[t], P_i the full causal softmax of prompt query i.
 * q [Hq, L, D], k [Hkv, L, D], flat row-major. Returns [Hkv][L].
 */
export function causalColumnSums(q: ArrayLike<number>, k: ArrayLike<number>, Hq: number, Hkv: number, L: number, D: number, how: Reduce = 'mean', scale = 1 / Math.sqrt(D)): Float64Array[] {
  const g = Hq / Hkv;
  const perHead: Float64Array[] = [];
  for (let h = 0; h < Hq; h++) {
    const j = Math.floor(h / g);
    const col = new Float64Array(L);
    for (let i = 0; i < L; i++) {
      const z: number[] = [];
      for (let t = 0; t <= i; t++) z.push(scale * dot(q, (h * L + i) * D, k, (j * L + t) * D, D));
      const p = softmax(z);
      for (let t = 0; t <= i; t++) col[t] += p[t];
    }
    perHead.push(col);
  }
  const out: Float64Array[] = [];
  for (let j = 0; j < Hkv; j++) {
    const row = new Float64Array(L);
    for (let t = 0; t < L; t++) row[t] = reduce(perHead.slice(j * g, (j + 1) * g).map((c) => c[t]), how);
    out.push(row);
  }
  return out;
}

/**
 * Top `k` of `scores[0 .. n)` (larger wins, ties: lower position), ascending,
 * plus whether the cut is a near-tie (the k-th and (k+1)-th differ by at most
 * TIE_REL relative), in which case a float32 implementation may choose
 * differently without being wrong.
 */
export function topk(scores: ArrayLike<number>, k: number, n = scores.length): { idx: number[]; ambiguous: boolean } {
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[b] - scores[a] || a - b);
  const kk = Math.max(0, Math.min(k, n));
  const ambiguous = kk > 0 && kk < n && nearTie(scores[order[kk - 1]], scores[order[kk]]);
  return { idx: order.slice(0, kk).sort((a, b) => a - b), ambiguous };
}

/** H2O prefill selection: keep all when L <= heavy + recent, else [L-recent, L) plus the top heavy of S over [0, L-recent). */
export function h2oPrefillKeep(S: Float64Array[], L: number, heavy: number, recent: number): { kept: number[][] | null; ambiguous: boolean[] } {
  if (L <= heavy + recent) return { kept: null, ambiguous: S.map(() => false) };
  const older = L - recent;
  const kept: number[][] = [];
  const ambiguous: boolean[] = [];
  for (const row of S) {
    const t = topk(row, Math.min(heavy, older), older);
    const tail: number[] = [];
    for (let p = older; p < L; p++) tail.push(p);
    kept.push([...t.idx, ...tail]);
    ambiguous.push(t.ambiguous);
  }
  return { kept, ambiguous };
}

/** What the reference proposes to evict at one KV head after a step. */
export interface EvictProposal {
  /** The position the spec evicts (float64 scores). */
  pos: number;
  /** Every candidate whose score is a near-tie of the lowest (pos included): a float32 cache may pick any. */
  tied: number[];
}

export interface StepResult {
  /** [Hq * D] attention output. */
  out: Float64Array;
  /** Per query head: Quest page choice was a near-tie (output may legitimately differ). */
  outAmbiguous: boolean[];
  /** Per query head: the logical pages attended (Quest), or null when dense. */
  pages: (number[] | null)[];
  /** Per KV head: the eviction the spec asks for, or null. */
  evict: (EvictProposal | null)[];
}

export interface RefOptions {
  layers: number;
  kvHeads: number;
  qHeads: number;
  headDim: number;
  scale?: number;
}

interface RefLayer {
  heads: RefToken[][];
  nextPos: number;
  promptLength: number;
  frozen: boolean;
}

/** One sequence of the reference cache. */
export class RefSequence {
  readonly o: Required<RefOptions>;
  readonly g: number;
  readonly layers: (RefLayer | undefined)[];
  readonly decode: RefDecode[];

  constructor(o: RefOptions, decode: RefDecode | RefDecode[]) {
    this.o = { scale: 1 / Math.sqrt(o.headDim), ...o };
    this.g = o.qHeads / o.kvHeads;
    this.layers = new Array(o.layers).fill(undefined);
    this.decode = Array.isArray(decode) ? decode : new Array(o.layers).fill(decode);
  }

  /**
   * Stores a prompt: q [Hq, L, D], k/v [Hkv, L, D] flat. `kept` per KV head
   * (ascending) or null = keep all. `frozen`: ShotKV prefill (kept prompt
   * tokens are never evicted; the reference never evicts prompt tokens under
   * ShotKV anyway). Initial scores: H2O decode starts from the causal column
   * sums (given, or computed here), every other policy from 0.
   */
  prefill(layer: number, q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, L: number, kept: number[][] | null = null, scores?: Float64Array[], frozen = false): void {
    const { kvHeads: Hkv, qHeads: Hq, headDim: D } = this.o;
    const dec = this.decode[layer];
    let S: Float64Array[] | undefined;
    if (dec.kind === 'h2o') S = scores ?? causalColumnSums(q, k, Hq, Hkv, L, D, dec.reduce ?? 'mean', this.o.scale);
    const heads: RefToken[][] = [];
    for (let j = 0; j < Hkv; j++) {
      const pos = kept ? kept[j] : Array.from({ length: L }, (_, i) => i);
      heads.push(
        pos.map((p) => ({
          pos: p,
          k: Float64Array.from({ length: D }, (_, d) => k[(j * L + p) * D + d]),
          v: Float64Array.from({ length: D }, (_, d) => v[(j * L + p) * D + d]),
          score: S ? S[j][p] : 0,
        })),
      );
    }
    this.layers[layer] = { heads, nextPos: L, promptLength: L, frozen };
  }

  kept(layer: number): number[][] {
    const st = this.layers[layer];
    return st ? st.heads.map((h) => h.map((t) => t.pos).sort((a, b) => a - b)) : [];
  }

  scores(layer: number): Map<number, number>[] {
    return this.layers[layer]!.heads.map((h) => new Map(h.map((t) => [t.pos, t.score])));
  }

  /** Exact attention of q [Hq * D] over the tokens held (no append, no selection). */
  attend(layer: number, q: ArrayLike<number>): Float64Array {
    const st = this.layers[layer]!;
    const { qHeads: Hq, headDim: D } = this.o;
    const out = new Float64Array(Hq * D);
    for (let h = 0; h < Hq; h++) this.attendHead(st.heads[Math.floor(h / this.g)], q, h, out);
    return out;
  }

  /** softmax(scale q.k) over `toks`, output written to out[h*D..]; returns the probabilities. */
  private attendHead(toks: RefToken[], q: ArrayLike<number>, h: number, out: Float64Array): number[] {
    const D = this.o.headDim;
    const p = softmax(toks.map((t) => this.o.scale * dot(q, h * D, t.k, 0, D)));
    for (let d = 0; d < D; d++) {
      let s = 0;
      for (let i = 0; i < toks.length; i++) s += p[i] * toks[i].v[d];
      out[h * D + d] = s;
    }
    return p;
  }

  /**
   * Quest selection for one list and one query row (a query head, or with
   * share the group's bounds maxed): logical pages, ascending; null = dense.
   */
  private questPages(toks: RefToken[], qs: number[], q: ArrayLike<number>, cfg: { budget: number; pageSize: number }): { pages: number[] | null; ambiguous: boolean } {
    const P = cfg.pageSize;
    const D = this.o.headDim;
    const n = Math.ceil(toks.length / P);
    const budgetPages = Math.floor(cfg.budget / P);
    if (n <= budgetPages) return { pages: null, ambiguous: false };
    const u: number[] = [];
    for (let p = 0; p < n - 1; p++) {
      const kmin = new Float64Array(D).fill(Infinity);
      const kmax = new Float64Array(D).fill(-Infinity);
      for (let i = p * P; i < Math.min(toks.length, (p + 1) * P); i++)
        for (let d = 0; d < D; d++) {
          kmin[d] = Math.min(kmin[d], toks[i].k[d]);
          kmax[d] = Math.max(kmax[d], toks[i].k[d]);
        }
      let best = -Infinity;
      for (const h of qs) {
        let b = 0;
        for (let d = 0; d < D; d++) b += Math.max(q[h * D + d] * kmax[d], q[h * D + d] * kmin[d]);
        best = Math.max(best, b);
      }
      u.push(best);
    }
    const t = topk(u, budgetPages - 1);
    return { pages: [...t.idx, n - 1], ambiguous: t.ambiguous };
  }

  /**
   * One decode step (methods.md): append the new token (score 0) at every KV
   * head, attend per query head (GQA, Quest selection), accumulate this step's
   * probabilities (H2O: group reduce; ShotKV: sum), and say what the policy
   * evicts. Call evict() to apply it (or the cache's choice on a near-tie).
   */
  step(layer: number, q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>): StepResult {
    const st = this.layers[layer];
    if (!st) throw new Error(`ref: layer ${layer} not prefilled`);
    const { kvHeads: Hkv, qHeads: Hq, headDim: D } = this.o;
    const g = this.g;
    const pos = st.nextPos++;
    for (let j = 0; j < Hkv; j++)
      st.heads[j].push({ pos, k: Float64Array.from({ length: D }, (_, d) => k[j * D + d]), v: Float64Array.from({ length: D }, (_, d) => v[j * D + d]), score: 0 });
    const dec = this.decode[layer];
    const out = new Float64Array(Hq * D);
    const outAmbiguous = new Array(Hq).fill(false);
    const pages: (number[] | null)[] = new Array(Hq).fill(null);
    const quest = dec.kind === 'quest' && layer >= dec.denseLayers ? dec : null;
    const probs: number[][] = [];
    for (let h = 0; h < Hq; h++) {
      const j = Math.floor(h / g);
      let toks = st.heads[j];
      if (quest) {
        const rows = quest.share ? Array.from({ length: g }, (_, i) => j * g + i) : [h];
        const sel = this.questPages(toks, rows, q, quest);
        if (sel.pages) {
          pages[h] = sel.pages;
          outAmbiguous[h] = sel.ambiguous;
          const P = quest.pageSize;
          toks = sel.pages.flatMap((p) => toks.slice(p * P, (p + 1) * P));
        }
      }
      probs.push(this.attendHead(toks, q, h, out));
    }
    const evict: (EvictProposal | null)[] = new Array(Hkv).fill(null);
    if (dec.kind === 'h2o') {
      for (let j = 0; j < Hkv; j++) {
        const toks = st.heads[j];
        toks.forEach((t, i) => (t.score += reduce(Array.from({ length: g }, (_, x) => probs[j * g + x][i]), dec.reduce ?? 'mean')));
        if (toks.length > dec.heavy + dec.recent) evict[j] = lowest(toks.filter((t) => t.pos <= pos - dec.recent));
      }
    } else if (dec.kind === 'shotkv') {
      for (let j = 0; j < Hkv; j++) st.heads[j].forEach((t, i) => (t.score += Array.from({ length: g }, (_, x) => probs[j * g + x][i]).reduce((a, b) => a + b, 0)));
      const generated = st.heads[0].filter((t) => t.pos >= st.promptLength);
      if (generated.length > dec.decodeBudget) {
        // Score summed over all KV heads; every head evicts the same token.
        const summed = generated.map((t) => ({ pos: t.pos, score: st.heads.reduce((s, h) => s + h.find((x) => x.pos === t.pos)!.score, 0) }));
        const e = lowest(summed);
        for (let j = 0; j < Hkv; j++) evict[j] = e;
      }
    } else if (dec.kind === 'streaming') {
      for (let j = 0; j < Hkv; j++) {
        const toks = st.heads[j];
        if (toks.length > dec.budget) {
          const cand = toks.filter((t) => t.pos >= dec.sinks).map((t) => t.pos);
          if (cand.length) evict[j] = { pos: Math.min(...cand), tied: [Math.min(...cand)] };
        }
      }
    }
    return { out, outAmbiguous, pages, evict };
  }

  /** Removes position `pos` from KV head `j` of `layer`. */
  evict(layer: number, j: number, pos: number): void {
    const h = this.layers[layer]!.heads[j];
    const i = h.findIndex((t) => t.pos === pos);
    if (i < 0) throw new Error(`ref: position ${pos} not held at layer ${layer} head ${j}`);
    h.splice(i, 1);
  }

  /** Applies every proposal of a step as the spec asks. */
  applyEvictions(layer: number, r: StepResult): void {
    r.evict.forEach((e, j) => e && this.evict(layer, j, e.pos));
  }
}

/** Lowest score, ties to the lower position; plus the near-tied candidates. */
function lowest(cands: { pos: number; score: number }[]): EvictProposal | null {
  if (!cands.length) return null;
  let best = cands[0];
  for (const c of cands) if (c.score < best.score || (c.score === best.score && c.pos < best.pos)) best = c;
  return { pos: best.pos, tied: cands.filter((c) => nearTie(c.score, best.score)).map((c) => c.pos) };
}
