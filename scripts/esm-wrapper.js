#!/usr/bin/env node
// Writes dist/index.mjs, the ES module entry: it re-exports the CommonJS build
// by name, so `import { Tensor } from 'kvsqueeze'` and require() share one
// instance of the addon and of every class.
'use strict';
const fs = require('fs');
const path = require('path');

const dist = path.join(__dirname, '..', 'dist');
const cjs = require(path.join(dist, 'index.js'));
const names = Object.keys(cjs).filter((n) => n !== 'default' && n !== '__esModule');
const body = [
  "import { createRequire } from 'module';",
  'const require = createRequire(import.meta.url);',
  "const m = require('./index.js');",
  ...names.map((n) => `export const ${n} = m.${n};`),
  'export default m;',
  '',
].join('\n');
fs.writeFileSync(path.join(dist, 'index.mjs'), body);
