// Parser of the IR text form (see print.ts), built with chevrotain. Errors are KilnErrors
// with code E_PARSE that give line:col and what was expected there.

import type { IToken, TokenType } from "chevrotain";
import { createToken, EmbeddedActionsParser, Lexer } from "chevrotain";
import type { Dim } from "./dim.js";
import { canonDim } from "./dim.js";
import type { DType } from "./dtype.js";
import { isDType } from "./dtype.js";
import { KilnError } from "./errors.js";
import type { AttrValue, Attrs, Graph, Loc, TensorType, Value } from "./graph.js";
import { GraphBuilder } from "./graph.js";

const T = {
  WS: createToken({ name: "WS", pattern: /[ \t\r\n]+/, group: Lexer.SKIPPED }),
  Comment: createToken({ name: "Comment", pattern: /\/\/[^\n]*/, group: Lexer.SKIPPED }),
  Ref: createToken({ name: "Ref", pattern: /%[A-Za-z0-9_.]+/ }),
  Str: createToken({ name: "Str", pattern: /"(?:[^"\\\n]|\\.)*"/ }),
  Num: createToken({ name: "Num", pattern: /\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/ }),
  Ident: createToken({ name: "Ident", pattern: /[A-Za-z_][A-Za-z0-9_]*/ }),
  LBrace: createToken({ name: "LBrace", pattern: /{/ }),
  RBrace: createToken({ name: "RBrace", pattern: /}/ }),
  LBrack: createToken({ name: "LBrack", pattern: /\[/ }),
  RBrack: createToken({ name: "RBrack", pattern: /]/ }),
  LParen: createToken({ name: "LParen", pattern: /\(/ }),
  RParen: createToken({ name: "RParen", pattern: /\)/ }),
  Comma: createToken({ name: "Comma", pattern: /,/ }),
  Colon: createToken({ name: "Colon", pattern: /:/ }),
  Eq: createToken({ name: "Eq", pattern: /=/ }),
  Plus: createToken({ name: "Plus", pattern: /\+/ }),
  Minus: createToken({ name: "Minus", pattern: /-/ }),
  Star: createToken({ name: "Star", pattern: /\*/ }),
};
const kw = (word: string): TokenType => createToken({ name: `Kw_${word}`, pattern: new RegExp(word), longer_alt: T.Ident });
const K = {
  graph: kw("graph"),
  input: kw("input"),
  param: kw("param"),
  output: kw("output"),
  loc: kw("loc"),
  true: kw("true"),
  false: kw("false"),
  inf: kw("inf"),
  nan: kw("nan"),
};
const ALL: TokenType[] = [T.WS, T.Comment, T.Ref, T.Str, T.Num, ...Object.values(K), T.Ident, T.LBrace, T.RBrace, T.LBrack, T.RBrack, T.LParen, T.RParen, T.Comma, T.Colon, T.Eq, T.Plus, T.Minus, T.Star];
const lexer = new Lexer(ALL, { positionTracking: "full", ensureOptimizations: false });

const perr = (tok: IToken, msg: string): KilnError =>
  new KilnError("E_PARSE", `${tok.startLine}:${tok.startColumn}: ${msg}`);

interface Decl {
  kind: "input" | "param";
  ref: IToken;
  type: TensorType;
}
interface NodeDecl {
  ref: IToken;
  type: TensorType;
  op: IToken;
  operands: IToken[];
  attrs: Attrs;
  loc?: Loc;
}
interface OutDecl {
  name: string;
  ref: IToken;
}

/** An expression `-? atom (* atom)* ((+|-) atom (* atom)*)*`: a number, or a dim polynomial. */
type Scalar = number | string;

class IRParser extends EmbeddedActionsParser {
  constructor() {
    super(ALL, { recoveryEnabled: false, maxLookahead: 3 });
    this.performSelfAnalysis();
  }

  private unquote(tok: IToken): string {
    if (this.RECORDING_PHASE) return "";
    try {
      return JSON.parse(tok.image) as string;
    } catch {
      throw perr(tok, `malformed string ${tok.image}`);
    }
  }

  name = this.RULE("name", (): string => {
    return this.OR([
      { ALT: () => this.CONSUME(T.Ident).image },
      { ALT: () => this.unquote(this.CONSUME(T.Str)) },
    ]);
  });

  atom = this.RULE("atom", (): { text: string; symbolic: boolean } => {
    return this.OR([
      { ALT: () => ({ text: this.CONSUME(T.Num).image, symbolic: false }) },
      { ALT: () => ({ text: this.CONSUME(T.Ident).image, symbolic: true }) },
      { ALT: () => (this.CONSUME(K.inf), { text: "Infinity", symbolic: false }) },
      { ALT: () => (this.CONSUME(K.nan), { text: "NaN", symbolic: false }) },
    ]);
  });

  expr = this.RULE("expr", (): Scalar => {
    let text = "";
    let symbolic = false;
    let compound = false;
    this.OPTION(() => {
      this.CONSUME(T.Minus);
      text += "-";
    });
    const first = this.SUBRULE(this.atom);
    text += first.text;
    symbolic = first.symbolic;
    this.MANY(() => {
      text += this.OR([
        { ALT: () => this.CONSUME(T.Star).image },
        { ALT: () => this.CONSUME(T.Plus).image },
        { ALT: () => this.CONSUME2(T.Minus).image },
      ]);
      const next = this.SUBRULE2(this.atom);
      text += next.text;
      symbolic ||= next.symbolic;
      compound = true;
    });
    if (this.RECORDING_PHASE) return 0;
    if (symbolic) return canonDim(text);
    if (compound) throw new KilnError("E_PARSE", `'${text}': arithmetic is only allowed on symbolic dims`);
    return Number(text);
  });

  attrValue = this.RULE("attrValue", (): AttrValue => {
    return this.OR([
      { ALT: () => (this.CONSUME(K.true), true) },
      { ALT: () => (this.CONSUME(K.false), false) },
      { ALT: () => this.unquote(this.CONSUME(T.Str)) },
      {
        ALT: () => {
          const items: AttrValue[] = [];
          this.CONSUME(T.LBrack);
          this.MANY_SEP({ SEP: T.Comma, DEF: () => items.push(this.SUBRULE(this.attrValue)) });
          this.CONSUME(T.RBrack);
          return items;
        },
      },
      { ALT: () => this.SUBRULE(this.expr) },
    ]);
  });

  type = this.RULE("type", (): TensorType => {
    const dt = this.CONSUME(T.Ident);
    const shape: Dim[] = [];
    this.CONSUME(T.LBrack);
    this.MANY_SEP({ SEP: T.Comma, DEF: () => shape.push(this.SUBRULE(this.expr)) });
    this.CONSUME(T.RBrack);
    if (this.RECORDING_PHASE) return { dtype: "f32", shape };
    if (!isDType(dt.image)) throw perr(dt, `unknown dtype '${dt.image}' (expected one of f32, f16, bf16, i64, i32, i8, u8, bool)`);
    for (const d of shape) if (typeof d === "number" && !(Number.isInteger(d) && d >= 0)) throw perr(dt, `dim ${d} is not a non-negative integer`);
    return { dtype: dt.image as DType, shape: shape.map(canonDim) };
  });

  decl = this.RULE("decl", (): Decl => {
    const kind = this.OR([
      { ALT: () => (this.CONSUME(K.input), "input" as const) },
      { ALT: () => (this.CONSUME(K.param), "param" as const) },
    ]);
    const ref = this.CONSUME(T.Ref);
    this.CONSUME(T.Colon);
    return { kind, ref, type: this.SUBRULE(this.type) };
  });

  node = this.RULE("node", (): NodeDecl => {
    const ref = this.CONSUME(T.Ref);
    this.CONSUME(T.Colon);
    const type = this.SUBRULE(this.type);
    this.CONSUME(T.Eq);
    const op = this.CONSUME(T.Ident);
    const operands: IToken[] = [];
    this.CONSUME(T.LParen);
    this.MANY_SEP({ SEP: T.Comma, DEF: () => operands.push(this.CONSUME2(T.Ref)) });
    this.CONSUME(T.RParen);
    const attrs: Attrs = {};
    this.OPTION(() => {
      this.CONSUME(T.LBrace);
      this.MANY_SEP2({
        SEP: T.Comma,
        DEF: () => {
          const k = this.CONSUME2(T.Ident);
          this.CONSUME2(T.Eq);
          const v = this.SUBRULE(this.attrValue);
          if (!this.RECORDING_PHASE && k.image in attrs) throw perr(k, `attribute '${k.image}' is given twice`);
          attrs[k.image] = v;
        },
      });
      this.CONSUME(T.RBrace);
    });
    let loc: Loc | undefined;
    this.OPTION2(() => {
      this.CONSUME(K.loc);
      this.CONSUME2(T.LParen);
      const file = this.CONSUME(T.Str);
      this.CONSUME3(T.Colon);
      const line = this.CONSUME(T.Num);
      this.CONSUME4(T.Colon);
      const col = this.CONSUME2(T.Num);
      this.CONSUME2(T.RParen);
      if (!this.RECORDING_PHASE) loc = { file: this.unquote(file), line: Number(line.image), col: Number(col.image) };
    });
    return { ref, type, op, operands, attrs, loc };
  });

  output = this.RULE("output", (): OutDecl => {
    this.CONSUME(K.output);
    const name = this.SUBRULE(this.name);
    this.CONSUME(T.Eq);
    return { name, ref: this.CONSUME(T.Ref) };
  });

  graph = this.RULE("graph", () => {
    this.CONSUME(K.graph);
    const name = this.SUBRULE(this.name);
    this.CONSUME(T.LBrace);
    const decls: Decl[] = [];
    const nodes: NodeDecl[] = [];
    const outputs: OutDecl[] = [];
    this.MANY(() => decls.push(this.SUBRULE(this.decl)));
    this.MANY2(() => nodes.push(this.SUBRULE(this.node)));
    this.MANY3(() => outputs.push(this.SUBRULE(this.output)));
    this.CONSUME(T.RBrace);
    return { name, decls, nodes, outputs };
  });
}

const parser = new IRParser();

/** Parses the text form. Checks names (every %ref defined once, before use); `verify` checks the rest. */
export function parse(text: string): Graph {
  const lex = lexer.tokenize(text);
  if (lex.errors.length) {
    const e = lex.errors[0];
    throw new KilnError("E_PARSE", `${e.line}:${e.column}: unexpected character '${text.substr(e.offset, 1)}'`);
  }
  parser.input = lex.tokens;
  const ast = parser.graph();
  if (parser.errors.length) {
    const e = parser.errors[0];
    const t = e.token;
    const at = Number.isFinite(t.startLine) ? `${t.startLine}:${t.startColumn}` : "end of input";
    throw new KilnError("E_PARSE", `${at}: ${e.message}`);
  }
  const b = new GraphBuilder(ast.name);
  const scope = new Map<string, Value>();
  const define = (tok: IToken, v: Value): void => {
    if (scope.has(tok.image)) throw perr(tok, `${tok.image} is defined twice`);
    scope.set(tok.image, v);
  };
  const use = (tok: IToken): Value => {
    const v = scope.get(tok.image);
    if (!v) throw perr(tok, `${tok.image} is not defined (before this use)`);
    return v;
  };
  for (const d of ast.decls) define(d.ref, d.kind === "input" ? b.input(d.ref.image.slice(1), d.type) : b.param(d.ref.image.slice(1), d.type));
  for (const n of ast.nodes) {
    const operands = n.operands.map(use);
    if (!/^%\d+$/.test(n.ref.image)) throw perr(n.ref, `op results are numbered (%0, %1, ...), got ${n.ref.image}`);
    define(n.ref, b.node(n.op.image, operands, n.attrs, n.type, n.loc));
  }
  for (const o of ast.outputs) b.output(o.name, use(o.ref));
  return b.graph;
}
