import { main } from '../lib/cli';

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(['node', 'kvsqueeze', ...args], { out: (s) => (out += s), err: (s) => (err += s) });
  return { code, out, err };
}

describe('cli', () => {
  it('unknown command: exit 2 with a message', async () => {
    const r = await run(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/unknown command/);
  });
  it('unknown option: exit 2', async () => {
    const r = await run(['info', '--bogus']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/unknown option/);
  });
  it('info prints backends and why CUDA is unavailable', async () => {
    const r = await run(['info']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^kvsqueeze \d+\.\d+\.\d+/);
    expect(r.out).toMatch(/cpu: +\d+ threads/);
    expect(r.out).toMatch(/cuda: compiled (true|false)/);
  });
  it('info --json is parseable', async () => {
    const r = await run(['info', '--json']);
    const j = JSON.parse(r.out);
    expect(j.cuda).toHaveProperty('available');
    expect(j.cpu).toHaveProperty('threads');
  });
});
