import { PagedKVCache, Tensor, H2O } from '../lib';
it('probe', () => {
  const cache = new PagedKVCache({ layers: 1, kvHeads: 1, qHeads: 1, headDim: 4, pageSize: 4, pages: 10 });
  const bad = { name: 'bad', params: {}, accumulate: null, wantsPrefillScores: false, quest: null, evict: () => { throw new Error('boom'); } };
  const s = cache.addSequence({ decode: bad as never });
  const t = (sh: number[]) => Tensor.from(new Float32Array(sh.reduce((a, b) => a * b, 1)).fill(0.5), sh);
  s.prefill(0, t([1, 4, 4]), t([1, 4, 4]), t([1, 4, 4]));
  const before = JSON.stringify({ st: cache.stats(), k: s.kept(0).map(x=>Array.from(x)), len: s.length(0), slots: s.slots(0).map(x=>Array.from(x)) });
  try { cache.decode(0, [s], t([1, 1, 4]), t([1, 1, 4]), t([1, 1, 4])); } catch (e) { console.log('err', (e as Error).message); }
  const after = JSON.stringify({ st: cache.stats(), k: s.kept(0).map(x=>Array.from(x)), len: s.length(0), slots: s.slots(0).map(x=>Array.from(x)) });
  console.log(before); console.log(after);
  // H2O + evict then attend
  const c2 = new PagedKVCache({ layers: 1, kvHeads: 1, qHeads: 1, headDim: 4, pageSize: 4, pages: 10 });
  const s2 = c2.addSequence({ prefill: new H2O({heavy: 2, recent: 2}), decode: new H2O({heavy: 2, recent: 2}) });
  s2.prefill(0, Tensor.from(new Float32Array(40).map(()=>Math.random()), [1,10,4]), Tensor.from(new Float32Array(40).map(()=>Math.random()), [1,10,4]), t([1, 10, 4]));
  console.log(Array.from(s2.kept(0)[0]), Array.from(s2.slots(0)[0]));
  c2.decode(0, [s2], t([1, 1, 4]), t([1, 1, 4]), t([1, 1, 4]));
  console.log(Array.from(s2.kept(0)[0]), Array.from(s2.slots(0)[0]), c2.stats().tokens);
  try { c2.attend(0, [s2], t([1,1,4])); console.log('attend ok'); } catch (e) { console.log('attend err', (e as Error).message); }
});
