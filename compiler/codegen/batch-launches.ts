// Batching of small independent launches in the generated forward body (both targets get the same
// translation unit; on the cpu target a batch runs its parts one after another).
//
// At decode every elementwise op and cache write is a kernel of a few blocks, and a layer of a
// Llama-style model has four of them in a row after its q/k/v linears: RoPE of q, RoPE of k, the
// k and the v cache writes. Each launch costs a graph node and a kernel's start and drain, more
// than its work. This pass looks at the emitted body and replaces a run of consecutive
// `K::for_each(...)` / `K::cache_write<T>(...)` calls that are independent — none reads a buffer
// another writes, none writes a buffer another reads or writes — by one `K::for_each_n(...)` of
// their functors (the cache write as `K::cache_write_each<T>`). Between two such calls only host
// bookkeeping may stand (comments, op marks, allocations, aliases, constants); the releases found
// there move after the batched call, so no buffer a batched part still reads is handed out again.
// Buffers are compared through the body's aliases (`T* vN = vM;`). Under KILN_PROFILE=ops a
// batch's time is counted under the op kind marked last before it. Launches emitted behind a
// rope-fusion flag (`if (!rfN) K::…`, rope-fusion.ts) batch only with launches behind the same flag,
// and the batch keeps it.

interface Launch {
  /** the part's expression inside for_each_n */
  part: string;
  /** the line as emitted (a batch of one keeps it) */
  line: string;
  reads: Set<string>;
  writes: Set<string>;
  /** `if (!rfN) ` where the launch runs only then (rope-fusion.ts), else "" — a batch shares one */
  guard: string;
}

const IDENT = /\b[vxw]\d+\b/g;
const idents = (s: string): string[] => s.match(IDENT) ?? [];

/** the index just past the bracket that closes the one at `open` ('{' or '('), or -1 */
function closing(s: string, open: number): number {
  const o = s[open];
  const c = o === "{" ? "}" : ")";
  let depth = 0;
  for (let i = open; i < s.length; i++) {
    if (s[i] === o) depth++;
    else if (s[i] === c && --depth === 0) return i + 1;
  }
  return -1;
}

/** the top-level comma-separated arguments of `s` (no enclosing brackets) */
function splitArgs(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const ch = s[i];
    if (ch === "(" || ch === "{" || ch === "[" || ch === "<") depth++;
    else if (ch === ")" || ch === "}" || ch === "]" || ch === ">") depth--;
    else if (ch === "," && depth === 0) {
      out.push(s.slice(start, i).trim());
      start = i + 1;
    }
  }
  out.push(s.slice(start).trim());
  return out;
}

/** a batchable launch line (at the body's top level: two spaces in, not inside a block), or undefined */
export function parseLaunch(line: string): Launch | undefined {
  const g = /^ {2}(if \(!rf\d+\) )/.exec(line);
  const guard = g ? g[1] : "";
  if (g) line = `  ${line.slice(2 + guard.length)}`;
  const l = parseUnguarded(line);
  return l && { ...l, line: `  ${guard}${line.slice(2)}`, guard };
}
function parseUnguarded(line: string): Omit<Launch, "guard"> | undefined {
  let m = /^ {2}K::for_each\((F(\d+))\{/.exec(line);
  if (m) {
    const open = line.indexOf("{", line.indexOf(m[1]));
    const end = closing(line, open);
    if (end < 0) return undefined;
    const functor = line.slice(line.indexOf(m[1]), end);
    const rest = /^, (.+)\);\s*$/.exec(line.slice(end));
    if (!rest) return undefined;
    const out = `v${m[2]}`;
    return { part: `kiln::each(${functor}, ${rest[1]})`, line, reads: new Set(idents(functor).filter((x) => x !== out)), writes: new Set([out]) };
  }
  m = /^ {2}K::cache_write<([^>]+)>\((.*)\);\s*$/.exec(line);
  if (m) {
    const args = splitArgs(m[2]);
    if (args.length !== 7 && args.length !== 11) return undefined;
    return { part: `K::cache_write_each<${m[1]}>(${m[2]})`, line, reads: new Set(args.slice(1).flatMap(idents)), writes: new Set(idents(args[0])) };
  }
  return undefined;
}

/** host bookkeeping a batch may span (kept in place); releases are deferred past the batch */
const ALIAS = /^\s*[\w:]+\* (v\d+) = ([vx]\d+);/;
const SPANNABLE = [/^\s*\/\//, /^\s*rt::op_mark\(/, /^\s*[\w:]+\* v\d+ = \([\w:]+\*\)rt::(alloc|constant)\(/, ALIAS];
const RELEASE = /^\s*rt::release\(/;

/** body lines with runs of independent small launches batched (see the file's comment) */
export function batchLaunches(body: readonly string[]): string[] {
  const alias = new Map<string, string>();
  for (const l of body) {
    const m = ALIAS.exec(l);
    if (m) alias.set(m[1], m[2]);
  }
  const root = (x: string): string => {
    let r = x;
    for (let k = 0; k < 64 && alias.has(r); k++) r = alias.get(r)!;
    return r;
  };
  const roots = (s: Set<string>): Set<string> => new Set([...s].map(root));
  const out: string[] = [];
  let batch: { l: Launch; r: Set<string>; w: Set<string> }[] = [];
  let deferred: string[] = [];
  const flush = (): void => {
    if (batch.length === 1) out.push(batch[0].l.line);
    else if (batch.length > 1) out.push(`  ${batch[0].l.guard}K::for_each_n(${batch.map((b) => b.l.part).join(", ")});`);
    out.push(...deferred);
    batch = [];
    deferred = [];
  };
  const meets = (a: Set<string>, b: Set<string>): boolean => [...a].some((x) => b.has(x));
  for (const line of body) {
    const l = parseLaunch(line);
    if (l) {
      const r = roots(l.reads);
      const w = roots(l.writes);
      if (batch.some((b) => b.l.guard !== l.guard || meets(r, b.w) || meets(w, b.r) || meets(w, b.w))) flush();
      batch.push({ l, r, w });
      continue;
    }
    if (batch.length && RELEASE.test(line)) {
      deferred.push(line);
      continue;
    }
    if (batch.length && SPANNABLE.some((re) => re.test(line))) {
      out.push(line);
      continue;
    }
    flush();
    out.push(line);
  }
  flush();
  return out;
}
