"""The one web page readers answer the study in: HTML, CSS and JavaScript as a string the server sends (so no
package data is needed).

What a reader does on it: gives a name (or arrives with ``?reader=NAME``), sees one pair at a time (each side a
row of panels: one per MRI channel, labelled T2W / ADC / DWI, or one for a radiograph), answers with a click on a
side or a key (1 or left arrow, 2 or right arrow), goes back with Back (or Backspace / B), and watches the progress
(17 / 50). Every answer is sent to the server and the page moves on only once it is saved; a reload (a closed and
reopened tab) asks the server for the answers so far and continues at the first unanswered pair.

It talks to the server with relative URLs: ``study.json``, ``images/...``, ``api/answers?reader=NAME`` (GET the
reader's answers, POST one answer).
"""

from __future__ import annotations

from medti.quality.reader_study.files import READER_RULE

_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Reader study</title>
<style>
  :root { color-scheme: dark; }
  body { margin: 0; background: #101010; color: #e8e8e8; font: 16px/1.4 system-ui, sans-serif; }
  header { display: flex; gap: 24px; align-items: center; padding: 8px 20px; background: #1c1c1c; }
  header .grow { flex: 1; }
  #progress { font-weight: 600; font-variant-numeric: tabular-nums; }
  #status.bad { color: #ff7b72; font-weight: 600; }
  #question { font-size: 22px; text-align: center; margin: 12px 20px 4px; }
  #position { text-align: center; color: #aaa; margin-bottom: 8px; }
  #pairs { display: flex; gap: 20px; padding: 0 20px; justify-content: center; }
  .side { flex: 1 1 0; min-width: 0; max-width: 1200px; background: #000; border: 3px solid #333;
          border-radius: 8px; padding: 8px; cursor: pointer; }
  .side:hover { border-color: #777; }
  .side.chosen { border-color: #3d8bfd; }
  .side h2 { margin: 0 0 6px; font-size: 17px; text-align: center; font-weight: 500; }
  kbd { border: 1px solid #666; border-radius: 4px; padding: 0 5px; font-size: 14px; }
  .panels { display: flex; gap: 6px; justify-content: center; }
  figure { margin: 0; flex: 1 1 0; min-width: 0; text-align: center; }
  figure img { display: block; width: 100%; height: auto; max-height: calc(100vh - 230px); object-fit: contain; }
  img.nearest { image-rendering: pixelated; }
  figcaption { color: #bbb; font-size: 14px; margin-top: 3px; }
  nav { display: flex; gap: 16px; justify-content: center; align-items: center; margin: 12px; color: #aaa; }
  button { font: inherit; padding: 6px 16px; border-radius: 6px; border: 1px solid #555; background: #262626;
           color: inherit; cursor: pointer; }
  button:disabled { opacity: 0.4; cursor: default; }
  #login, #finished { max-width: 560px; margin: 80px auto; text-align: center; }
  #login input { font: inherit; padding: 6px 10px; width: 260px; }
  #login-error { color: #ff7b72; min-height: 1.4em; }
</style>
</head>
<body>
<div id="login" hidden>
  <h1>Reader study</h1>
  <form id="login-form">
    <p><label>Your name <input id="reader-name" autocomplete="off" maxlength="64"></label>
       <button type="submit" id="start">Start</button></p>
    <p class="hint">letters, digits, <kbd>.</kbd> <kbd>_</kbd> <kbd>-</kbd>: your answers are saved under it, and
       the same name continues where you stopped</p>
    <p id="login-error"></p>
  </form>
</div>
<div id="study" hidden>
  <header>
    <span>Reader: <b id="reader"></b></span>
    <span>Answered <span id="progress"></span></span>
    <span class="grow"></span>
    <span id="status"></span>
  </header>
  <div id="question"></div>
  <div id="position"></div>
  <div id="pairs">
    <div class="side" id="side-left" role="button" tabindex="0">
      <h2>Left &nbsp;<kbd>1</kbd> <kbd>&larr;</kbd></h2><div class="panels" id="panels-left"></div>
    </div>
    <div class="side" id="side-right" role="button" tabindex="0">
      <h2>Right &nbsp;<kbd>2</kbd> <kbd>&rarr;</kbd></h2><div class="panels" id="panels-right"></div>
    </div>
  </div>
  <div id="finished" hidden>
    <h2>All pairs answered</h2>
    <p>Thank you. Your answers are saved; you can close this tab, or go back to review them.</p>
  </div>
  <nav>
    <button id="back" type="button">&larr; Back <kbd>Backspace</kbd></button>
    <button id="resume" type="button" hidden>First unanswered pair</button>
  </nav>
</div>
<script>
"use strict";
const READER_RULE = new RegExp("^(?:__READER_RULE__)$");
const $ = (id) => document.getElementById(id);
const S = {study: null, reader: null, answers: {}, index: 0, busy: false};

async function api(url, body) {
  const opts = body === undefined ? {cache: "no-store"}
    : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const r = await fetch(url, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new Error((data && data.error) || ("HTTP " + r.status));
  return data;
}
const answersUrl = () => "api/answers?reader=" + encodeURIComponent(S.reader);
const answered = () => S.study.pairs.filter((p) => p.id in S.answers).length;
function firstUnanswered() {
  const i = S.study.pairs.findIndex((p) => !(p.id in S.answers));
  return i < 0 ? S.study.pairs.length : i;
}
function setStatus(text, bad) { $("status").textContent = text; $("status").className = bad ? "bad" : ""; }
// the study id in the URL: a study re-made in the same folder is never shown from the browser's cache
const imageUrl = (rel) => rel + "?s=" + encodeURIComponent(S.study.study_id);

function fillSide(side, pair) {
  const box = $("panels-" + side);
  box.replaceChildren();
  pair[side].forEach((rel, k) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = imageUrl(rel);
    img.alt = side + " " + S.study.panels[k];
    img.draggable = false;
    if (S.study.resample === "nearest") img.classList.add("nearest");
    fig.appendChild(img);
    if (S.study.panels.length > 1) {
      const cap = document.createElement("figcaption");
      cap.textContent = S.study.panels[k];
      fig.appendChild(cap);
    }
    box.appendChild(fig);
  });
  $("side-" + side).classList.toggle("chosen", S.answers[pair.id] === side);
}

function render() {
  const pairs = S.study.pairs, n = pairs.length, done = answered();
  $("progress").textContent = done + " / " + n;
  document.title = "Reader study " + done + " / " + n;
  $("back").disabled = S.index === 0;
  $("resume").hidden = S.index === firstUnanswered() || (S.index >= n && done === n);
  const over = S.index >= n;
  $("pairs").hidden = over;
  $("finished").hidden = !over;
  if (over) { $("position").textContent = ""; return; }
  const pair = pairs[S.index];
  const mine = S.answers[pair.id];
  $("position").textContent = "pair " + (S.index + 1) + " of " + n + (mine ? " \u00b7 your answer: " + mine : "");
  fillSide("left", pair);
  fillSide("right", pair);
  const next = pairs[S.index + 1];
  if (next) for (const rel of [...next.left, ...next.right]) new Image().src = imageUrl(rel);
}

async function choose(side) {
  if (S.busy || !S.study || S.index >= S.study.pairs.length) return;
  const pair = S.study.pairs[S.index];
  S.busy = true;
  setStatus("saving\u2026");
  try {  // move on only once the server has the answer: a closed tab loses nothing
    const got = await api(answersUrl(), {study_id: S.study.study_id, pair: pair.id, choice: side});
    S.answers = got.answers;
    S.index += 1;
    setStatus("saved");
  } catch (e) {
    setStatus("NOT saved: " + e.message, true);
  } finally {
    S.busy = false;
    render();
  }
}
function back() { if (!S.busy && S.index > 0) { S.index -= 1; render(); } }
function resume() { S.index = firstUnanswered(); render(); }

document.addEventListener("keydown", (e) => {
  if (!S.study || $("study").hidden || e.repeat || e.altKey || e.ctrlKey || e.metaKey) return;
  const k = e.key;  // a held key (e.repeat) must not answer a run of pairs
  if (k === "ArrowLeft" || k === "1") choose("left");
  else if (k === "ArrowRight" || k === "2") choose("right");
  else if (k === "Backspace" || k === "b" || k === "B") back();
  else return;
  e.preventDefault();
});
$("side-left").addEventListener("click", () => choose("left"));
$("side-right").addEventListener("click", () => choose("right"));
$("back").addEventListener("click", back);
$("resume").addEventListener("click", resume);

async function start(reader) {
  S.reader = reader;
  $("login").hidden = true;
  $("study").hidden = false;
  $("reader").textContent = reader;
  try {
    S.study = await api("study.json");
    S.answers = (await api(answersUrl())).answers;
    S.index = firstUnanswered();
    $("question").textContent = S.study.question;
    setStatus(answered() ? "continuing where you stopped" : "");
    render();
  } catch (e) {
    setStatus("cannot load the study: " + e.message, true);
  }
}
function login(message) {
  $("study").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("reader-name").focus();
}
$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("reader-name").value.trim();
  if (!READER_RULE.test(name)) { login("\u201c" + name + "\u201d cannot be used: letters, digits, . _ - only"); return; }
  const q = new URLSearchParams(location.search);
  q.set("reader", name);
  history.replaceState(null, "", "?" + q.toString());  // a reload continues as this reader
  start(name);
});
const given = new URLSearchParams(location.search).get("reader");
if (given && READER_RULE.test(given)) start(given);
else login(given ? "\u201c" + given + "\u201d cannot be used: letters, digits, . _ - only" : "");
</script>
</body>
</html>
"""


def page_html() -> bytes:
    return _PAGE.replace("__READER_RULE__", READER_RULE).encode("utf-8")
