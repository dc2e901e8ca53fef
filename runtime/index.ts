// The package's main entry (`import { compile, loadModel } from "kiln"`).
export { compile, DEFAULT_PASSES } from "../compiler/codegen/compile.js";
export type { CompileOptions, CompiledArtifact } from "../compiler/codegen/compile.js";
export { readManifest } from "../compiler/codegen/build.js";
export type { Manifest } from "../compiler/codegen/build.js";
export { KilnError, isKilnError } from "../compiler/ir/errors.js";
export { loadModel, Model } from "./api.js";
export type { EncodeOptions, EncodeResult, ForwardOptions, ForwardResult, GeneratedToken, LoadOptions } from "./api.js";
export type { SamplingOptions } from "./sampling.js";
