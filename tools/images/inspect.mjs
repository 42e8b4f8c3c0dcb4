// tools/images/inspect.mjs FILE... — lint, validate and parse drvrun's
// Dockerfiles and Kubernetes manifests with real tools from npm, and print what
// they found as a Lua chunk (`return { {...}, ... }`, one table per FILE, in
// order) for tools/images.lua, which compares it with the recipes.
//
// A file named *.yaml or *.yml is a manifest: every document is parsed (yaml)
// and validated against the Kubernetes schemas of its apiVersion and kind
// (kubernetes-models). Any other file is a Dockerfile: linted with
// dockerfile-utils (every diagnostic counts) and parsed with dockerfile-ast.
// Exit status: 0 when every file could be read (problems are in the output), 2 otherwise.
import { readFileSync } from "node:fs";
import { validate as lintDockerfile } from "dockerfile-utils";
import { DockerfileParser } from "dockerfile-ast";
import { parseAllDocuments } from "yaml";
import { DaemonSet } from "kubernetes-models/apps/v1/DaemonSet";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { ServiceAccount } from "kubernetes-models/v1/ServiceAccount";

const MODELS = {
  "apps/v1 DaemonSet": DaemonSet,
  "v1 Namespace": Namespace,
  "v1 ServiceAccount": ServiceAccount,
};

// ---- Lua literals --------------------------------------------------------------
function luaString(s) {
  return '"' + s.replace(/[\\"\x00-\x1f\x7f]/g, (c) => {
    if (c === "\\" || c === '"') return "\\" + c;
    if (c === "\n") return "\\n";
    return "\\" + String(c.charCodeAt(0)).padStart(3, "0");
  }) + '"';
}

function toLua(v, indent = "") {
  if (v === null || v === undefined) return "nil";
  if (typeof v === "boolean" || typeof v === "number") return String(v);
  if (typeof v === "string") return luaString(v);
  const inner = indent + "  ";
  if (Array.isArray(v)) {
    if (v.length === 0) return "{}";
    return "{\n" + v.map((x) => inner + toLua(x, inner) + ",\n").join("") + indent + "}";
  }
  const keys = Object.keys(v).filter((k) => v[k] !== undefined && v[k] !== null);
  if (keys.length === 0) return "{}";
  return "{\n" + keys.map((k) => `${inner}[${luaString(k)}] = ${toLua(v[k], inner)},\n`).join("") + indent + "}";
}

// ---- Dockerfiles -----------------------------------------------------------------
const SEVERITY = { 1: "error", 2: "warning", 3: "information", 4: "hint" };

function execForm(text) {
  const start = text ? text.indexOf("[") : -1;
  if (start < 0) return undefined;
  try {
    const v = JSON.parse(text.slice(start));
    return Array.isArray(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

function describeInstruction(ins) {
  const keyword = ins.getKeyword();
  const d = {
    keyword,
    line: ins.getRange().start.line + 1,
    args: ins.getArguments().map((a) => a.getValue()),
    variables: ins.getVariables().map((v) => v.getName()),
    text: ins.getArgumentsContent() || "",
  };
  if (typeof ins.getFlags === "function") {
    d.flags = {};
    for (const f of ins.getFlags()) d.flags[f.getName()] = f.getValue() ?? "";
  }
  if (keyword === "ARG" || keyword === "ENV") {
    const props = keyword === "ARG" ? [ins.getProperty()].filter(Boolean) : ins.getProperties();
    d.properties = props.map((p) => ({ name: p.getName(), value: p.getValue() ?? undefined }));
  }
  if (keyword === "ENTRYPOINT" || keyword === "CMD") d.exec = execForm(d.text);
  if (keyword === "HEALTHCHECK") {
    const sub = ins.getSubcommand();
    d.subcommand = sub ? sub.getValue().toUpperCase() : undefined;
    d.exec = execForm(d.text.slice(d.text.search(/\bCMD\b/i) + 3));
  }
  if (keyword === "FROM") {
    d.image = ins.getImage() ?? undefined;
    d.stage = ins.getBuildStage() ?? undefined;
  }
  return d;
}

function inspectDockerfile(path, text) {
  const lint = lintDockerfile(text).map((diag) => ({
    line: diag.range.start.line + 1,
    severity: SEVERITY[diag.severity] || String(diag.severity),
    code: diag.code === undefined ? undefined : String(diag.code),
    message: diag.message,
  }));
  const dockerfile = DockerfileParser.parse(text);
  const stages = [];
  const initial = [];
  for (const ins of dockerfile.getInstructions()) {
    const d = describeInstruction(ins);
    if (d.keyword === "FROM") stages.push({ from: d, instructions: [] });
    else if (stages.length === 0) initial.push(d);
    else stages[stages.length - 1].instructions.push(d);
  }
  return { path, kind: "dockerfile", lint, initial, stages };
}

// ---- manifests -------------------------------------------------------------------
function validateObject(obj) {
  if (!obj || typeof obj !== "object") return "not a Kubernetes object";
  const Model = MODELS[`${obj.apiVersion} ${obj.kind}`];
  if (!Model) return `no schema for apiVersion ${obj.apiVersion} kind ${obj.kind} (known: ${Object.keys(MODELS).join(", ")})`;
  try {
    new Model(obj).validate();
  } catch (e) {
    return String(e.message || e);
  }
  return undefined;
}

function inspectManifest(path, text) {
  const errors = [];
  const objects = [];
  parseAllDocuments(text).forEach((doc, i) => {
    const where = `document ${i + 1}`;
    for (const e of doc.errors) errors.push(`${where}: YAML: ${e.message}`);
    if (doc.errors.length > 0) return;
    const obj = doc.toJS();
    if (obj === null || obj === undefined) return;
    const err = validateObject(obj);
    if (err) errors.push(`${where} (${obj.kind || "?"} ${obj.metadata?.name || "?"}): ${err}`);
    objects.push(obj);
  });
  return { path, kind: "manifest", errors, objects };
}

// ---- main ------------------------------------------------------------------------
const results = [];
let status = 0;
for (const path of process.argv.slice(2)) {
  let text;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    results.push({ path, kind: "unreadable", errors: [String(e.message)] });
    status = 2;
    continue;
  }
  results.push(/\.ya?ml$/.test(path) ? inspectManifest(path, text) : inspectDockerfile(path, text));
}
process.stdout.write("return " + toLua(results) + "\n");
process.exit(status);
