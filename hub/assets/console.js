// Flotilla console: the only script. It makes two things live and nothing else depends on it:
// a running job's log (long-polls /console/jobs/ID/log and appends what arrives, reloading the
// page once the job finishes so the timeline and result are final) and the overview's numbers
// (refetched every few seconds). Output HTML comes escaped from the hub; plain text is set with
// textContent.
"use strict";

function appendItems(view, items) {
  let fold = view.querySelector("details.cmd:last-of-type");
  for (const item of items) {
    if (item.t === "cmd") {
      fold = document.createElement("details");
      fold.className = "cmd";
      fold.open = true;
      const summary = document.createElement("summary");
      const code = document.createElement("code");
      code.textContent = "$ " + item.text;
      summary.appendChild(code);
      fold.appendChild(summary);
      fold.appendChild(document.createElement("pre"));
      view.appendChild(fold);
    } else if (item.t === "out") {
      let pre = fold ? fold.querySelector("pre") : null;
      if (!pre) {
        pre = document.createElement("pre");
        view.appendChild(pre);
      }
      pre.insertAdjacentHTML("beforeend", item.html);
    } else if (item.t === "end" && fold) {
      const exit = document.createElement("span");
      exit.className = item.ok ? "exit ok" : "exit failed";
      exit.textContent = " " + item.text;
      fold.querySelector("summary").appendChild(exit);
      if (item.ok) fold.open = false;
    } else if (item.t === "job") {
      const line = document.createElement("p");
      line.className = "job-event";
      line.textContent = item.text;
      view.appendChild(line);
      fold = null;
    }
  }
}

async function followLog(view) {
  const job = view.dataset.job;
  const wasRunning = view.dataset.finished !== "true";
  let next = Number(view.dataset.next);
  for (;;) {
    let answer;
    try {
      const response = await fetch(`/console/jobs/${encodeURIComponent(job)}/log?from=${next}&wait=20`,
        { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return;
      answer = await response.json();
    } catch (error) {
      await new Promise((resolve) => setTimeout(resolve, 2000));
      continue;
    }
    appendItems(view, answer.items);
    next = answer.next;
    view.dataset.next = String(next);
    if (answer.finished && answer.items.length === 0) {
      if (wasRunning) window.location.reload();
      return;
    }
  }
}

async function refreshOverview(table) {
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 2000));
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("table.numbers tbody");
      if (fresh) table.querySelector("tbody").replaceWith(fresh);
    } catch (error) {
      // The hub restarting: try again at the next tick.
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const view = document.getElementById("log-view");
  if (view) followLog(view);
  const numbers = document.querySelector("table.numbers");
  if (numbers) refreshOverview(numbers);
});
