// The playground: plain JavaScript, no build step, no dependency. It talks to the service only
// through the public OpenAI routes, like any client. The API key lives in this script's memory
// (and the password field) only: never in localStorage, sessionStorage or a cookie.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"),
    apiKey: $("api-key"),
    system: $("system"),
    temperature: $("temperature"),
    maxTokens: $("max-tokens"),
    jsonMode: $("json-mode"),
    clear: $("clear"),
    log: $("log"),
    composer: $("composer"),
    message: $("message"),
    send: $("send"),
    stop: $("stop"),
    status: $("status"),
  };

  let apiKey = "";
  let history = []; // the conversation sent with each request (system prompt added per request)
  let controller = null; // AbortController of the generation in flight

  function setStatus(text, isError = false) {
    ui.status.textContent = text;
    ui.status.classList.toggle("error", isError);
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (apiKey) h.Authorization = `Bearer ${apiKey}`;
    return h;
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) {
      /* not JSON */
    }
    return `HTTP ${response.status}`;
  }

  async function loadModels() {
    const previous = ui.model.value;
    try {
      const response = await fetch("v1/models", { headers: headers() });
      if (!response.ok) {
        const reason = await errorMessage(response);
        ui.model.replaceChildren();
        setStatus(
          response.status === 401 ? `Enter an API key to list the models (${reason})` : reason,
          true,
        );
        return;
      }
      const { data } = await response.json();
      ui.model.replaceChildren(
        ...data.map((card) => {
          const option = document.createElement("option");
          option.value = option.textContent = card.id;
          return option;
        }),
      );
      if (data.some((card) => card.id === previous)) ui.model.value = previous;
      setStatus(data.length ? "Ready." : "The service serves no model.", !data.length);
    } catch (err) {
      setStatus(`Cannot reach the service: ${err.message}`, true);
    }
  }

  function addMessage(role, text) {
    const item = document.createElement("div");
    item.className = `msg ${role}`;
    const label = document.createElement("div");
    label.className = "role";
    label.textContent = role;
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = text;
    item.append(label, content);
    ui.log.append(item);
    ui.log.scrollTop = ui.log.scrollHeight;
    return item;
  }

  function setBusy(busy) {
    ui.send.disabled = busy;
    ui.stop.disabled = !busy;
    ui.log.setAttribute("aria-busy", String(busy));
  }

  // Server-Sent Events from a fetch body: events are separated by a blank line, and an
  // event's `data:` lines join with newlines. Yields each event's data string.
  async function* sseData(body, signal) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = event
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (data) yield data;
        }
      }
    } finally {
      if (!signal.aborted) reader.releaseLock();
    }
  }

  function formatStats(s) {
    const parts = [];
    if (s.usage) {
      parts.push(
        `${s.usage.prompt_tokens} prompt + ${s.usage.completion_tokens} completion tokens`,
      );
    } else if (s.chunks) {
      parts.push(`${s.chunks} chunks received`);
    }
    if (s.ttft !== null) parts.push(`TTFT ${Math.round(s.ttft)} ms`);
    const tokens = s.usage ? s.usage.completion_tokens : s.chunks;
    if (s.first !== null && s.last !== null && tokens > 1 && s.last > s.first) {
      parts.push(`${((tokens - 1) / ((s.last - s.first) / 1000)).toFixed(1)} tok/s`);
    }
    if (s.finish) parts.push(`finish: ${s.finish}`);
    return parts.join(" · ");
  }

  async function send(text) {
    const model = ui.model.value;
    if (!model) {
      setStatus("No model to ask: check the API key.", true);
      return;
    }
    const messages = [];
    const system = ui.system.value.trim();
    if (system) messages.push({ role: "system", content: system });
    const turns = history; // "New chat" replaces `history`: this reply stays with its own chat
    turns.push({ role: "user", content: text });
    messages.push(...turns);
    addMessage("user", text);

    const body = {
      model,
      messages,
      stream: true,
      stream_options: { include_usage: true },
    };
    const temperature = parseFloat(ui.temperature.value);
    if (!Number.isNaN(temperature)) body.temperature = temperature;
    const maxTokens = parseInt(ui.maxTokens.value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    if (ui.jsonMode.checked) body.response_format = { type: "json_object" };

    const item = addMessage("assistant", "");
    item.dataset.state = "streaming";
    const content = item.querySelector(".content");
    const stats = document.createElement("div");
    stats.className = "stats";
    item.append(stats);
    const s = { ttft: null, first: null, last: null, chunks: 0, usage: null, finish: null };
    let reply = "";

    controller = new AbortController();
    const { signal } = controller;
    setBusy(true);
    setStatus("Generating...");
    const started = performance.now();
    try {
      const response = await fetch("v1/chat/completions", {
        method: "POST",
        headers: headers(),
        body: JSON.stringify(body),
        signal,
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      for await (const data of sseData(response.body, signal)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || "stream error");
        if (chunk.usage) s.usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        const delta = (choice.delta && choice.delta.content) || "";
        if (delta) {
          const now = performance.now();
          if (s.first === null) {
            s.first = now;
            s.ttft = now - started;
          }
          s.last = now;
          s.chunks += 1;
          reply += delta;
          content.textContent = reply;
          ui.log.scrollTop = ui.log.scrollHeight;
        }
        if (choice.finish_reason) s.finish = choice.finish_reason;
      }
      item.dataset.state = "done";
      setStatus("Done.");
    } catch (err) {
      if (signal.aborted) {
        item.dataset.state = "stopped";
        s.finish = "stopped";
        setStatus("Stopped.");
      } else {
        item.dataset.state = "error";
        item.classList.add("error");
        if (!reply) content.textContent = err.message;
        setStatus(err.message, true);
      }
    } finally {
      controller = null;
      setBusy(false);
      stats.textContent = formatStats(s);
      if (reply) {
        turns.push({ role: "assistant", content: reply });
      } else {
        turns.pop(); // nothing came back: the next request goes without this turn
      }
    }
  }

  function stop() {
    if (controller) controller.abort();
  }

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.message.value.trim();
    if (!text || controller) return;
    ui.message.value = "";
    send(text);
  });
  ui.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && controller) {
      event.preventDefault();
      stop();
    }
  });
  ui.stop.addEventListener("click", stop);
  ui.clear.addEventListener("click", () => {
    stop();
    history = [];
    ui.log.replaceChildren();
    setStatus("New chat.");
    ui.message.focus();
  });
  ui.apiKey.addEventListener("change", () => {
    apiKey = ui.apiKey.value.trim();
    loadModels();
  });

  loadModels();
})();
