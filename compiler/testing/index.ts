// kiln/testing: the property-testing kit Kiln's own tests use, for users' passes and models.
// Random dims, shapes, tensors, masks and valid graphs (arbitraries.ts); tensor comparison,
// pass checking against the reference interpreter, and the text-form round trip (check.ts).

export * from "./arbitraries.js";
export * from "./check.js";
export * from "./random.js";
