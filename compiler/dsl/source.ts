// Where in the user's model file an op was written: the first stack frame outside Kiln's own
// compiler folder. Model files run under a TypeScript loader with source maps on (tsx in the
// CLI, ts-jest in tests), so the line and column are those of the .ts source.

import { readFileSync } from "node:fs";
import { relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import type { Loc } from "../ir/graph.js";

const COMPILER_DIR = fileURLToPath(new URL("..", import.meta.url)); // .../compiler/
const FRAME = /\(?((?:file:\/\/)?\/[^():]+|[A-Za-z]:\\[^():]+):(\d+):(\d+)\)?$/;

export function callerLoc(): Loc | undefined {
  const stack = new Error().stack ?? "";
  for (const line of stack.split("\n").slice(1)) {
    const m = FRAME.exec(line.trim());
    if (!m) continue;
    const file = m[1].startsWith("file://") ? fileURLToPath(m[1]) : m[1];
    if (file.startsWith(COMPILER_DIR) || file.includes(`${sep}node_modules${sep}`)) continue;
    return { file: displayPath(file), line: Number(m[2]), col: Number(m[3]) };
  }
  return undefined;
}

/** Paths inside the working directory print relative to it; others stay absolute. */
export function displayPath(file: string): string {
  const rel = relative(process.cwd(), file);
  return rel.startsWith("..") ? file : rel;
}

/** A few lines of source around `loc`, with a caret under the column. */
export function codeFrame(loc: Loc, context = 2): string {
  let lines: string[];
  try {
    lines = readFileSync(loc.file, "utf8").split("\n");
  } catch {
    return "";
  }
  const from = Math.max(1, loc.line - context);
  const to = Math.min(lines.length, loc.line + context);
  const width = String(to).length;
  const out: string[] = [];
  for (let n = from; n <= to; n++) {
    const mark = n === loc.line ? ">" : " ";
    out.push(`${mark} ${String(n).padStart(width)} | ${lines[n - 1]}`);
    if (n === loc.line) out.push(`  ${" ".repeat(width)} | ${" ".repeat(Math.max(0, loc.col - 1))}^`);
  }
  return out.join("\n");
}
