// ANB Rising Stars: the page's behaviour. It calls the public REST API like any client.
// Rules: text only ever goes in through textContent (never markup), the token stays in
// sessionStorage (this origin, this tab), and every refusal shows the API's `detail`.
"use strict";

const TOKEN = "anb.token";
const VOTED = "anb.voted";
const STATUS = {
  uploaded: "En cola",
  processing: "Procesando…",
  processed: "Procesado",
  failed: "Falló",
};

const token = () => sessionStorage.getItem(TOKEN);
const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(message, kind = "info") {
  const notice = $("#aviso");
  notice.textContent = message;
  notice.dataset.kind = kind;
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set("Authorization", `Bearer ${token()}`);
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (response.status === 401 && token()) {
    sessionStorage.removeItem(TOKEN);
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `Error ${response.status}`;
    throw new ApiError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

// The page decides what happened from the status code; the detail is only shown, so a reworded
// message never changes behaviour.
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function showSession() {
  const signedIn = Boolean(token());
  document.querySelectorAll("[data-when]").forEach((node) => {
    node.hidden = (node.dataset.when === "in") !== signedIn;
  });
}

function votedIds() {
  return new Set(JSON.parse(sessionStorage.getItem(VOTED) || "[]"));
}

function rememberVote(id) {
  const ids = votedIds();
  ids.add(id);
  sessionStorage.setItem(VOTED, JSON.stringify([...ids]));
}

// ------------------------------------------------------------------------------ pages

// Loads `path` with the city filter's value and hands the rows to `show`, now and on
// each filter submit.
async function filtered(path, show) {
  const load = async () => {
    const city = $("#ciudad").value.trim();
    const query = new URLSearchParams({ limit: "20" });
    if (city) query.set("city", city);
    try {
      show(await api(`${path}?${query}`));
    } catch (error) {
      say(error.message, "error");
    }
  };
  $("#filtro").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  await load();
}

async function videosPage() {
  await filtered("/api/public/videos", (videos) => {
    $("#videos").replaceChildren(...videos.map(videoCard));
    say(videos.length ? "" : "Todavía no hay videos públicos.");
  });
}

const votesText = (n) => `${n} ${n === 1 ? "voto" : "votos"}`;

function videoCard(video) {
  const voted = votedIds().has(video.video_id);
  const votes = el("span", { class: "votes" }, votesText(video.votes));
  const button = el(
    "button",
    { type: "button", disabled: voted ? "" : null },
    voted ? "Ya votaste" : "Votar",
  );
  button.addEventListener("click", async () => {
    if (!token()) {
      window.location.assign("/ingresar");
      return;
    }
    button.disabled = true;
    try {
      await api(`/api/public/videos/${video.video_id}/vote`, { method: "POST" });
      rememberVote(video.video_id);
      video.votes += 1;
      votes.textContent = votesText(video.votes);
      button.textContent = "Ya votaste";
      say("¡Voto registrado!");
    } catch (error) {
      // The contract's only 400 for a vote is "already voted" (404 is an unknown video).
      if (error.status === 400) {
        rememberVote(video.video_id);
        button.textContent = "Ya votaste";
      } else {
        button.disabled = false;
      }
      say(error.message, "error");
    }
  });
  return el(
    "li",
    { class: "card" },
    el("video", {
      controls: "",
      preload: "metadata",
      playsinline: "",
      src: video.processed_url,
      "aria-label": `Video: ${video.title}`,
    }),
    el("h2", {}, video.title),
    el("p", {}, `${video.username} · ${video.city}`),
    el("p", { class: "row" }, votes, button),
  );
}

async function rankingsPage() {
  await filtered("/api/public/rankings", (rows) => {
    $("#ranking tbody").replaceChildren(
      ...rows.map((row) =>
        el("tr", {}, el("td", {}, row.position), el("td", {}, row.username), el("td", {}, row.city), el("td", {}, row.votes)),
      ),
    );
    say(rows.length ? "" : "Sin votos todavía.");
  });
}

async function logIn(email, password) {
  const login = await api("/api/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email, password }),
  });
  sessionStorage.setItem(TOKEN, login.access_token);
}

function signupPage() {
  $("#registro").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const fields = Object.fromEntries(form.entries());
    try {
      await api("/api/auth/signup", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(fields),
      });
      await logIn(fields.email, fields.password1);
      window.location.assign("/mis-videos");
    } catch (error) {
      say(error.message, "error");
    }
  });
}

function loginPage() {
  $("#ingresar").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    try {
      await logIn(form.get("email"), form.get("password"));
      window.location.assign("/mis-videos");
    } catch (error) {
      say(error.message, "error");
    }
  });
}

async function myVideosPage() {
  if (!token()) {
    window.location.assign("/ingresar");
    return;
  }
  const body = $("#mios tbody");
  let timer = null;
  const load = async () => {
    try {
      const videos = await api("/api/videos");
      body.replaceChildren(...videos.reverse().map(myVideoRow(load)));
      const busy = videos.some((v) => v.status === "uploaded" || v.status === "processing");
      clearTimeout(timer);
      if (busy) timer = setTimeout(load, 1000);
    } catch (error) {
      say(error.message, "error");
    }
  };
  setUpUpload(load);
  await load();
}

function myVideoRow(reload) {
  return (video) => {
    const state = STATUS[video.status] || video.status;
    const files = el("td", {});
    files.append(downloadButton(video, "original", "Original"));
    if (video.status === "processed") {
      // A processed video is public: a plain link, which follows the API's redirect to
      // storage (a presigned URL on S3 that saves as a file) as a navigation.
      files.append(
        " ",
        el("a", { href: `/api/videos/${video.video_id}/processed`, download: `${video.title}.mp4` }, "Descargar procesado"),
      );
    }
    const actions = el("td", {});
    if (video.status !== "processed") {
      const remove = el("button", { type: "button" }, "Eliminar");
      remove.addEventListener("click", async () => {
        try {
          await api(`/api/videos/${video.video_id}`, { method: "DELETE" });
          say("Video eliminado.");
          reload();
        } catch (error) {
          say(error.message, "error");
        }
      });
      actions.append(remove);
    }
    return el(
      "tr",
      { "data-id": video.video_id, "data-status": video.status },
      el("td", {}, video.title),
      el("td", { class: `status ${video.status}` }, video.error ? `${state}: ${video.error}` : state),
      files,
      actions,
    );
  };
}

// The original is the owner's only. Its record (read with the token) says where it is:
// on S3 a presigned URL that saves as a file, which the page navigates to (the page's own
// CSP lets no script fetch from storage, and the redirect from the API's route would be
// fetched); on local storage the API's route, which needs the token, so the script
// fetches it and saves what arrives.
function downloadButton(video, kind, label) {
  const button = el("button", { type: "button", class: "link" }, `Descargar ${label.toLowerCase()}`);
  button.addEventListener("click", async () => {
    try {
      const record = await api(`/api/videos/${video.video_id}`);
      const where = new URL(record[`${kind}_url`], location.href);
      if (where.origin !== location.origin) {
        location.assign(where.href);
        return;
      }
      const response = await fetch(where.href, {
        headers: { Authorization: `Bearer ${token()}` },
      });
      if (!response.ok) throw new Error(`No se pudo descargar (${response.status}).`);
      const url = URL.createObjectURL(await response.blob());
      const link = el("a", { href: url, download: `${video.title}-${kind}.mp4` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (error) {
      say(error.message, "error");
    }
  });
  return button;
}

function setUpUpload(reload) {
  const form = $("#subir");
  const progress = $("#progreso");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const title = $("#titulo").value.trim();
    const file = $("#archivo").files[0];
    if (!title) return say("Escribe un título.", "error");
    if (!file) return say("Elige un video.", "error");
    const isMp4 = file.type === "video/mp4" || file.name.toLowerCase().endsWith(".mp4");
    if (!isMp4) return say("El video debe ser un archivo MP4.", "error");
    // The server's limit, as the page states it (rendered from its settings).
    const limit = $("#archivo").dataset;
    if (file.size > Number(limit.maxBytes)) {
      return say(`El video supera los ${limit.maxMegabytes} MB.`, "error");
    }
    const data = new FormData();
    data.append("title", title);
    data.append("video_file", file);
    // fetch cannot report upload progress; XMLHttpRequest can.
    const request = new XMLHttpRequest();
    request.open("POST", "/api/videos/upload");
    request.setRequestHeader("Authorization", `Bearer ${token()}`);
    request.upload.addEventListener("progress", (progressEvent) => {
      if (progressEvent.lengthComputable) {
        progress.value = Math.round((progressEvent.loaded / progressEvent.total) * 100);
      }
    });
    request.addEventListener("load", () => {
      progress.hidden = true;
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch (_) {
        body = null;
      }
      if (request.status === 201) {
        say("Video subido. Lo estamos procesando.");
        form.reset();
        reload();
      } else {
        say(body && body.detail ? body.detail : `Error ${request.status}`, "error");
      }
    });
    request.addEventListener("error", () => {
      progress.hidden = true;
      say("Se perdió la conexión durante la subida.", "error");
    });
    progress.value = 0;
    progress.hidden = false;
    say("Subiendo…");
    request.send(data);
  });
}

// ------------------------------------------------------------------------------ start

document.addEventListener("DOMContentLoaded", () => {
  showSession();
  $("#salir").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN);
    window.location.assign("/");
  });
  const pages = {
    videos: videosPage,
    rankings: rankingsPage,
    registro: signupPage,
    ingresar: loginPage,
    "mis-videos": myVideosPage,
  };
  const run = pages[document.body.dataset.page];
  if (run) run();
});
