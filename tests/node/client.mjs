// A real agent-side client: Node fetch through undici's ProxyAgent, the way Node agents reach wardgate.
// usage: node client.mjs METHOD URL [PROXY_URL]   (CA trust via NODE_EXTRA_CA_CERTS)
// prints one JSON line: {"status": N, "headers": {...}, "body": "..."} or {"error": "..."}
import { ProxyAgent, fetch } from "undici";
import { readFileSync } from "node:fs";

const [method, url, proxy] = process.argv.slice(2);
const ca = process.env.NODE_EXTRA_CA_CERTS ? readFileSync(process.env.NODE_EXTRA_CA_CERTS, "utf8") : undefined;
const options = { method, signal: AbortSignal.timeout(15000) };
if (proxy) {
  options.dispatcher = new ProxyAgent({ uri: proxy, requestTls: ca ? { ca } : undefined });
}
try {
  const response = await fetch(url, options);
  const body = await response.text();
  console.log(JSON.stringify({ status: response.status, headers: Object.fromEntries(response.headers), body }));
} catch (error) {
  // undici nests the proxy's answer a few causes deep; report the whole chain.
  const messages = [];
  for (let e = error; e; e = e.cause) messages.push(String(e.message ?? e));
  console.log(JSON.stringify({ error: messages.join(" <- ") }));
}
