/**
 * CMakeLists.txt's choice of CUDA architectures when none is given (what
 * `npm install` builds from source): the GPUs nvidia-smi reports (SASS for
 * each, PTX for the newest), none below sm_80 (a GPU that old gets the CPU
 * build), "90a-real;90-virtual" when no GPU is visible. A stand-in nvidia-smi first on PATH
 * plays the machine's GPUs (or fails, as it does without a driver); only
 * CMake's configure step runs (about 5 s each).
 * Needs cmake and nvcc; without them the cases are skipped.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const root = path.join(__dirname, '..');
const has = (cmd: string) => spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
const canConfigure = has('cmake') && has('nvcc');
const maybe = canConfigure ? it : it.skip;

let dir = '';
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvsq-cfg-'));
  fs.mkdirSync(path.join(dir, 'bin'));
  const smi = [
    '#!/bin/sh',
    '[ -n "$FAKE_CAPS" ] || { echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver." >&2; exit 9; }',
    'printf "%s\\n" $FAKE_CAPS',
  ];
  fs.writeFileSync(path.join(dir, 'bin', 'nvidia-smi'), smi.join('\n') + '\n', { mode: 0o755 });
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The configure step's output, nvidia-smi reporting `caps` (empty: failing, as without a driver). */
function configure(caps: string[], extra: string[] = []): string {
  const build = fs.mkdtempSync(path.join(dir, 'b-'));
  const r = spawnSync('cmake', ['-S', root, '-B', build, '-DKVSQ_TESTS=OFF', ...extra], {
    env: { ...process.env, PATH: `${path.join(dir, 'bin')}${path.delimiter}${process.env.PATH ?? ''}`, FAKE_CAPS: caps.join(' ') },
    encoding: 'utf8',
  });
  expect(r.status).toBe(0);
  return `${r.stdout}\n${r.stderr}`;
}

describe('CUDA architectures of a source build', () => {
  maybe('one SASS per local GPU kind and PTX for the newest', () => {
    expect(configure(['8.0', '8.6', '8.0'])).toContain('archs 80-real;86-real;86-virtual');
  }, 60000);
  maybe('a GPU below sm_80 is left out; with no other GPU the build is CPU-only', () => {
    expect(configure(['7.5', '9.0'])).toContain('archs 90a-real;90-virtual');
    const cpu = configure(['7.5']);
    expect(cpu).toContain('CPU-only build');
    expect(cpu).toContain('below the sm_80');
  }, 60000);
  maybe('nvidia-smi failing (no driver): sm_90a + PTX 90; KVSQ_CUDA_ARCHS given: used as it is', () => {
    expect(configure([])).toContain('archs 90a-real;90-virtual\n');
    expect(configure(['8.0'], ['-DKVSQ_CUDA_ARCHS=89-real'])).toContain('archs 89-real\n');
  }, 60000);
});
