#!/usr/bin/env node
// Stands in for node-gyp when prebuildify makes the prebuild
// (`prebuildify --node-gyp "node scripts/cmake-gyp.js"`): prebuildify only
// knows node-gyp, but the CUDA build is described in CMakeLists.txt, so this
// takes node-gyp's `rebuild` arguments and drives cmake-js instead. The result
// lands in build/Release, where prebuildify looks for it.
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');

const root = path.join(__dirname, '..');
const args = process.argv.slice(2);
if (args[0] !== 'rebuild') {
  console.error(`cmake-gyp: only 'rebuild' is supported (got ${args.join(' ')})`);
  process.exit(2);
}
const debug = args.includes('--debug');
const archs = process.env.KVSQ_CUDA_ARCHS || '80-real;86-real;89-real;90a-real;90-virtual';
const cuda = process.env.KVSQ_CUDA || 'AUTO';
const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
const cmd = [cmakeJs, 'rebuild', `--CDKVSQ_CUDA=${cuda}`, `--CDKVSQ_CUDA_ARCHS=${archs}`];
if (debug) cmd.push('--debug');
console.log(`cmake-gyp: cmake-js ${cmd.slice(1).join(' ')}`);
const r = spawnSync(process.execPath, cmd, { cwd: root, stdio: 'inherit' });
process.exit(r.status === null ? 1 : r.status);
