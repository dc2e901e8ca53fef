// Modules and parameters. A model is a tree of Modules whose property names are the Hugging
// Face module names, so parameter names come out as checkpoint tensor names
// ("model.layers.0.self_attn.q_proj.weight") with no renaming table.

import type { Dim } from "../ir/dim.js";
import { canonDim } from "../ir/dim.js";
import type { DType } from "../ir/dtype.js";
import { KilnError } from "../ir/errors.js";
import { Tensor, traceContext } from "./tensor.js";

export class Parameter {
  /** the Hugging Face tensor name; assigned by `nameParameters` from the module tree */
  name = "";
  readonly shape: Dim[];
  constructor(shape: Dim[], readonly dtype?: DType) {
    this.shape = shape.map(canonDim);
  }

  /** The parameter as a traced tensor (one graph param per parameter, however often it is used). */
  get t(): Tensor {
    const ctx = traceContext();
    if (!this.name) throw new KilnError("E_MODEL", "a Parameter was used before the model's parameters were named (is it attached to the module tree?)");
    let v = ctx.params.get(this.name);
    if (!v) {
      v = ctx.builder.param(this.name, { dtype: this.dtype ?? defaultDType(), shape: this.shape });
      ctx.params.set(this.name, v);
    }
    return new Tensor(v);
  }
}

let paramDType: DType = "f32";
export const defaultDType = (): DType => paramDType;
export function withParamDType<T>(d: DType, f: () => T): T {
  const prev = paramDType;
  paramDType = d;
  try {
    return f();
  } finally {
    paramDType = prev;
  }
}

export abstract class Module {
  /** Child modules and parameters with their names relative to this module. */
  *namedChildren(): Generator<[string, Module | Parameter]> {
    for (const [key, v] of Object.entries(this)) {
      if (v instanceof Module || v instanceof Parameter) yield [key, v];
      else if (Array.isArray(v)) {
        for (let i = 0; i < v.length; i++) if (v[i] instanceof Module || v[i] instanceof Parameter) yield [`${key}.${i}`, v[i]];
      }
    }
  }

  /** Every parameter with its full name; a parameter shared by two modules (tied weights) appears once, under its first name. */
  namedParameters(prefix = ""): [string, Parameter][] {
    const out: [string, Parameter][] = [];
    const seen = new Set<Parameter>();
    const walk = (m: Module, p: string): void => {
      for (const [k, v] of m.namedChildren()) {
        if (v instanceof Parameter) {
          if (!seen.has(v)) {
            seen.add(v);
            out.push([p + k, v]);
          }
        } else walk(v, `${p}${k}.`);
      }
    };
    walk(this, prefix);
    return out;
  }

  /** Gives every parameter its Hugging Face name. */
  nameParameters(): void {
    for (const [name, p] of this.namedParameters()) p.name = name;
  }
}
