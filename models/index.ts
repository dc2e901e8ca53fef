// The map from a Hugging Face config.json to a model definition: `model_type` picks the family.

import { KilnError } from "../compiler/ir/errors.js";
import type { ModelDef } from "../compiler/dsl/model.js";
import bert from "./bert.js";
import bloom from "./bloom.js";
import falcon from "./falcon.js";
import llama from "./llama.js";
import opt from "./opt.js";

export const MODELS: ModelDef<any>[] = [llama, falcon, opt, bloom, bert];

/** The definition whose `modelTypes` include the config's `model_type`; an unknown type names the ones Kiln has. */
export function modelFor(json: Record<string, unknown>, source = "config.json"): ModelDef<unknown> {
  const type = json.model_type;
  if (typeof type !== "string") throw new KilnError("E_CONFIG", "'model_type' is missing (Kiln picks the model from it)", { where: source });
  const def = MODELS.find((m) => m.modelTypes.includes(type));
  if (!def) {
    const known = MODELS.flatMap((m) => m.modelTypes).join(", ");
    throw new KilnError("E_CONFIG", `'model_type' is '${type}', which Kiln does not support (supported: ${known})`, { where: source });
  }
  return def;
}

export { bert, bloom, falcon, llama, opt };
