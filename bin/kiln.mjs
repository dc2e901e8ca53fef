#!/usr/bin/env node
// The kiln CLI. Model files are TypeScript: tsx's loader runs them (and Kiln's own sources) with
// source maps on, so errors point at .ts lines and columns.
import { register } from "tsx/esm/api";

process.setSourceMapsEnabled(true);
register();
const { main } = await import("../compiler/cli/main.ts");
process.exitCode = await main(process.argv.slice(2));
