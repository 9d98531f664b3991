// The type declarations name exactly what the modules export (tsc checks the
// declarations against typed examples; this checks them against the code).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = join(dirname(fileURLToPath(import.meta.url)), '..', 'src');

/** The value names a declaration file exports (classes, functions, consts, re-exports). */
function declared(file) {
  const text = readFileSync(join(SRC, file), 'utf8');
  const names = new Set();
  for (const m of text.matchAll(/^export (?:declare )?(?:class|function|const) (\w+)/gm)) names.add(m[1]);
  for (const m of text.matchAll(/^export \{([^}]*)\} from/gm)) {
    for (const part of m[1].split(',')) {
      const name = part.trim().split(/\s+as\s+/).pop();
      if (name) names.add(name);
    }
  }
  return [...names].sort();
}

for (const [module, declarations] of [
  ['index.js', 'index.d.ts'],
  ['compat.js', 'compat.d.ts'],
]) {
  test(`${declarations} declares every export of ${module} and nothing else`, async () => {
    const exported = Object.keys(await import(join(SRC, module))).sort();
    assert.deepEqual(declared(declarations), exported);
  });
}
