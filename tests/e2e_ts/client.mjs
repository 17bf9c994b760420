// Drives sandgate with the official MCP TypeScript SDK client and prints one JSON report.
//
//   node client.mjs PLAN.json
//
// PLAN: {"transport": "stdio", "command": "...", "args": [...], "env": {...}}
//    or {"transport": "http", "url": "http://127.0.0.1:PORT/mcp", "token": "..."},
//   plus "calls": [{"tool": NAME, "arguments": {...}}, ...] and optionally
//   "cancel": {"tool": NAME, "arguments": {...}, "after_ms": N, "then": {"tool": ..., ...}}.
//
// The SDK checks each result against its CallToolResult schema and, for a tool listed with an
// outputSchema, the structured content against that schema (callTool after listTools); a
// failure is reported as the call's `sdk_error`. An answer to a cancelled request reaches the
// client's onerror ("unknown message ID"): reported in `stray`.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { readFileSync } from "node:fs";

const REQUEST_TIMEOUT_MS = 180_000;

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const stray = [];
const client = new Client({ name: "sandgate-e2e", version: "1.0.0" });
client.onerror = (error) => stray.push(String(error?.message ?? error));

function transportOf(p) {
  if (p.transport === "stdio") {
    return new StdioClientTransport({ command: p.command, args: p.args, env: p.env, stderr: "inherit" });
  }
  const headers = p.token ? { Authorization: `Bearer ${p.token}` } : {};
  return new StreamableHTTPClientTransport(new URL(p.url), { requestInit: { headers } });
}

function summary(result) {
  const text = result.content.filter((b) => b.type === "text").map((b) => b.text).join("");
  return {
    is_error: Boolean(result.isError),
    text_bytes: Buffer.byteLength(text, "utf8"),
    text: text.length > 2000 ? `${text.slice(0, 1000)}…${text.slice(-1000)}` : text,
    block_types: result.content.map((b) => b.type),
    image_bytes: result.content
      .filter((b) => b.type === "image")
      .map((b) => Buffer.from(b.data, "base64").length),
    links: result.content.filter((b) => b.type === "resource_link").map((b) => b.uri),
    structured: result.structuredContent ?? null,
    structured_bytes: result.structuredContent
      ? Buffer.byteLength(JSON.stringify(result.structuredContent), "utf8")
      : 0,
  };
}

async function call(tool, args, options = {}) {
  try {
    const result = await client.callTool({ name: tool, arguments: args }, undefined, {
      timeout: REQUEST_TIMEOUT_MS,
      ...options,
    });
    const entry = { tool, sdk_error: null, ...summary(result) };
    for (const uri of entry.links) {
      const read = await client.readResource({ uri });
      entry.linked_bytes = (entry.linked_bytes ?? 0) + Buffer.byteLength(read.contents[0].text ?? "", "utf8");
    }
    return entry;
  } catch (error) {
    return { tool, sdk_error: String(error?.message ?? error) };
  }
}

const report = { tools: [], calls: [], cancel: null, stray };
await client.connect(transportOf(plan));
try {
  const listed = await client.listTools();
  report.tools = listed.tools.map((t) => ({
    name: t.name,
    title: t.title ?? null,
    description: t.description ?? "",
    annotations: t.annotations ?? null,
    output_schema: Boolean(t.outputSchema),
  }));
  for (const { tool, arguments: args } of plan.calls ?? []) {
    report.calls.push(await call(tool, args));
  }
  if (plan.cancel) {
    const controller = new AbortController();
    const pending = call(plan.cancel.tool, plan.cancel.arguments, { signal: controller.signal });
    setTimeout(() => controller.abort("the test cancels it"), plan.cancel.after_ms);
    const cancelled = await pending;
    // One run at a time per session: this call ends only after the cancelled run was stopped,
    // so an answer to the cancelled request would have come by then. A ping follows it.
    const then = await call(plan.cancel.then.tool, plan.cancel.then.arguments);
    await client.ping();
    report.cancel = { cancelled, then };
  }
} finally {
  await client.close();
}
process.stdout.write(JSON.stringify(report));
