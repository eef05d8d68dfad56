// The BioMedGPT page: a live RDKit depiction of the SMILES box, and a chat whose answers stream in token by
// token over the server's OpenAI-compatible SSE endpoint. Plain JavaScript, no libraries, nothing remote.
// Every piece of server or user text is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, history: [], attached: new Set(), busy: false, depictTimer: null, depictSeq: 0 };

function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

async function init() {
  try {
    const health = await (await fetch("/health")).json();
    state.model = health.model;
    $("model-name").textContent = `model: ${health.model}` + (health.evidence ? " · evidence on" : "");
    $("api-key-row").hidden = !health.auth;
    if (health.auth) $("settings").open = true;
    $("max-tokens").max = health.limits.max_tokens;
    $("max-tokens").value = Math.min(Number($("max-tokens").value), health.limits.max_tokens);
  } catch (err) {
    $("model-name").textContent = `server unreachable: ${err}`;
  }
}

// ---------------------------------------------------------------- depiction
function showDepiction(stateName, message, url) {
  const box = $("depiction"), img = $("depiction-image"), text = $("depiction-message");
  box.dataset.state = stateName;
  if (img.src && img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.hidden = !url;
  if (url) img.src = url; else img.removeAttribute("src");
  text.hidden = Boolean(url);
  text.textContent = message || "";
}

async function depict() {
  const smiles = $("smiles").value.trim();
  const seq = ++state.depictSeq;
  if (!smiles) { showDepiction("empty", "Type a SMILES to see the molecule."); return; }
  const response = await fetch(`/depict?smiles=${encodeURIComponent(smiles)}`, { headers: headers(false) });
  if (seq !== state.depictSeq) return;  // a newer keystroke already asked again
  if (!response.ok) { showDepiction("error", await errorText(response)); return; }
  // An <img> never runs scripts, so the SVG is shown through a blob URL rather than inserted as markup.
  const url = URL.createObjectURL(await response.blob());
  if (seq === state.depictSeq) showDepiction("ok", "", url); else URL.revokeObjectURL(url);
}

// ---------------------------------------------------------------- chat
function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : role === "assistant" ? "BioMedGPT" : "Error";
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  div.append(who, body);
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return body;
}

function userContent(question) {
  // Entities ride as content parts, once per conversation (later turns can refer back to them).
  const parts = [{ type: "text", text: question }];
  const smiles = $("smiles").value.trim(), protein = $("protein").value.trim();
  const labels = [], keys = [];
  if (smiles && !state.attached.has(`m:${smiles}`)) {
    parts.push({ type: "molecule", smiles });
    keys.push(`m:${smiles}`);
    labels.push(`[molecule ${smiles}]`);
  }
  if (protein && !state.attached.has(`p:${protein}`)) {
    parts.push({ type: "protein", sequence: protein });
    keys.push(`p:${protein}`);
    labels.push(`[protein, ${protein.replace(/\s/g, "").length} residues]`);
  }
  return { parts, labels, keys };
}

function renderEvidence(evidence) {
  const box = $("evidence");
  box.replaceChildren();
  if (!evidence || !evidence.length) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = evidence ? "No molecule or protein in the conversation." : "No retrieval index on this server.";
    box.append(p);
    return;
  }
  for (const item of evidence) {
    const title = document.createElement("h3");
    title.textContent = `${item.type}: ${item.query.slice(0, 40)}`;
    box.append(title);
    for (const n of item.neighbors) {
      const div = document.createElement("div");
      div.className = "neighbor";
      const name = document.createElement("b");
      name.textContent = `${n.id} (${(100 * n.similarity).toFixed(0)}% similar)`;
      const text = document.createElement("div");
      text.textContent = n.annotation;
      div.append(name, text);
      box.append(div);
    }
  }
}

async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || state.busy) return;
  const { parts, labels, keys } = userContent(question);
  addMessage("user", [question, ...labels].join("\n"));
  state.history.push({ role: "user", content: parts });
  $("question").value = "";
  state.busy = true;
  $("send").disabled = true;
  const out = addMessage("assistant", "");
  out.parentElement.dataset.state = "streaming";
  let answer = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({
        model: state.model, messages: state.history, stream: true,
        max_tokens: Number($("max-tokens").value) || 128, temperature: Number($("temperature").value) || 0,
      }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const data of sseEvents(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        answer += choice.delta.content;
        out.textContent = answer;
        $("log").scrollTop = $("log").scrollHeight;
      }
      if (chunk.evidence !== undefined) renderEvidence(chunk.evidence);
    }
    state.history.push({ role: "assistant", content: answer.trim() });
    for (const key of keys) state.attached.add(key);
    out.parentElement.dataset.state = "done";
  } catch (err) {
    state.history.pop();
    out.parentElement.remove();
    addMessage("error", String(err.message || err));
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
}

function clearConversation() {
  state.history = [];
  state.attached.clear();
  $("log").replaceChildren();
}

$("smiles").addEventListener("input", () => {
  clearTimeout(state.depictTimer);
  state.depictTimer = setTimeout(depict, 250);
});
$("ask-form").addEventListener("submit", ask);
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask-form").requestSubmit(); }
});
$("clear").addEventListener("click", clearConversation);
init();
