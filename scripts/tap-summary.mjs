// Pass TAP through unchanged, then print one closing line: "N passed, N failed[, N skipped]".
// Exit non-zero if anything failed, if the TAP plan is missing, on "Bail out!", or if no test passed.
import { createInterface } from 'node:readline';

let pass = 0, fail = 0, skip = 0, plan = false, bailed = false;
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
  process.stdout.write(line + '\n');
  let m;
  if ((m = /^(not )?ok\b[^#]*(#\s*(SKIP|TODO)\b)?/i.exec(line))) {
    const directive = m[3]?.toUpperCase();
    if (directive === 'SKIP' || directive === 'TODO') skip++;
    else if (m[1]) fail++;
    else pass++;
  } else if (/^1\.\.\d+/.test(line)) plan = true;
  else if (/^Bail out!/.test(line)) bailed = true;
}
if (!plan || bailed) fail = Math.max(fail, 1);
process.stdout.write(`${pass} passed, ${fail} failed${skip ? `, ${skip} skipped` : ''}\n`);
process.exitCode = fail > 0 || pass === 0 ? 1 : 0;
