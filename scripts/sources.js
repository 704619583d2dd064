#!/usr/bin/env node
// The C++ sources of the CPU-only addon, for binding.gyp. The rule is the one
// CMakeLists.txt applies (every .cc under native/core, native/cpu and
// native/napi), so adding a kernel file needs no edit in either build.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const dirs = ['native/core', 'native/cpu', 'native/napi'];

function sources() {
  const out = [];
  for (const d of dirs) {
    const abs = path.join(root, d);
    if (!fs.existsSync(abs)) continue;
    for (const f of fs.readdirSync(abs).sort()) if (f.endsWith('.cc')) out.push(`${d}/${f}`);
  }
  return out;
}

module.exports = sources;
if (require.main === module) process.stdout.write(sources().join(' '));
