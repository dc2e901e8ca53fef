// Loading a model file: type-check it with ts-morph (so the user sees their TypeScript errors
// with code frames before anything runs), then import it and check that its default export is
// a model definition. Reading a Hugging Face config.json with errors that name the file.

import { existsSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Project, ts } from "ts-morph";
import type { ModelDef } from "../dsl/model.js";
import { KilnError } from "../ir/errors.js";

const ANSI = /\x1b\[[0-9;]*m/g;

/** TypeScript diagnostics of one model file (and what it imports), formatted with code frames; "" when clean. */
export function typeCheckModelFile(file: string, opts: { color?: boolean } = {}): string {
  const project = new Project({
    compilerOptions: {
      strict: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      lib: ["lib.es2023.d.ts"],
      types: [],
      skipLibCheck: true,
      noEmit: true,
    },
  });
  const sf = project.addSourceFileAtPath(file);
  project.resolveSourceFileDependencies();
  const diags = sf.getPreEmitDiagnostics();
  if (diags.length === 0) return "";
  const text = project.formatDiagnosticsWithColorAndContext(diags);
  return opts.color ? text : text.replace(ANSI, "");
}

export interface LoadOptions {
  /** type-check with ts-morph first (default true) */
  typecheck?: boolean;
  color?: boolean;
}

/** Imports a model file (its default export must be a `defineModel(...)` value). */
export async function loadModelFile(file: string, opts: LoadOptions = {}): Promise<ModelDef<unknown>> {
  const abs = resolve(file);
  if (!existsSync(abs) || !statSync(abs).isFile()) throw new KilnError("E_IO", "model file not found", { where: file });
  if (opts.typecheck ?? true) {
    const report = typeCheckModelFile(abs, opts);
    if (report) throw new KilnError("E_MODEL", `the model file does not type-check:\n\n${report}`, { where: file });
  }
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(abs).href)) as { default?: unknown };
  } catch (e) {
    if (e instanceof KilnError) throw e;
    throw new KilnError("E_MODEL", `importing the model file failed: ${(e as Error).message}`, { where: file, cause: e });
  }
  const def = mod.default as Partial<ModelDef<unknown>> | undefined;
  const missing = ["family", "fromHF", "inputs", "create"].filter((k) => !def || !(k in def));
  if (missing.length)
    throw new KilnError("E_MODEL", `the default export is not a model definition (made with defineModel); it lacks ${missing.join(", ")}`, { where: file });
  return def as ModelDef<unknown>;
}

/** Reads a Hugging Face config.json, given the file or the checkpoint folder holding it. */
export function readHFConfig(path: string): { json: Record<string, unknown>; file: string } {
  const file = existsSync(path) && statSync(path).isDirectory() ? join(path, "config.json") : path;
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new KilnError("E_IO", `cannot read the config: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { where: file, cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new KilnError("E_CONFIG", `not valid JSON: ${(e as Error).message}`, { where: file });
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new KilnError("E_CONFIG", "a config.json must hold a JSON object", { where: file });
  return { json: json as Record<string, unknown>, file };
}
