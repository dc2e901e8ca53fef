// `kiln` command line. Each command is a thin shell over the public API; failures Kiln reports
// on purpose (KilnError) print as `kiln: error[CODE] where: message` and exit 1.

import { Command, CommanderError, Option } from "commander";
import { traceModel } from "../dsl/model.js";
import type { DType } from "../ir/dtype.js";
import { KilnError } from "../ir/errors.js";
import { print, toJSON } from "../ir/print.js";
import { modelFor } from "../../models/index.js";
import { demo } from "./demo.js";
import { loadModelFile, readHFConfig } from "./load-model.js";

export interface IO {
  out: (s: string) => void;
  err: (s: string) => void;
}
const stdio: IO = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

const dtypeOption = () => new Option("--dtype <dtype>", "dtype of weights and activations").choices(["f32", "bf16", "f16"]).default("f32");

export function program(io: IO = stdio): Command {
  const p = new Command("kiln")
    .description("a compiler for transformer inference")
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .exitOverride();

  p.command("ir")
    .description("trace a model file with a Hugging Face config and print its IR")
    .argument("<model>", "model file (TypeScript; its default export is a defineModel(...) value), or a Hugging Face checkpoint folder or config.json (the model is picked by model_type)")
    .option("--config <path>", "config.json, or the checkpoint folder holding it (required with a model file)")
    .option("--json", "print the graph as JSON instead of the text form")
    .option("--no-typecheck", "skip type-checking the model file")
    .addOption(dtypeOption())
    .action(async (model: string, o: { config?: string; json?: boolean; typecheck: boolean; dtype: DType }) => {
      const { def, config } = await resolveModel(model, o);
      const g = traceModel(def, config, { dtype: o.dtype });
      io.out(o.json ? `${JSON.stringify(toJSON(g), null, 2)}\n` : print(g));
    });

  p.command("demo")
    .description("write a tiny random Llama checkpoint, trace it, load it and generate")
    .option("--out <dir>", "where to write the checkpoint (default: <tmp>/kiln-demo)")
    .option("--tokens <n>", "new tokens to generate", (v) => positiveInt(v, "--tokens"), 16)
    .option("--seed <n>", "seed of the random weights", (v) => positiveInt(v, "--seed"), 0)
    .action(async (o: { out?: string; tokens: number; seed: number }) => {
      await demo({ ...o, log: io.out });
    });

  return p;
}

function positiveInt(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new KilnError("E_USAGE", `${what} must be a non-negative integer, got '${v}'`);
  return n;
}

/** A model file plus --config, or a checkpoint folder / config.json whose model_type picks the model. */
async function resolveModel(model: string, o: { config?: string; typecheck: boolean }) {
  if (/\.[cm]?tsx?$/.test(model)) {
    if (!o.config) throw new KilnError("E_USAGE", "--config <config.json> is required with a model file", { where: model });
    const def = await loadModelFile(model, { typecheck: o.typecheck, color: process.stderr.isTTY });
    const { json, file } = readHFConfig(o.config);
    return { def, config: def.fromHF(json, file) };
  }
  const { json, file } = readHFConfig(o.config ?? model);
  const def = modelFor(json, file);
  return { def, config: def.fromHF(json, file) };
}

/** Runs the CLI; resolves to the process exit code. */
export async function main(argv: string[], io: IO = stdio): Promise<number> {
  try {
    await program(io).parseAsync(argv, { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    if (e instanceof KilnError) {
      io.err(`kiln: error[${e.code}] ${e.message}\n`);
      return 1;
    }
    io.err(`kiln: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
    return 2;
  }
}

