// Binding a checkpoint to the weights a graph (or, later, an artifact's manifest) expects: every
// expected tensor present with the expected shape, converted to the expected dtype. All problems
// are gathered into one error, so a user fixes a bad checkpoint in one round.

import type { DType } from "../compiler/ir/dtype.js";
import { KilnError } from "../compiler/ir/errors.js";
import type { Tensor } from "../compiler/ir/tensor.js";
import { roundToDType } from "../compiler/ir/tensor.js";
import type { TensorSource } from "./safetensors.js";
import { toInterpreterTensor } from "./safetensors.js";

export interface ExpectedWeight {
  name: string;
  dtype: DType;
  /** numeric dims only: weights never have symbolic dims */
  shape: readonly (number | string)[];
}

export interface BindOptions {
  /** where the weights come from, for messages (a checkpoint folder) */
  where?: string;
  /** checkpoint tensors the model does not use are an error (default false: they are listed in `unused`) */
  strict?: boolean;
}

/** Checks `source` against `expected` (one error listing every problem); returns the checkpoint tensors nobody asked for. */
export function checkWeights(expected: readonly ExpectedWeight[], source: TensorSource, opts: BindOptions = {}): string[] {
  const problems: string[] = [];
  for (const w of expected) {
    if (!source.has(w.name)) {
      problems.push(`missing: ${w.name} (${w.dtype}[${w.shape.join(", ")}])`);
      continue;
    }
    const info = source.info(w.name);
    if (info.shape.length !== w.shape.length || info.shape.some((d, i) => d !== w.shape[i]))
      problems.push(`mis-shaped: ${w.name} is [${info.shape.join(", ")}], the model wants [${w.shape.join(", ")}]`);
    else if (!canConvert(info.dtype, w.dtype)) problems.push(`wrong dtype: ${w.name} is ${info.dtype}, the model wants ${w.dtype}`);
  }
  const wanted = new Set(expected.map((w) => w.name));
  const unused = source.names().filter((n) => !wanted.has(n));
  if (opts.strict) for (const n of unused) problems.push(`unexpected: ${n} (the model has no such weight)`);
  if (problems.length)
    throw new KilnError("E_WEIGHTS", `the checkpoint does not fit the model (${problems.length} problem${problems.length > 1 ? "s" : ""}):\n  ${problems.join("\n  ")}`, { where: opts.where });
  return unused;
}

/** Checks `source` against `expected` and returns interpreter tensors in the expected dtypes. */
export function bindWeights(expected: readonly ExpectedWeight[], source: TensorSource, opts: BindOptions = {}): { weights: Record<string, Tensor>; unused: string[] } {
  const unused = checkWeights(expected, source, opts);
  const weights: Record<string, Tensor> = {};
  for (const w of expected) {
    const t = toInterpreterTensor(source, w.name);
    weights[w.name] = t.dtype === w.dtype ? t : roundToDType({ ...t, dtype: w.dtype });
  }
  return { weights, unused };
}

const FLOATS: readonly DType[] = ["f32", "f16", "bf16"];
/** Floats convert among themselves (rounding to the narrower one); other dtypes must match exactly. */
const canConvert = (from: DType, to: DType): boolean => from === to || (FLOATS.includes(from) && FLOATS.includes(to));

